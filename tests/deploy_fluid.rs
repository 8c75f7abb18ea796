//! The Fluid files under `deploy/fluid/`, checked: every YAML document parses and names its
//! kind; the ThinRuntimeProfile declares `fileSystemType: fuse.ossmount` (what Fluid's mount
//! check looks for) and runs `ossmount fluid` on Fluid's config path with the cache on a
//! hostPath; the example Dataset, ThinRuntime and Pod refer to each other by the names Fluid
//! binds them with; and the config Fluid would write from them (its thin engine's rules:
//! encryptOptions become paths under /etc/fluid/secrets/<secret>/<key>, the ThinRuntime's
//! fuse.options become runtimeOptions) is accepted by `ossmount fluid --dry-run`, which
//! mounts at targetPath with the profile's cache directory.

mod common;

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use common::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fluid")
}

/// Every document of every YAML file, with the file it came from.
fn documents() -> Vec<(String, Yaml)> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "deploy/fluid holds {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", f.display()));
        for d in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push((f.file_name().unwrap().to_string_lossy().into_owned(), d));
        }
    }
    docs
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// The one document of `kind`.
fn one(docs: &[(String, Yaml)], kind: &str) -> Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} expected, found {}", found.len());
    found[0].clone()
}

#[test]
fn every_document_parses_and_says_what_it_is() {
    for (file, d) in documents() {
        for field in ["apiVersion", "kind"] {
            assert!(
                d[field].as_str().is_some(),
                "{file}: a document without {field}"
            );
        }
        assert!(
            d["metadata"]["name"].as_str().is_some(),
            "{file}: a {} without metadata.name",
            d["kind"].as_str().unwrap()
        );
    }
}

#[test]
fn the_profile_runs_ossmount_fluid_as_fuse_ossmount_with_a_host_cache() {
    let docs = documents();
    let profile = one(&docs, "ThinRuntimeProfile");
    assert_eq!(
        str_of(&profile["apiVersion"], "apiVersion"),
        "data.fluid.io/v1alpha1"
    );
    let spec = &profile["spec"];
    assert_eq!(
        str_of(&spec["fileSystemType"], "fileSystemType"),
        "fuse.ossmount",
        "Fluid's check_mount.sh greps mountinfo for this type"
    );
    let command: Vec<&str> = spec["fuse"]["command"]
        .as_vec()
        .expect("fuse.command")
        .iter()
        .map(|c| str_of(c, "a command word"))
        .collect();
    assert!(
        command[0].ends_with("ossmount") && command[1] == "fluid",
        "{command:?}"
    );
    let config_at = command.iter().position(|c| *c == "--config");
    assert!(
        config_at.is_none_or(|i| command[i + 1] == "/etc/fluid/config/config.json"),
        "Fluid writes its config at /etc/fluid/config/config.json: {command:?}"
    );
    // Every mount of the fuse container names a volume of the profile; the cache's is a
    // hostPath (it outlives the pod) at ossmount fluid's default cache directory.
    let volumes = spec["volumes"].as_vec().expect("spec.volumes");
    let mounts = spec["fuse"]["volumeMounts"]
        .as_vec()
        .expect("fuse.volumeMounts");
    let mut cache_on_host = false;
    for m in mounts {
        let name = str_of(&m["name"], "volumeMounts[].name");
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volumeMount {name} names no volume"));
        if m["mountPath"].as_str() == Some("/var/cache/ossmount") {
            cache_on_host = v["hostPath"]["path"].as_str().is_some();
        }
    }
    assert!(cache_on_host, "no hostPath volume at /var/cache/ossmount");
}

