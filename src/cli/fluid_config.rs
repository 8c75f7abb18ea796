//! Fluid's ThinRuntime config (`/etc/fluid/config/config.json`, written by Fluid's thin
//! engine from the Dataset, the ThinRuntime and its profile) turned into `ossmount` command
//! lines, one per mount: where it mounts (one mount at `targetPath` itself, as Fluid's own
//! thin runtime add-ons do; several each at `targetPath/<path or name>`, as Fluid's
//! dynamic-mount add-on does), its `oss://` URL, and its options as flags. Options are
//! `runtimeOptions` (the ThinRuntime's `fuse.options`, for every mount) overridden by the
//! mount's own; the names are the flags of `ossmount mount` (`cache-size` or `cache_size`),
//! `url` for the endpoint (alibaba-cloud-csi-driver's name), and `akId`, `akSecret`,
//! `stsToken` for the keys, which Fluid gives as paths of files it mounted from Secrets
//! (`/etc/fluid/secrets/<secret>/<key>`, rotated by kubelet) or, with its secret config
//! storage, as the values themselves. Anything else is refused by name. Parsing only:
//! mounting is `fluid`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;

use ossmount::oss::Secret;

/// Where Fluid writes the config.
pub const DEFAULT_CONFIG: &str = "/etc/fluid/config/config.json";
/// The root of the cache directories unless the options name one (the profile mounts a
/// hostPath here so caches outlive their pods). Each runtime gets its own directory under
/// it (`default_cache_dir`): a node server serves the mounts of one fuse pod only, since
/// each fuse pod has its own mount namespace and sees only its own target path.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/ossmount";
/// The environment Fluid's thin runtime chart sets in the fuse container
/// (`charts/thin/templates/fuse/daemonset.yaml`): the runtime's namespace and name.
const RUNTIME_NS_ENV: &str = "FLUID_RUNTIME_NS";
const RUNTIME_NAME_ENV: &str = "FLUID_RUNTIME_NAME";

/// The cache directory of a fuse pod whose options name none:
/// `/var/cache/ossmount/<runtime namespace>/<runtime name>` when Fluid said which runtime
/// this is (one node, one cache per runtime), else `/var/cache/ossmount`.
pub fn default_cache_dir(runtime_ns: Option<&str>, runtime_name: Option<&str>) -> PathBuf {
    let plain =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0');
    match (runtime_ns, runtime_name) {
        (Some(ns), Some(name)) if plain(ns) && plain(name) => {
            Path::new(DEFAULT_CACHE_DIR).join(ns).join(name)
        }
        _ => PathBuf::from(DEFAULT_CACHE_DIR),
    }
}

/// `default_cache_dir` from this process's environment.
pub fn default_cache_dir_from_env() -> PathBuf {
    let ns = std::env::var(RUNTIME_NS_ENV).ok();
    let name = std::env::var(RUNTIME_NAME_ENV).ok();
    default_cache_dir(ns.as_deref(), name.as_deref())
}
/// Where Fluid mounts Secrets named by `encryptOptions`; a value under it is a file path.
const FLUID_SECRETS: &str = "/etc/fluid/secrets/";

/// The JSON Fluid writes (`pkg/ddc/thin` `Config`); fields ossmount has no use for
/// (`persistentVolumeAttrs`, `persistentVolumeMountOptions`) are ignored. No `Debug`: the
/// options may hold the keys themselves.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FluidConfig {
    #[serde(default)]
    pub mounts: Vec<FluidMount>,
    #[serde(default)]
    pub target_path: String,
    #[serde(default)]
    pub runtime_options: BTreeMap<String, String>,
    #[serde(default)]
    pub access_modes: Vec<String>,
}

/// One of the Dataset's `mounts` (Fluid's `Mount`), its secret options already resolved.
/// No `Debug`: its options may hold the keys themselves.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FluidMount {
    pub mount_point: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Fluid resolves these into `options` before it writes the config; any left here
    /// name Secrets ossmount cannot read.
    #[serde(default)]
    pub encrypt_options: Vec<serde_json::Value>,
}

