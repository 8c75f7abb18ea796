//! A CSI volume as alibaba-cloud-csi-driver's OSS volumes describe it, turned into what
//! `ossmount mount` takes: the `volume_context` keys (`bucket`, `path`, `url`, `region`,
//! `sigVersion`, `otherOpts`, and `store: s3` for an S3 bucket, with `addressingStyle`), the
//! PV's `mountOptions`, and the `node_publish_secrets` (`akId`/`akSecret`, or
//! `AccessKeyId`/`AccessKeySecret`/`SecurityToken`; for S3 also the AWS names). ossfs options
//! with an ossmount meaning become ossmount's `-o` options; the rest are refused by name.
//! Pure functions: no I/O, no mount. Secrets go only into the environment map, and no error
//! quotes a secret's value.

use std::collections::BTreeMap;

/// Why a volume cannot be published as asked (INVALID_ARGUMENT): names the key or option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidVolume(pub String);

/// A volume to mount: the source URL, `ossmount mount` options (the `-o` spellings), and
/// the credential environment the node's chain reads (secret; never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// `oss://bucket/prefix/` or `s3://bucket/prefix/` (prefix empty for the whole bucket).
    pub source: String,
    pub bucket: String,
    pub options: Vec<String>,
    pub credentials_env: BTreeMap<String, String>,
}

impl std::fmt::Debug for VolumeMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeMount")
            .field("source", &self.source)
            .field("options", &self.options)
            .field(
                "credentials_env",
                &self.credentials_env.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Keys kubelet adds with `podInfoOnMount` (pod name, namespace, uid, service account,
/// ephemeral): informative, never an error.
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";

/// alibaba-cloud-csi-driver keys accepted for compatibility that change nothing here:
/// `fuseType` (ossmount is the FUSE program) and `useSharedPath` (one node server per node
/// always shares).
const ACCEPTED_UNUSED: &[&str] = &["fusetype", "usesharedpath"];

/// The ossfs `-o` options accepted without effect, each because ossmount already behaves
/// so: `ro` (always read-only), `kernel_cache` (the kernel's page cache is used),
/// `listobjectsv2` (the only listing used), `sigv4` (the default signature).
const OSSFS_ALREADY_SO: &[&str] = &["ro", "kernel_cache", "listobjectsv2", "sigv4"];

/// The ossfs options that map to an ossmount option, for the refusal message.
const OSSFS_MAPPED: &str = "allow_other, uid=N, gid=N, umask=NNN, stat_cache_expire=SECONDS, \
    max_stat_cache_size=0, parallel_count=N, multipart_size=MB, connect_timeout=SECONDS, \
    readwrite_timeout=SECONDS, retries=N, region=R, sigv1";

/// Builds the mount of a volume from its `volume_context`, the PV's mount flags and its
/// secrets.
pub fn volume_mount(
    context: &BTreeMap<String, String>,
    mount_flags: &[String],
    secrets: &BTreeMap<String, String>,
) -> Result<VolumeMount, InvalidVolume> {
    let mut bucket = None;
    let mut path = String::new();
    let mut options = Vec::new();
    let mut other_opts = String::new();
    let mut store = Store::Oss;
    let mut addressing = None;
    for (key, value) in context {
        if key.starts_with(KUBELET_PREFIX) {
            continue;
        }
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "bucket" => bucket = Some(value.to_string()),
            "path" => path = value.to_string(),
            "url" if !value.is_empty() => options.push(format!("endpoint={}", endpoint(value)?)),
            "region" if !value.is_empty() => options.push(format!("region={}", region(value)?)),
            "sigversion" => match value {
                "v1" | "v4" => options.push(format!("signature_version={value}")),
                _ => {
                    return Err(InvalidVolume(format!(
                        "volumeAttributes sigVersion is {value:?}; it takes v1 or v4"
                    )))
                }
            },
            "otheropts" => other_opts = value.to_string(),
            "store" => {
                store = match value.to_ascii_lowercase().as_str() {
                    "" | "oss" => Store::Oss,
                    "s3" => Store::S3,
                    _ => {
                        return Err(InvalidVolume(format!(
                            "volumeAttributes store is {value:?}; it takes oss (the default) or s3"
                        )))
                    }
                }
            }
            "addressingstyle" => {
                addressing = match value {
                    "" => None,
                    "path" | "virtual" => Some(value.to_string()),
                    _ => {
                        return Err(InvalidVolume(format!(
                            "volumeAttributes addressingStyle is {value:?}; it takes path or virtual"
                        )))
                    }
                }
            }
            "akid" | "aksecret" => {
                return Err(InvalidVolume(format!(
                    "volumeAttributes {key} puts a credential in the PersistentVolume, readable by anyone who can read PVs; put akId and akSecret in a Secret and name it in nodePublishSecretRef"
                )))
            }
            k if ACCEPTED_UNUSED.contains(&k) => {}
            "url" | "region" => {}
            _ => {
                return Err(InvalidVolume(format!(
                    "unknown volumeAttributes key {key:?}; ossmount takes bucket, path, url, region, sigVersion, otherOpts, store and addressingStyle"
                )))
            }
        }
    }
    let bucket = match bucket {
        Some(b) if !b.is_empty() => b,
        _ => {
            return Err(InvalidVolume(
                "volumeAttributes has no bucket: set bucket (the bucket to mount) in the PersistentVolume's csi.volumeAttributes".into(),
            ))
        }
    };
    match store {
        Store::Oss => crate::oss::endpoint::validate_bucket(&bucket),
        Store::S3 => crate::store::s3::validate_bucket(&bucket),
    }
    .map_err(|e| InvalidVolume(format!("volumeAttributes bucket: {e}")))?;
    if let Some(style) = addressing {
        if store == Store::Oss {
            return Err(InvalidVolume(
                "volumeAttributes addressingStyle is for S3 volumes (store: s3); OSS volumes are always virtual-hosted".into(),
            ));
        }
        options.push(format!("addressing={style}"));
    }
    for opt in ossfs_options(&other_opts)?
        .into_iter()
        .chain(mount_flags.iter().map(|f| f.trim().to_string()))
    {
        if let Some(o) = ossfs_option(&opt)? {
            // One option may map to two (umask: file and directory modes).
            options.extend(o.split(',').map(str::to_string));
        }
    }
    // Each option travels as one `-o name=value` of a mount helper call, split on commas:
    // a value with a comma (or a region that is not a region) would smuggle in other flags.
    for o in &options {
        if o.contains(',') || o.chars().any(char::is_whitespace) {
            return Err(InvalidVolume(format!(
                "option {o:?} holds a comma or a space; each volume option takes one value"
            )));
        }
    }
    if store == Store::S3 {
        if let Some(o) = options.iter().find(|o| o.starts_with("signature_version=")) {
            return Err(InvalidVolume(format!(
                "{o} (sigVersion, or ossfs's sigv1) is an OSS signature; S3 volumes are signed with SigV4: remove it"
            )));
        }
    }
    let prefix = prefix_of(&path)?;
    Ok(VolumeMount {
        source: format!("{}://{bucket}/{prefix}", store.scheme()),
        bucket,
        options,
        credentials_env: credentials_env(secrets, store)?,
    })
}

/// Which kind of store a volume's bucket is in (`store` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Oss,
    S3,
}

