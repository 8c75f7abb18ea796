//! The deployment files, checked: every YAML document under `deploy/` (recursively, whoever
//! wrote it) parses, and the CSI files under `deploy/csi/` and the `Dockerfile` agree with
//! the plugin and with each other on what matters to a cluster: the driver name (CSIDriver,
//! DaemonSet, PV), the socket the registrar gives kubelet, Bidirectional propagation on the
//! kubelet directory, privilege, `/dev/fuse`, a hostPath cache, and an example volume the
//! plugin accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ossmount::csi::DRIVER_NAME;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// Every document of every YAML file under `dir`, with the file it came from.
fn documents(dir: &Path) -> Vec<(PathBuf, Yaml)> {
    let mut files = Vec::new();
    yaml_files(dir, &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        assert!(!parsed.is_empty(), "{} holds no document", f.display());
        docs.extend(parsed.into_iter().map(|d| (f.clone(), d)));
    }
    docs
}

fn of_kind<'a>(docs: &'a [(PathBuf, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `--name=value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
}

#[test]
fn every_yaml_document_under_deploy_parses() {
    let docs = documents(&root().join("deploy"));
    for (f, d) in &docs {
        assert!(
            d["kind"].as_str().is_some() && d["apiVersion"].as_str().is_some(),
            "a document of {} has no kind or apiVersion",
            f.display()
        );
    }
    assert!(docs.len() >= 7, "only {} documents", docs.len());
}

#[test]
fn the_csi_files_agree_with_the_plugin_and_each_other() {
    let docs = documents(&root().join("deploy/csi"));

    // CSIDriver: node-only, pod info on mount, persistent volumes.
    let drivers = of_kind(&docs, "CSIDriver");
    assert_eq!(drivers.len(), 1);
    let d = drivers[0];
    assert_eq!(d["metadata"]["name"].as_str(), Some(DRIVER_NAME));
    assert_eq!(d["spec"]["attachRequired"].as_bool(), Some(false));
    assert_eq!(d["spec"]["podInfoOnMount"].as_bool(), Some(true));
    assert_eq!(strings(&d["spec"]["volumeLifecycleModes"]), ["Persistent"]);

    // DaemonSet: the plugin and the registrar.
    let sets = of_kind(&docs, "DaemonSet");
    assert_eq!(sets.len(), 1);
    let pod = &sets[0]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().unwrap();
    let named = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some(n))
            .unwrap_or_else(|| panic!("no container {n}"))
    };
    let plugin = named("ossmount-csi");
    let registrar = named("node-driver-registrar");
    let host_paths: BTreeMap<String, String> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_string(),
                v["hostPath"]["path"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mount_of = |c: &Yaml, path: &str| -> Yaml {
        c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .cloned()
            .unwrap_or_else(|| panic!("{:?} mounts nothing at {path}", c["name"]))
    };

    let args = strings(&plugin["args"]);
    assert_eq!(args.first().map(String::as_str), Some("csi"), "{args:?}");
    let endpoint = flag(&args, "endpoint").expect("--endpoint");
    let socket = ossmount::csi::socket_path_of(&endpoint).unwrap();
    assert!(flag(&args, "node-id").is_some(), "{args:?}");
    assert_eq!(
        plugin["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let kubelet = mount_of(plugin, "/var/lib/kubelet");
    assert_eq!(kubelet["mountPropagation"].as_str(), Some("Bidirectional"));
    assert_eq!(
        host_paths[kubelet["name"].as_str().unwrap()],
        "/var/lib/kubelet"
    );
    mount_of(plugin, "/dev/fuse");
    // The cache is a hostPath, so it outlives the plugin's pod.
    let cache = flag(&args, "cache-dir").expect("--cache-dir");
    let cache_mount = mount_of(plugin, &cache);
    assert!(host_paths.contains_key(cache_mount["name"].as_str().unwrap()));

    // The registrar talks to the same socket, and tells kubelet where it is on the host.
    let socket_dir = socket.parent().unwrap().to_str().unwrap();
    let plugin_dir = mount_of(plugin, socket_dir);
    let registrar_dir = mount_of(registrar, socket_dir);
    assert_eq!(plugin_dir["name"], registrar_dir["name"]);
    let r_args = strings(&registrar["args"]);
    assert_eq!(
        flag(&r_args, "csi-address").as_deref(),
        socket.to_str(),
        "{r_args:?}"
    );
    let host_dir = &host_paths[plugin_dir["name"].as_str().unwrap()];
    let on_host = Path::new(host_dir).join(socket.file_name().unwrap());
    assert_eq!(
        flag(&r_args, "kubelet-registration-path").as_deref(),
        on_host.to_str(),
        "{r_args:?}"
    );
    assert!(host_dir.ends_with(DRIVER_NAME), "{host_dir}");
    let registration = mount_of(registrar, "/registration");
    assert_eq!(
        host_paths[registration["name"].as_str().unwrap()],
        "/var/lib/kubelet/plugins_registry"
    );
    if let Some(sa) = pod["serviceAccountName"].as_str() {
        assert!(of_kind(&docs, "ServiceAccount")
            .iter()
            .any(|s| s["metadata"]["name"].as_str() == Some(sa)));
    }

    // The example PV: this driver, attributes the plugin accepts, a Secret with the keys.
    let pvs = of_kind(&docs, "PersistentVolume");
    assert_eq!(pvs.len(), 1);
    let csi = &pvs[0]["spec"]["csi"];
    assert_eq!(csi["driver"].as_str(), Some(DRIVER_NAME));
    let attrs: BTreeMap<String, String> = csi["volumeAttributes"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    for key in ["bucket", "url", "path", "otherOpts"] {
        assert!(attrs.contains_key(key), "volumeAttributes lacks {key}");
    }
    let secret_name = csi["nodePublishSecretRef"]["name"].as_str().unwrap();
    let secret = of_kind(&docs, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(secret_name))
        .expect("the Secret the PV names");
    let secrets: BTreeMap<String, String> = secret["stringData"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    let volume = ossmount::csi::volume::volume_mount(&attrs, &[], &secrets)
        .unwrap_or_else(|e| panic!("the plugin refuses the example PV: {e}"));
    assert!(volume.source.starts_with("oss://"), "{volume:?}");
    let claim = of_kind(&docs, "PersistentVolumeClaim");
    assert_eq!(
        claim[0]["spec"]["volumeName"].as_str(),
        pvs[0]["metadata"]["name"].as_str()
    );
}

#[test]
fn the_dockerfile_builds_ossmount_and_installs_fuse3() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let from = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(from >= 2, "multi-stage: build, then a slim runtime");
    assert!(
        text.lines().any(|l| l.contains("cargo build")
            && l.contains("--release")
            && l.contains("--bin ossmount")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("apt-get install") && l.contains("fuse3")),
        "{text}"
    );
    assert!(text.contains("target/release/ossmount"), "{text}");
    assert!(text.contains("debian:") && text.contains("slim"), "{text}");
}