/// Where a mount's keys come from.
#[derive(Debug, PartialEq, Eq)]
pub enum Keys {
    /// Not given: the default chain (an RRSA token, the node's RAM role, ...).
    Chain,
    /// Files Fluid mounted from Secrets: read, and read again when kubelet rotates them.
    Files {
        id: PathBuf,
        secret: PathBuf,
        token: Option<PathBuf>,
    },
    /// The values themselves (Fluid's secret config storage). Never put on a command line.
    Values {
        id: String,
        secret: Secret,
        token: Option<Secret>,
    },
}

/// One mount to make.
#[derive(Debug)]
pub struct PlannedMount {
    /// The Dataset mount's name, for messages.
    pub name: String,
    pub url: String,
    pub mountpoint: PathBuf,
    /// `ossmount` flags (global and `mount`'s) from the options, `--cache-dir` included.
    pub flags: Vec<String>,
    pub keys: Keys,
}

/// Reads and plans `path`.
pub fn load(path: &Path) -> Result<Vec<PlannedMount>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the Fluid config {}: {e}", path.display()))?;
    // The serde error quotes no value: it says where, and what was expected.
    let config: FluidConfig = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a Fluid ThinRuntime config (mounts, targetPath, runtimeOptions): {e}",
            path.display()
        )
    })?;
    plan(&config, &default_cache_dir_from_env())
}

/// The credential options, by the names alibaba-cloud-csi-driver uses for its Secrets.
const KEY_OPTIONS: [&str; 3] = ["akId", "akSecret", "stsToken"];

/// Flags an option may not set: the command decides them, or they would put a secret in
/// a ConfigMap.
const REFUSED_FLAGS: &[(&str, &str)] = &[
    ("help", "it is not a mount option"),
    ("version", "it is not a mount option"),
    (
        "foreground",
        "the fuse container always runs in the foreground",
    ),
    (
        "log_file",
        "the fuse container logs to stderr, where kubectl logs finds it",
    ),
    (
        "access_key_id",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "access_key_secret",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "session_token",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "credentials_dir",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "access_key_id_file",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "access_key_secret_file",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "session_token_file",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "profile",
        "keys come from a Secret: use akId/akSecret/stsToken in encryptOptions",
    ),
    (
        "log_level",
        "it sets the whole fuse container's log: put --log-level on the `ossmount fluid` command in the ThinRuntimeProfile",
    ),
];

/// An option's name as it is merged and reported: `url` is the endpoint (as
/// alibaba-cloud-csi-driver calls it), and `cache_size` is `cache-size`, so the same option
/// from `runtimeOptions` and a mount's `options` under two spellings is one option, the
/// mount's.
fn option_name(name: &str) -> String {
    if KEY_OPTIONS.contains(&name) {
        return name.to_string();
    }
    match name {
        "url" => "endpoint".to_string(),
        n => n.replace('_', "-"),
    }
}

/// The mount flags (and global ones) by underscore name, with whether each takes a value.
fn flag_table() -> Vec<(String, bool)> {
    let cli = super::Cli::command();
    let mount = cli
        .find_subcommand("mount")
        .expect("the mount subcommand")
        .clone();
    cli.get_arguments()
        .chain(mount.get_arguments())
        .filter_map(|a| {
            let long = a.get_long()?;
            Some((long.replace('-', "_"), a.get_action().takes_values()))
        })
        .collect()
}