impl Store {
    fn scheme(self) -> &'static str {
        match self {
            Store::Oss => "oss",
            Store::S3 => "s3",
        }
    }
}

/// A region's name (`cn-hangzhou`): checked, since it travels as one helper option and a
/// comma in it would pass other flags.
fn region(value: &str) -> Result<&str, InvalidVolume> {
    if value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(value)
    } else {
        Err(InvalidVolume(format!(
            "region {value:?} is not a region such as cn-hangzhou"
        )))
    }
}

/// `url` as the CSI driver takes it: a host (`oss-cn-hangzhou-internal.aliyuncs.com`) or a
/// URL (`http://...`). A comma would split the option list, so it is refused.
fn endpoint(url: &str) -> Result<&str, InvalidVolume> {
    if url.contains(',') || url.chars().any(char::is_whitespace) {
        return Err(InvalidVolume(format!(
            "volumeAttributes url {url:?} is not an endpoint such as oss-cn-hangzhou-internal.aliyuncs.com"
        )));
    }
    Ok(url)
}

/// `path` (`/`, `/pre`, `pre/`) as a mount prefix: no leading `/`, a trailing `/` unless
/// empty; `.`/`..` components and empty ones in the middle are refused.
fn prefix_of(path: &str) -> Result<String, InvalidVolume> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(InvalidVolume(format!(
            "volumeAttributes path {path:?} is not a prefix such as /data/train/"
        )));
    }
    Ok(format!("{trimmed}/"))
}