/// What Fluid's thin engine writes for `dataset` and `runtime` (`transformFuseConfig` with
/// config storage `configmap`).
fn fluid_config(dataset: &Yaml, runtime: &Yaml) -> serde_json::Value {
    let mut mounts = Vec::new();
    for m in dataset["spec"]["mounts"].as_vec().expect("spec.mounts") {
        let mut options = serde_json::Map::new();
        if let Some(opts) = m["options"].as_hash() {
            for (k, v) in opts {
                // Fluid's options are map[string]string: a YAML number or bool is refused.
                let key = str_of(k, "an option name");
                options.insert(key.into(), str_of(v, &format!("option {key}")).into());
            }
        }
        for e in m["encryptOptions"].as_vec().into_iter().flatten() {
            let name = str_of(&e["name"], "encryptOptions[].name");
            let secret = &e["valueFrom"]["secretKeyRef"];
            let path = format!(
                "/etc/fluid/secrets/{}/{}",
                str_of(&secret["name"], "secretKeyRef.name"),
                str_of(&secret["key"], "secretKeyRef.key")
            );
            options.insert(name.into(), path.into());
        }
        mounts.push(serde_json::json!({
            "mountPoint": str_of(&m["mountPoint"], "mountPoint"),
            "name": m["name"].as_str().unwrap_or(""),
            "options": options,
        }));
    }
    let mut runtime_options = serde_json::Map::new();
    if let Some(opts) = runtime["spec"]["fuse"]["options"].as_hash() {
        for (k, v) in opts {
            let key = str_of(k, "a fuse option name");
            runtime_options.insert(key.into(), str_of(v, &format!("fuse option {key}")).into());
        }
    }
    let access_modes: Vec<&str> = dataset["spec"]["accessModes"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|m| str_of(m, "an access mode"))
        .collect();
    serde_json::json!({
        "mounts": mounts,
        "targetPath": format!(
            "/runtime-mnt/thin/default/{}/thin-fuse",
            str_of(&runtime["metadata"]["name"], "ThinRuntime name")
        ),
        "runtimeOptions": runtime_options,
        "accessModes": access_modes,
    })
}

#[tokio::test]
async fn the_example_dataset_binds_to_the_profile_and_ossmount_fluid_accepts_it() {
    let docs = documents();
    let profile = one(&docs, "ThinRuntimeProfile");
    let dataset = one(&docs, "Dataset");
    let runtime = one(&docs, "ThinRuntime");
    let pod = one(&docs, "Pod");
    let name = str_of(&dataset["metadata"]["name"], "Dataset name");
    assert_eq!(
        runtime["metadata"]["name"].as_str(),
        Some(name),
        "Fluid binds a Dataset to the runtime of the same name"
    );
    assert_eq!(
        runtime["spec"]["profileName"].as_str(),
        profile["metadata"]["name"].as_str()
    );
    let claims: Vec<&str> = pod["spec"]["volumes"]
        .as_vec()
        .expect("the Pod's volumes")
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    assert_eq!(
        claims,
        [name],
        "the Pod uses the Dataset's PVC (named after it)"
    );
    for m in dataset["spec"]["mounts"].as_vec().unwrap() {
        assert!(str_of(&m["mountPoint"], "mountPoint").starts_with("oss://"));
        for e in m["encryptOptions"].as_vec().into_iter().flatten() {
            let key = str_of(&e["name"], "encryptOptions[].name");
            assert!(["akId", "akSecret", "stsToken"].contains(&key), "{key}");
        }
    }

    let config = fluid_config(&dataset, &runtime);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let (st, out) = run_cli(
        &["fluid", "--dry-run", "--config", path.to_str().unwrap()],
        vec![],
    )
    .await;
    assert!(st.success(), "ossmount fluid refused the example: {out}");
    let target = config["targetPath"].as_str().unwrap();
    let mount_point = dataset["spec"]["mounts"][0]["mountPoint"].as_str().unwrap();
    assert!(
        out.starts_with(&format!("{target} {mount_point} ")),
        "{out}"
    );
    assert!(
        out.contains("--cache-dir /var/cache/ossmount"),
        "the cache is where the profile mounts the host's disk: {out}"
    );
    assert!(
        out.contains("--endpoint cn-hangzhou-j-internal.oss-data-acc.aliyuncs.com"),
        "{out}"
    );
    assert!(
        out.contains("keys from the credential files /etc/fluid/secrets/"),
        "{out}"
    );
}