/// Plans every mount of `config`, in `default_cache` unless its options name a cache
/// directory. No mounts (what Fluid writes for a Dataset whose mounts come later, by
/// dynamic mounting) plans nothing.
pub fn plan(config: &FluidConfig, default_cache: &Path) -> Result<Vec<PlannedMount>, String> {
    if config.mounts.is_empty() {
        return Ok(Vec::new());
    }
    if config.target_path.is_empty() || !config.target_path.starts_with('/') {
        return Err(format!(
            "the Fluid config's targetPath {:?} is not an absolute path",
            config.target_path
        ));
    }
    if let Some(rw) = config
        .access_modes
        .iter()
        .find(|m| m.starts_with("ReadWrite"))
    {
        return Err(format!(
            "the Dataset asks for {rw}, but ossmount mounts read-only: set its accessModes to [ReadOnlyMany]"
        ));
    }
    let target = PathBuf::from(&config.target_path);
    let flags = flag_table();
    let several = config.mounts.len() > 1;
    let mut planned: Vec<PlannedMount> = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let what = if m.name.is_empty() {
            format!("mounts[{i}]")
        } else {
            format!("mount {:?}", m.name)
        };
        if !m.encrypt_options.is_empty() {
            return Err(format!(
                "{what} still has encryptOptions: Fluid resolves them into options before the fuse container starts; is this config written by Fluid's thin runtime?"
            ));
        }
        let url = store_url(&m.mount_point).map_err(|e| format!("{what}: {e}"))?;
        let mountpoint = if several {
            target.join(subdir(m).map_err(|e| format!("{what}: {e}"))?)
        } else {
            target.clone()
        };
        if let Some(other) = planned.iter().find(|p| p.mountpoint == mountpoint) {
            return Err(format!(
                "{what} and mount {:?} would both mount at {}: give them different names or paths",
                other.name,
                mountpoint.display()
            ));
        }
        // One mount inside another would hide it, or be hidden (Path::starts_with compares
        // whole components: /t/a does not contain /t/ab).
        if let Some(other) = planned.iter().find(|p| {
            p.mountpoint.starts_with(&mountpoint) || mountpoint.starts_with(&p.mountpoint)
        }) {
            return Err(format!(
                "{what} at {} and mount {:?} at {} overlap (one is inside the other): give them paths side by side",
                mountpoint.display(),
                other.name,
                other.mountpoint.display()
            ));
        }
        // Normalised before they are merged, so the mount's value wins whatever its spelling.
        let options: BTreeMap<String, String> = config
            .runtime_options
            .iter()
            .chain(&m.options)
            .map(|(k, v)| (option_name(k), v.clone()))
            .collect();
        let (mount_flags, keys) = options_to_flags(&options, &flags, default_cache)
            .map_err(|e| format!("{what}: {e}"))?;
        planned.push(PlannedMount {
            name: m.name.clone(),
            url,
            mountpoint,
            flags: mount_flags,
            keys,
        });
    }
    Ok(planned)
}

/// `oss://bucket/prefix` (or `s3://...`) as ossmount takes it: a Dataset's mount point is a
/// directory, so a prefix ends with `/`.
fn store_url(mount_point: &str) -> Result<String, String> {
    if !(mount_point.starts_with("oss://") || mount_point.starts_with("s3://")) {
        return Err(format!(
            "mountPoint {mount_point:?} is not an OSS or S3 URL: write it as oss://bucket/prefix/ or s3://bucket/prefix/"
        ));
    }
    let url = super::connection::ObjectUrl::parse(mount_point)?.store_url();
    let mut key = url.key.clone();
    if !key.is_empty() && !key.ends_with('/') {
        key.push('/');
    }
    Ok(format!("{}://{}/{key}", url.scheme, url.bucket))
}

/// The directory under `targetPath` of one of several mounts: its `path` (unless `/`),
/// else its name, as Fluid's dynamic-mount add-on does.
fn subdir(m: &FluidMount) -> Result<PathBuf, String> {
    let path = m.path.trim_matches('/');
    let dir = if path.is_empty() {
        m.name.as_str()
    } else {
        path
    };
    if dir.is_empty() {
        return Err(
            "one of several mounts needs a name (or a path) to mount under targetPath".into(),
        );
    }
    let rel = Path::new(dir);
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(format!(
            "{dir:?} is not a plain directory name under targetPath (no `..`)"
        ));
    }
    Ok(rel.to_path_buf())
}

/// A secret option: a file Fluid mounted (absolute, under /etc/fluid/secrets/ or existing),
/// else the value itself.
enum SecretOption {
    File(PathBuf),
    Value(String),
}

fn secret_option(value: &str) -> SecretOption {
    let p = Path::new(value);
    if value.starts_with(FLUID_SECRETS) || (p.is_absolute() && p.is_file()) {
        SecretOption::File(p.to_path_buf())
    } else {
        SecretOption::Value(value.to_string())
    }
}