/// `-o a=b -o c,d` (ossfs style; `-oa=b` too) → `["a=b", "c", "d"]`.
fn ossfs_options(other_opts: &str) -> Result<Vec<String>, InvalidVolume> {
    let mut out = Vec::new();
    let mut words = other_opts.split_whitespace();
    while let Some(w) = words.next() {
        let list = match w {
            "-o" => words.next().ok_or_else(|| {
                InvalidVolume("otherOpts ends with -o and no option after it".into())
            })?,
            w if w.starts_with("-o") => &w[2..],
            w => {
                return Err(InvalidVolume(format!(
                    "otherOpts {w:?} is not an option: write them as -o name=value -o name"
                )))
            }
        };
        out.extend(
            list.split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_string),
        );
    }
    Ok(out)
}

/// One ossfs option → its ossmount `-o` spelling (`None`: accepted, nothing to change).
fn ossfs_option(opt: &str) -> Result<Option<String>, InvalidVolume> {
    let (name, value) = match opt.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (opt.trim(), None),
    };
    let number = |what: &str| -> Result<u64, InvalidVolume> {
        value.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
            InvalidVolume(format!(
                "otherOpts {name} needs a whole number ({what}), e.g. -o {name}=..."
            ))
        })
    };
    let mapped = match (name, value) {
        (n, None) if OSSFS_ALREADY_SO.contains(&n) => return Ok(None),
        ("allow_other", None) => "allow_other".to_string(),
        ("sigv1", None) => "signature_version=v1".to_string(),
        ("uid", _) => format!("uid={}", number("a user id")?),
        ("gid", _) => format!("gid={}", number("a group id")?),
        ("umask", Some(v)) => {
            let umask = u16::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    InvalidVolume(format!(
                        "otherOpts umask={v} is not an octal mask such as 022"
                    ))
                })?;
            // Read-only mount: the mask applies to the read and execute bits it serves.
            return Ok(Some(format!(
                "file_mode={:04o},dir_mode={:04o}",
                0o444 & !umask,
                0o555 & !umask
            )));
        }
        ("stat_cache_expire", _) => format!("metadata_ttl={}s", number("seconds")?),
        // ossfs caches no metadata with 0: every open checks the object again.
        ("max_stat_cache_size", _) => {
            if number("entries")? == 0 {
                "metadata_ttl=0s".to_string()
            } else {
                return Ok(None);
            }
        }
        ("parallel_count", _) => format!("threads={}", number("parts in flight")?),
        ("multipart_size", _) => format!("part_size={}MiB", number("MB")?),
        ("connect_timeout", _) => format!("connect_timeout={}s", number("seconds")?),
        ("readwrite_timeout", _) => format!("read_timeout={}s", number("seconds")?),
        ("retries", _) => format!("max_attempts={}", number("retries")? + 1),
        ("region", Some(v)) if !v.is_empty() => format!("region={}", region(v)?),
        _ => {
            return Err(InvalidVolume(format!(
                "otherOpts option {name:?} has no ossmount meaning; accepted: {OSSFS_MAPPED}, and {} (already so)",
                OSSFS_ALREADY_SO.join(", ")
            )))
        }
    };
    Ok(Some(mapped))
}