fn options_to_flags(
    options: &BTreeMap<String, String>,
    flags: &[(String, bool)],
    default_cache: &Path,
) -> Result<(Vec<String>, Keys), String> {
    let mut out = Vec::new();
    let mut cache_dir = false;
    // On unless an option turns it off: the fuse container mounts as root (no fuse.conf
    // needed), and the applications reading the Dataset seldom run as root.
    let mut allow_other = true;
    for (name, value) in options {
        // `ro`: what Fluid says of a ReadOnlyMany Dataset; ossmount is read-only anyway.
        if KEY_OPTIONS.contains(&name.as_str()) || name == "ro" {
            continue;
        }
        let flag = match name.as_str() {
            "url" => "endpoint".to_string(),
            n => n.replace('-', "_"),
        };
        if let Some((_, why)) = REFUSED_FLAGS.iter().find(|(f, _)| *f == flag) {
            return Err(format!("option {name:?} is not accepted here: {why}"));
        }
        let Some((_, takes_value)) = flags.iter().find(|(f, _)| *f == flag) else {
            return Err(format!(
                "unknown option {name:?}; options are akId, akSecret, stsToken, url, and the flags of `ossmount mount` (endpoint, region, cache-size, cache-dir, part-size, readahead, metadata-ttl, max-connections, allow-other, ...)"
            ));
        };
        cache_dir |= flag == "cache_dir";
        if flag == "allow_other" {
            allow_other = matches!(value.trim(), "" | "true");
            if !matches!(value.trim(), "" | "true" | "false") {
                return Err(format!(
                    "option {name:?} is a switch: give it \"true\" or \"false\", not {:?}",
                    value.trim()
                ));
            }
            continue;
        }
        let dashed = format!("--{}", flag.replace('_', "-"));
        match (takes_value, value.trim()) {
            (true, "") => return Err(format!("option {name:?} needs a value")),
            (true, v) => out.extend([dashed, v.to_string()]),
            (false, "" | "true") => out.push(dashed),
            (false, "false") => {}
            (false, v) => {
                return Err(format!(
                    "option {name:?} is a switch: give it \"true\" or \"false\", not {v:?}"
                ))
            }
        }
    }
    if allow_other {
        out.push("--allow-other".to_string());
    }
    if !cache_dir {
        out.extend([
            "--cache-dir".to_string(),
            default_cache.display().to_string(),
        ]);
    }
    let get = |k: &str| options.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let has_keys = KEY_OPTIONS.iter().any(|k| get(k).is_some());
    if has_keys
        && options
            .get("anonymous")
            .is_some_and(|v| v.trim() != "false")
    {
        return Err(
            "option \"anonymous\" would drop the keys akId/akSecret/stsToken also given: use one or the other".into(),
        );
    }
    let keys = match (get("akId"), get("akSecret"), get("stsToken")) {
        (None, None, None) => Keys::Chain,
        (Some(id), Some(secret), token) => {
            match (
                secret_option(id),
                secret_option(secret),
                token.map(secret_option),
            ) {
                (SecretOption::File(id), SecretOption::File(secret), None) => Keys::Files {
                    id,
                    secret,
                    token: None,
                },
                (
                    SecretOption::File(id),
                    SecretOption::File(secret),
                    Some(SecretOption::File(token)),
                ) => Keys::Files {
                    id,
                    secret,
                    token: Some(token),
                },
                (SecretOption::Value(id), SecretOption::Value(secret), None) => Keys::Values {
                    id,
                    secret: Secret::new(secret),
                    token: None,
                },
                (
                    SecretOption::Value(id),
                    SecretOption::Value(secret),
                    Some(SecretOption::Value(token)),
                ) => Keys::Values {
                    id,
                    secret: Secret::new(secret),
                    token: Some(Secret::new(token)),
                },
                // Never quoted: one of them is a secret.
                _ => return Err("akId, akSecret and stsToken must all be files Fluid mounted from Secrets (paths under /etc/fluid/secrets/), or all values; some of them are files and some are not (a file missing?)".into()),
            }
        }
        (None, _, _) => return Err("akSecret (or stsToken) is given without akId".into()),
        (Some(_), None, _) => return Err("akId is given without akSecret".into()),
    };
    Ok((out, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<PlannedMount>, String> {
        let config: FluidConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        plan(&config, Path::new(DEFAULT_CACHE_DIR))
    }

    /// What Fluid's thin engine writes for a Dataset with one OSS mount whose keys come
    /// from a Secret (`encryptOptions`), with config storage `configmap`.
    const ONE_MOUNT: &str = r#"{"mounts":[{"mountPoint":"oss://my-bucket/train/","options":{"url":"oss-cn-hangzhou-internal.aliyuncs.com","akId":"/etc/fluid/secrets/oss-keys/akId","akSecret":"/etc/fluid/secrets/oss-keys/akSecret"},"name":"train"}],"targetPath":"/runtime-mnt/thin/default/train/thin-fuse","runtimeOptions":{"cache-size":"20GiB"},"accessModes":["ReadOnlyMany"]}"#;

    #[test]
    fn one_mount_goes_at_target_path_with_its_options_as_flags() {
        let plan = parse(ONE_MOUNT).unwrap();
        assert_eq!(plan.len(), 1);
        let m = &plan[0];
        assert_eq!(m.url, "oss://my-bucket/train/");
        assert_eq!(
            m.mountpoint,
            Path::new("/runtime-mnt/thin/default/train/thin-fuse")
        );
        assert_eq!(
            m.flags,
            [
                "--cache-size",
                "20GiB",
                "--endpoint",
                "oss-cn-hangzhou-internal.aliyuncs.com",
                "--allow-other",
                "--cache-dir",
                DEFAULT_CACHE_DIR
            ]
        );
        assert_eq!(
            m.keys,
            Keys::Files {
                id: "/etc/fluid/secrets/oss-keys/akId".into(),
                secret: "/etc/fluid/secrets/oss-keys/akSecret".into(),
                token: None
            }
        );
    }

    /// An S3 Dataset (`s3://`): the same options, its keys from the same Secrets (used as
    /// AWS keys), a prefix made a directory.
    #[test]
    fn an_s3_mount_point_is_mounted_as_s3() {
        let plan = parse(r#"{"mounts":[{"mountPoint":"s3://data.example/train","options":{"url":"http://minio.local:9000","region":"auto","addressing":"path","akId":"/etc/fluid/secrets/s3/akId","akSecret":"/etc/fluid/secrets/s3/akSecret"}}],"targetPath":"/t"}"#).unwrap();
        assert_eq!(plan[0].url, "s3://data.example/train/");
        assert_eq!(
            plan[0].flags,
            [
                "--addressing",
                "path",
                "--endpoint",
                "http://minio.local:9000",
                "--region",
                "auto",
                "--allow-other",
                "--cache-dir",
                DEFAULT_CACHE_DIR
            ]
        );
        assert!(matches!(plan[0].keys, Keys::Files { .. }));
    }

    #[test]
    fn several_mounts_go_under_target_path_by_path_or_name() {
        let plan = parse(
            r#"{"mounts":[
                {"mountPoint":"oss://bkt1/a","name":"first","path":"/"},
                {"mountPoint":"oss://bkt1/b/","name":"second","path":"/data/b"},
                {"mountPoint":"oss://bkt2","name":"third","options":{"cache_dir":"/cache","allow_other":"true","require-crc":"false"}}
            ],"targetPath":"/t"}"#,
        )
        .unwrap();
        let at: Vec<_> = plan.iter().map(|m| m.mountpoint.clone()).collect();
        assert_eq!(
            at,
            [
                PathBuf::from("/t/first"),
                "/t/data/b".into(),
                "/t/third".into()
            ]
        );
        assert_eq!(plan[0].url, "oss://bkt1/a/", "a prefix is a directory");
        assert_eq!(plan[2].url, "oss://bkt2/");
        assert_eq!(plan[2].flags, ["--cache-dir", "/cache", "--allow-other"]);
        assert_eq!(plan[2].keys, Keys::Chain);
    }

    #[test]
    fn secret_values_and_files_are_told_apart() {
        let t = tempfile::tempdir().unwrap();
        for f in ["id", "secret", "token"] {
            std::fs::write(t.path().join(f), "x").unwrap();
        }
        let file = |f: &str| t.path().join(f).display().to_string();
        let json = format!(
            r#"{{"mounts":[{{"mountPoint":"oss://bkt/","options":{{"akId":"{}","akSecret":"{}","stsToken":"{}"}}}}],"targetPath":"/t"}}"#,
            file("id"),
            file("secret"),
            file("token")
        );
        assert_eq!(
            parse(&json).unwrap()[0].keys,
            Keys::Files {
                id: t.path().join("id"),
                secret: t.path().join("secret"),
                token: Some(t.path().join("token"))
            }
        );
        // Fluid's secret config storage puts the values themselves.
        let values = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"akId":"LTAI5t","akSecret":"s3cr3t/+x"}}],"targetPath":"/t"}"#).unwrap();
        assert_eq!(
            values[0].keys,
            Keys::Values {
                id: "LTAI5t".into(),
                secret: Secret::new("s3cr3t/+x"),
                token: None
            }
        );
        // Mixed: an error that quotes none of them.
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"akId":"/etc/fluid/secrets/s/akId","akSecret":"s3cr3t-value"}}],"targetPath":"/t"}"#).unwrap_err();
        assert!(
            err.contains("all be files") && !err.contains("s3cr3t-value"),
            "{err}"
        );
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"akSecret":"s3cr3t-value"}}],"targetPath":"/t"}"#).unwrap_err();
        assert!(
            err.contains("without akId") && !err.contains("s3cr3t"),
            "{err}"
        );
    }

    #[test]
    fn bad_options_and_configs_are_refused_by_name() {
        let with = |opts: &str| {
            parse(&format!(
                r#"{{"mounts":[{{"mountPoint":"oss://bkt/p/","name":"n","options":{opts}}}],"targetPath":"/t"}}"#
            ))
            .unwrap_err()
        };
        let err = with(r#"{"cache-sise":"1GiB"}"#);
        assert!(
            err.contains("\"cache-sise\"") && err.contains("mount \"n\""),
            "{err}"
        );
        let err = with(r#"{"foreground":""}"#);
        assert!(
            err.contains("foreground") && err.contains("always"),
            "{err}"
        );
        let err = with(r#"{"access-key-secret":"plain"}"#);
        assert!(
            err.contains("encryptOptions") && !err.contains("plain"),
            "{err}"
        );
        let err = with(r#"{"cache-size":""}"#);
        assert!(err.contains("needs a value"), "{err}");
        let err = with(r#"{"allow-other":"yes"}"#);
        assert!(err.contains("switch"), "{err}");
        let err =
            parse(r#"{"mounts":[{"mountPoint":"gs://bkt/"}],"targetPath":"/t"}"#).unwrap_err();
        assert!(err.contains("oss://bucket/"), "{err}");
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/"}]}"#).unwrap_err();
        assert!(err.contains("targetPath"), "{err}");
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/"}],"targetPath":"/t","accessModes":["ReadWriteMany"]}"#).unwrap_err();
        assert!(err.contains("ReadOnlyMany"), "{err}");
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt-a/","name":"x"},{"mountPoint":"oss://bkt-b/","name":"x"}],"targetPath":"/t"}"#).unwrap_err();
        assert!(err.contains("both mount at /t/x"), "{err}");
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt-a/","name":"x"},{"mountPoint":"oss://bkt-b/","path":"/../etc"}],"targetPath":"/t"}"#).unwrap_err();
        assert!(err.contains("plain directory"), "{err}");
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt-a/","encryptOptions":[{"name":"akId","valueFrom":{"secretKeyRef":{"name":"s","key":"k"}}}]}],"targetPath":"/t"}"#).unwrap_err();
        assert!(err.contains("encryptOptions"), "{err}");
    }

    #[test]
    fn each_runtime_gets_its_own_cache_directory_by_default() {
        assert_eq!(
            default_cache_dir(Some("team-a"), Some("train")),
            Path::new("/var/cache/ossmount/team-a/train")
        );
        for (ns, name) in [
            (None, Some("train")),
            (Some("team-a"), None),
            (Some(".."), Some("train")),
            (Some("a/b"), Some("train")),
            (Some("team-a"), Some("")),
        ] {
            assert_eq!(
                default_cache_dir(ns, name),
                Path::new(DEFAULT_CACHE_DIR),
                "{ns:?} {name:?}"
            );
        }
        let config: FluidConfig =
            serde_json::from_str(r#"{"mounts":[{"mountPoint":"oss://bkt/"}],"targetPath":"/t"}"#)
                .unwrap();
        let planned = plan(&config, Path::new("/var/cache/ossmount/ns/rt")).unwrap();
        assert!(
            planned[0]
                .flags
                .ends_with(&["--cache-dir".into(), "/var/cache/ossmount/ns/rt".into()]),
            "{:?}",
            planned[0].flags
        );
    }

    #[test]
    fn allow_other_is_on_unless_an_option_turns_it_off() {
        let flags = |opts: &str| {
            parse(&format!(
                r#"{{"mounts":[{{"mountPoint":"oss://bkt/","options":{opts}}}],"targetPath":"/t"}}"#
            ))
            .map(|p| p[0].flags.clone())
        };
        assert!(flags("{}").unwrap().contains(&"--allow-other".into()));
        assert!(flags(r#"{"allow-other":"true"}"#)
            .unwrap()
            .contains(&"--allow-other".into()));
        assert!(!flags(r#"{"allow_other":"false"}"#)
            .unwrap()
            .contains(&"--allow-other".into()));
        let err = flags(r#"{"allow-other":"no"}"#).unwrap_err();
        assert!(err.contains("switch"), "{err}");
    }

    #[test]
    fn a_config_with_no_mounts_plans_nothing() {
        assert!(parse(r#"{"mounts":[],"targetPath":"/t"}"#)
            .unwrap()
            .is_empty());
        assert!(parse(r#"{"mounts":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn mount_points_inside_one_another_are_refused_by_name() {
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/a/","name":"a"},{"mountPoint":"oss://bkt/b/","name":"inner","path":"/a/b"}],"targetPath":"/t"}"#).unwrap_err();
        assert!(
            err.contains("overlap") && err.contains("\"inner\"") && err.contains("\"a\""),
            "{err}"
        );
        let err = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/b/","name":"inner","path":"/a/b"},{"mountPoint":"oss://bkt/a/","name":"a"}],"targetPath":"/t"}"#).unwrap_err();
        assert!(err.contains("overlap"), "{err}");
        // Sharing a leading part of a name is no overlap.
        let ok = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/a/","name":"a"},{"mountPoint":"oss://bkt/b/","name":"ab"}],"targetPath":"/t"}"#).unwrap();
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn one_option_under_two_spellings_is_the_mounts() {
        let plan = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"cache_size":"2GiB","endpoint":"http://mount:1"}}],"runtimeOptions":{"cache-size":"1GiB","url":"http://runtime:1"},"targetPath":"/t"}"#).unwrap();
        assert_eq!(
            plan[0].flags[..4],
            ["--cache-size", "2GiB", "--endpoint", "http://mount:1"]
        );
        assert_eq!(
            plan[0]
                .flags
                .iter()
                .filter(|f| *f == "--cache-size")
                .count(),
            1
        );
        let plan = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"url":"http://mount:1"}}],"runtimeOptions":{"endpoint":"http://runtime:1"},"targetPath":"/t"}"#).unwrap();
        assert_eq!(plan[0].flags[..2], ["--endpoint", "http://mount:1"]);
    }

    #[test]
    fn credential_and_global_flags_are_refused_as_options() {
        let with = |opts: &str| {
            parse(&format!(
                r#"{{"mounts":[{{"mountPoint":"oss://bkt/","options":{opts}}}],"targetPath":"/t"}}"#
            ))
        };
        for name in [
            "credentials-dir",
            "access-key-id-file",
            "access_key_secret_file",
            "session-token-file",
            "profile",
        ] {
            let err = with(&format!(r#"{{"{name}":"/x"}}"#)).unwrap_err();
            assert!(err.contains("encryptOptions"), "{name}: {err}");
        }
        let err = with(r#"{"log-level":"debug"}"#).unwrap_err();
        assert!(
            err.contains("--log-level") && err.contains("Profile"),
            "{err}"
        );
        let err =
            with(r#"{"anonymous":"true","akId":"LTAI5t","akSecret":"s3cr3t-x"}"#).unwrap_err();
        assert!(
            err.contains("anonymous") && !err.contains("s3cr3t"),
            "{err}"
        );
        // Anonymous alone is a public bucket: fine.
        let flags = &with(r#"{"anonymous":"true"}"#).unwrap()[0].flags;
        assert!(flags.contains(&"--anonymous".to_string()), "{flags:?}");
    }

    #[test]
    fn a_planned_mount_prints_no_secret_value() {
        let plan = parse(r#"{"mounts":[{"mountPoint":"oss://bkt/","options":{"akId":"LTAI5t","akSecret":"s3cr3t-x","stsToken":"t0ken-y"}}],"targetPath":"/t"}"#).unwrap();
        let printed = format!("{:?}", plan[0]);
        assert!(
            printed.contains("LTAI5t")
                && !printed.contains("s3cr3t-x")
                && !printed.contains("t0ken-y"),
            "{printed}"
        );
    }
}