/// The secrets as the credential chain's environment: `akId`/`akSecret` (the CSI driver's
/// legacy keys), or `AccessKeyId`/`AccessKeySecret` with an optional `SecurityToken` (any
/// case); an S3 volume also takes the AWS names (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and mountpoint-s3's CSI driver's (`key_id`,
/// `access_key`, `session_token`). No secrets: an empty map (the node's own chain applies,
/// e.g. RRSA or IRSA).
fn credentials_env(
    secrets: &BTreeMap<String, String>,
    store: Store,
) -> Result<BTreeMap<String, String>, InvalidVolume> {
    let find = |names: &[&str]| {
        secrets
            .iter()
            .find(|(k, v)| {
                names.iter().any(|n| k.trim().eq_ignore_ascii_case(n)) && !v.trim().is_empty()
            })
            .map(|(_, v)| v.trim().to_string())
    };
    let (id, secret, token, names) = match store {
        Store::Oss => (
            find(&["akId", "AccessKeyId"]),
            find(&["akSecret", "AccessKeySecret"]),
            find(&["SecurityToken", "stsToken"]),
            [
                "ALIBABA_CLOUD_ACCESS_KEY_ID",
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                "ALIBABA_CLOUD_SECURITY_TOKEN",
            ],
        ),
        Store::S3 => (
            find(&["AWS_ACCESS_KEY_ID", "key_id", "akId", "AccessKeyId"]),
            find(&[
                "AWS_SECRET_ACCESS_KEY",
                "access_key",
                "akSecret",
                "AccessKeySecret",
            ]),
            find(&["AWS_SESSION_TOKEN", "session_token", "SecurityToken"]),
            [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            ],
        ),
    };
    let mut env = BTreeMap::new();
    match (id, secret) {
        (Some(id), Some(secret)) => {
            env.insert(names[0].into(), id);
            env.insert(names[1].into(), secret);
            if let Some(t) = token {
                env.insert(names[2].into(), t);
            }
        }
        (None, None) if token.is_none() => {}
        _ => {
            return Err(InvalidVolume(
                "the volume's secret (nodePublishSecretRef) must hold both akId and akSecret (or AccessKeyId and AccessKeySecret, with SecurityToken for STS; for S3 also AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with AWS_SESSION_TOKEN)".into(),
            ))
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_value_smuggles_in_another_option() {
        let secrets = map(&[("akId", "AK"), ("akSecret", "SK")]);
        for (context, flags) in [
            (
                map(&[
                    ("bucket", "bkt"),
                    ("region", "cn-hangzhou,metrics_addr=0.0.0.0:9101"),
                ]),
                vec![],
            ),
            (
                map(&[("bucket", "bkt")]),
                vec!["region=cn-hangzhou,foreground".to_string()],
            ),
            (
                map(&[("bucket", "bkt"), ("otherOpts", "-o region=Cn_Hangzhou")]),
                vec![],
            ),
            (
                map(&[("bucket", "bkt"), ("url", "oss.example.com,anonymous")]),
                vec![],
            ),
        ] {
            let e = volume_mount(&context, &flags, &secrets).unwrap_err();
            assert!(
                e.0.contains("region") || e.0.contains("url") || e.0.contains("comma"),
                "{e:?}"
            );
        }
    }

    /// `store: s3` mounts an S3 bucket: S3's bucket rules (dots allowed), the AWS secret
    /// names (and mountpoint-s3's), `addressingStyle`; OSS-only settings are refused by name.
    #[test]
    fn an_s3_volume_becomes_an_s3_mount() {
        let v = volume_mount(
            &map(&[
                ("store", "S3"),
                ("bucket", "data.example"),
                ("path", "/models/"),
                ("url", "https://minio.local:9000"),
                ("region", "auto"),
                ("addressingStyle", "path"),
                ("otherOpts", "-o allow_other -o parallel_count=8"),
            ]),
            &[],
            &map(&[
                ("AWS_ACCESS_KEY_ID", "AKIA"),
                ("AWS_SECRET_ACCESS_KEY", "S3SECRET"),
                ("AWS_SESSION_TOKEN", "TOKEN"),
            ]),
        )
        .unwrap();
        assert_eq!(v.source, "s3://data.example/models/");
        assert_eq!(
            v.options,
            [
                "region=auto",
                "endpoint=https://minio.local:9000",
                "addressing=path",
                "allow_other",
                "threads=8"
            ]
        );
        assert_eq!(
            v.credentials_env,
            map(&[
                ("AWS_ACCESS_KEY_ID", "AKIA"),
                ("AWS_SECRET_ACCESS_KEY", "S3SECRET"),
                ("AWS_SESSION_TOKEN", "TOKEN")
            ])
        );
        assert!(!format!("{v:?}").contains("S3SECRET"), "{v:?}");
        let mountpoint_names = volume_mount(
            &map(&[("store", "s3"), ("bucket", "b-1")]),
            &[],
            &map(&[("key_id", "K"), ("access_key", "S")]),
        )
        .unwrap();
        assert_eq!(
            mountpoint_names.credentials_env,
            map(&[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")])
        );
        let refused = |context: &[(&str, &str)], flags: &[&str]| {
            let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
            volume_mount(&map(context), &flags, &map(&[]))
                .unwrap_err()
                .0
        };
        let e = refused(
            &[("store", "s3"), ("bucket", "b-1"), ("sigVersion", "v1")],
            &[],
        );
        assert!(e.contains("SigV4"), "{e}");
        let e = refused(&[("store", "s3"), ("bucket", "b-1")], &["sigv1"]);
        assert!(e.contains("SigV4"), "{e}");
        let e = refused(&[("store", "gcs"), ("bucket", "b-1")], &[]);
        assert!(e.contains("oss (the default) or s3"), "{e}");
        let e = refused(&[("bucket", "b-1"), ("addressingStyle", "path")], &[]);
        assert!(e.contains("S3 volumes"), "{e}");
        let e = refused(&[("store", "s3"), ("bucket", "B_1")], &[]);
        assert!(e.contains("bucket"), "{e}");
        // An OSS volume keeps OSS's rules: no dots in its bucket's name.
        let e = refused(&[("bucket", "data.example")], &[]);
        assert!(e.contains("bucket"), "{e}");
    }

    #[test]
    fn the_csi_drivers_attributes_become_a_mount() {
        let v = volume_mount(
            &map(&[
                ("bucket", "data-bkt"),
                ("path", "/pre"),
                ("url", "http://127.0.0.1:9000"),
                ("region", "cn-hangzhou"),
                (
                    "otherOpts",
                    "-o allow_other -o umask=027,max_stat_cache_size=0 -oparallel_count=8 -o ro",
                ),
                ("csi.storage.k8s.io/pod.name", "web-0"),
                ("fuseType", "ossfs2"),
            ]),
            &["multipart_size=16".to_string()],
            &map(&[("akId", "AK"), ("akSecret", "SK")]),
        )
        .unwrap();
        assert_eq!(v.source, "oss://data-bkt/pre/");
        assert_eq!(
            v.options,
            [
                // Keys in order (`region` before `url`), then otherOpts, then mount flags.
                "region=cn-hangzhou",
                "endpoint=http://127.0.0.1:9000",
                "allow_other",
                "file_mode=0440",
                "dir_mode=0550",
                "metadata_ttl=0s",
                "threads=8",
                "part_size=16MiB"
            ]
        );
        assert_eq!(
            v.credentials_env,
            map(&[
                ("ALIBABA_CLOUD_ACCESS_KEY_ID", "AK"),
                ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "SK")
            ])
        );
        assert!(!format!("{v:?}").contains("SK\""), "{v:?}");
    }

    #[test]
    fn refusals_name_what_is_wrong_and_never_a_secret() {
        let err = |ctx: &[(&str, &str)], secrets: &[(&str, &str)]| {
            volume_mount(&map(ctx), &[], &map(secrets)).unwrap_err().0
        };
        assert!(err(&[("path", "/x")], &[]).contains("bucket"));
        assert!(err(&[("bucket", "")], &[]).contains("bucket"));
        let e = err(
            &[("bucket", "b-1"), ("otherOpts", "-o use_cache=/tmp")],
            &[],
        );
        assert!(e.contains("\"use_cache\""), "{e}");
        let e = err(&[("bucket", "b-1"), ("otherOpts", "allow_other")], &[]);
        assert!(e.contains("-o name"), "{e}");
        let e = err(&[("bucket", "b-1"), ("colour", "red")], &[]);
        assert!(e.contains("\"colour\""), "{e}");
        let e = err(&[("bucket", "b-1"), ("path", "/a/../b")], &[]);
        assert!(e.contains("path"), "{e}");
        let e = err(&[("bucket", "b-1")], &[("akSecret", "TOPSECRET")]);
        assert!(e.contains("akId") && !e.contains("TOPSECRET"), "{e}");
        let e = err(&[("bucket", "b-1"), ("akSecret", "TOPSECRET")], &[]);
        assert!(
            e.contains("nodePublishSecretRef") && !e.contains("TOPSECRET"),
            "{e}"
        );
    }

    #[test]
    fn sts_secrets_and_whole_bucket_volumes() {
        let v = volume_mount(
            &map(&[("bucket", "b-1"), ("path", "/")]),
            &[],
            &map(&[
                ("AccessKeyId", "STS.x"),
                ("accesskeysecret", "s"),
                ("SecurityToken", "t"),
            ]),
        )
        .unwrap();
        assert_eq!(v.source, "oss://b-1/");
        assert_eq!(v.credentials_env["ALIBABA_CLOUD_SECURITY_TOKEN"], "t");
        let v = volume_mount(&map(&[("bucket", "b-1")]), &[], &map(&[])).unwrap();
        assert!(v.credentials_env.is_empty());
        assert!(v.options.is_empty());
    }
}
