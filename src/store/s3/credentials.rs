//! AWS credentials for the S3 client: what a request is signed with (`AwsCredentials`), the
//! seam a source stands behind (`CredentialSource`, asked before every request, so a
//! refreshing source such as web identity, a container endpoint or IMDSv2 (`chain`) renews its
//! keys there), and the static sources of the AWS SDKs' chain: the `AWS_*` environment, and a
//! profile's keys (or its `credential_process`, which `chain` runs) in the shared credentials
//! and config files. Secrets are held in `Secret` and
//! never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{BoxFut, Secret, StoreError, StoreErrorKind};

/// One set of keys, as a request is signed with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// Where the client gets its keys: asked before each request (cheap for a static source; a
/// refreshing source answers from its cache and renews it before expiry).
pub trait CredentialSource: Send + Sync + fmt::Debug {
    fn credentials(&self) -> BoxFut<'_, Result<AwsCredentials, StoreError>>;

    /// Who signs, for messages and cache principals: the access key id and where it came
    /// from, never a secret.
    fn principal(&self) -> String;
}

/// Keys that never change: from the environment or the shared credentials file.
#[derive(Debug)]
pub struct StaticCredentials {
    credentials: AwsCredentials,
    /// Where they were found (`environment`, `profile default of ~/.aws/credentials`).
    origin: String,
}

impl StaticCredentials {
    pub fn new(credentials: AwsCredentials, origin: impl Into<String>) -> StaticCredentials {
        StaticCredentials {
            credentials,
            origin: origin.into(),
        }
    }
}

impl CredentialSource for StaticCredentials {
    fn credentials(&self) -> BoxFut<'_, Result<AwsCredentials, StoreError>> {
        Box::pin(async move { Ok(self.credentials.clone()) })
    }

    fn principal(&self) -> String {
        format!(
            "key {} from the {}",
            self.credentials.access_key_id, self.origin
        )
    }
}

/// The variables the chain reads, captured once (a test or a node hands in its own).
#[derive(Debug, Clone, Default)]
pub struct ChainEnvironment {
    vars: BTreeMap<String, String>,
}

impl ChainEnvironment {
    /// This process's environment.
    pub fn from_process() -> ChainEnvironment {
        ChainEnvironment {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_vars(vars: BTreeMap<String, String>) -> ChainEnvironment {
        ChainEnvironment { vars }
    }

    /// Every variable captured (what a `credential_process` runs with, over the process's
    /// own environment).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// A variable's value; an empty one counts as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn shared_credentials_file(&self) -> Option<PathBuf> {
        match self.get("AWS_SHARED_CREDENTIALS_FILE") {
            Some(path) => Some(expand_home(path, self.get("HOME"))),
            None => self
                .get("HOME")
                .map(|home| Path::new(home).join(".aws").join("credentials")),
        }
    }

    fn shared_config_file(&self) -> Option<PathBuf> {
        match self.get("AWS_CONFIG_FILE") {
            Some(path) => Some(expand_home(path, self.get("HOME"))),
            None => self
                .get("HOME")
                .map(|home| Path::new(home).join(".aws").join("config")),
        }
    }
}

fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Permanent, message)
}

/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`); an error when
/// only one of the pair is set, rather than silently trying the next source.
pub fn environment_keys(
    env: &ChainEnvironment,
) -> Result<Option<Arc<dyn CredentialSource>>, StoreError> {
    match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            let credentials = AwsCredentials {
                access_key_id: id.to_string(),
                secret_access_key: Secret::new(secret),
                session_token: env.get("AWS_SESSION_TOKEN").map(Secret::new),
            };
            Ok(Some(Arc::new(StaticCredentials::new(
                credentials,
                "environment",
            ))))
        }
        (Some(_), None) => Err(config_error(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
        )),
        (None, Some(_)) => Err(config_error(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// One shared file's text, `None` when it does not exist.
fn read_shared_file(path: &Path, what: &str) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(config_error(format!(
            "cannot read the shared {what} file {}: {e}",
            path.display()
        ))),
    }
}

/// The keys of profile `AWS_PROFILE` (or `default`): from the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`, sections `[name]`), else from the
/// config file (`AWS_CONFIG_FILE`, or `~/.aws/config`, sections `[profile name]` and
/// `[default]`); the credentials file wins, as in the SDKs. A profile gives a role to assume
/// (`role_arn` with `source_profile`), else static keys, else a `credential_process`.
/// `None` when the default profile has no keys (a config file's `[default]` often holds only
/// a region). A profile named by `AWS_PROFILE` that is missing or has no keys is an error:
/// the user asked for it.
pub fn shared_profile(env: &ChainEnvironment) -> Result<Option<ProfileCredentials>, StoreError> {
    let named_profile = env.get("AWS_PROFILE");
    let profile = named_profile.unwrap_or("default");
    let files = SharedFiles::read(env)?;
    match (files.credentials(profile, 0)?, named_profile) {
        (Lookup::Found(c), _) => Ok(Some(c)),
        (_, None) => Ok(None),
        (Lookup::WithoutKeys(origin), Some(_)) => Err(config_error(format!(
            "{origin} has no aws_access_key_id and aws_secret_access_key, role_arn or credential_process (sso_* profiles are not read)"
        ))),
        (Lookup::Missing, Some(_)) if files.parsed.is_empty() => Err(config_error(format!(
            "AWS_PROFILE names profile {profile:?}, but there is no shared credentials or config file"
        ))),
        (Lookup::Missing, Some(_)) => Err(config_error(format!(
            "AWS_PROFILE names profile {profile:?}, which {} does not have",
            files
                .parsed
                .iter()
                .map(|(path, _, _)| path.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// The longest chain of `source_profile`s followed (the SDKs refuse loops; so does this).
const MAX_SOURCE_PROFILES: usize = 4;

/// The shared credentials and config files that exist, parsed once.
struct SharedFiles {
    /// (path, is the config file, sections), the credentials file first.
    parsed: Vec<(PathBuf, bool, Sections)>,
}

/// An INI file's `[section]`s of `name = value`.
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// What one profile gives.
enum Lookup {
    Found(ProfileCredentials),
    /// The profile is there, without keys, a role or a process (its first place named).
    WithoutKeys(String),
    Missing,
}

impl SharedFiles {
    fn read(env: &ChainEnvironment) -> Result<SharedFiles, StoreError> {
        let mut parsed = Vec::new();
        for (path, what) in [
            (env.shared_credentials_file(), "credentials"),
            (env.shared_config_file(), "config"),
        ] {
            let Some(path) = path else { continue };
            if let Some(text) = read_shared_file(&path, what)? {
                parsed.push((path, what == "config", parse_credentials_file(&text)));
            }
        }
        Ok(SharedFiles { parsed })
    }

    /// What `profile` gives, following `source_profile` at most `MAX_SOURCE_PROFILES` deep.
    fn credentials(&self, profile: &str, depth: usize) -> Result<Lookup, StoreError> {
        let mut without_keys = None;
        for (path, is_config, sections) in &self.parsed {
            let section_name = match (*is_config, profile) {
                (true, "default") | (false, _) => profile.to_string(),
                (true, _) => format!("profile {profile}"),
            };
            let Some(section) = sections.get(&section_name) else {
                continue;
            };
            let origin = format!("profile {profile} of {}", path.display());
            let field = |name: &str| section.get(name).filter(|v| !v.is_empty()).cloned();
            let keys = match (field("aws_access_key_id"), field("aws_secret_access_key")) {
                (Some(id), Some(secret)) => Some(AwsCredentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                    session_token: field("aws_session_token").map(Secret::new),
                }),
                (None, None) => None,
                _ => {
                    return Err(config_error(format!(
                        "{origin} lacks aws_access_key_id or aws_secret_access_key"
                    )))
                }
            };
            if let Some(role_arn) = field("role_arn") {
                let source = self.role_source(profile, &origin, keys, &field, depth)?;
                return Ok(Lookup::Found(ProfileCredentials::Role {
                    role: AssumeRoleProfile {
                        role_arn,
                        session_name: field("role_session_name"),
                        external_id: field("external_id"),
                        duration_seconds: match field("duration_seconds") {
                            Some(d) => Some(d.parse().map_err(|_| {
                                config_error(format!(
                                    "{origin}: duration_seconds {d:?} is not a number of seconds"
                                ))
                            })?),
                            None => None,
                        },
                        origin,
                    },
                    source: Box::new(source),
                }));
            }
            if let Some(keys) = keys {
                return Ok(Lookup::Found(ProfileCredentials::Keys(Arc::new(
                    StaticCredentials::new(keys, origin),
                ))));
            }
            if let Some(command) = field("credential_process") {
                return Ok(Lookup::Found(ProfileCredentials::Process {
                    command,
                    origin,
                }));
            }
            without_keys = without_keys.or(Some(origin));
        }
        Ok(match without_keys {
            Some(origin) => Lookup::WithoutKeys(origin),
            None => Lookup::Missing,
        })
    }

    /// The keys a `role_arn` profile assumes its role with: its `source_profile`'s (its own
    /// static keys when it names itself, as the SDKs allow).
    fn role_source(
        &self,
        profile: &str,
        origin: &str,
        own_keys: Option<AwsCredentials>,
        field: &dyn Fn(&str) -> Option<String>,
        depth: usize,
    ) -> Result<ProfileCredentials, StoreError> {
        let Some(source_profile) = field("source_profile") else {
            return Err(config_error(format!(
                "{origin} has role_arn without source_profile (credential_source is not read): name the profile whose keys assume the role"
            )));
        };
        if source_profile == profile {
            return own_keys
                .map(|k| ProfileCredentials::Keys(Arc::new(StaticCredentials::new(k, origin))))
                .ok_or_else(|| {
                    config_error(format!(
                        "{origin} names itself as source_profile but has no aws_access_key_id and aws_secret_access_key"
                    ))
                });
        }
        if depth >= MAX_SOURCE_PROFILES {
            return Err(config_error(format!(
                "{origin}: source_profile leads through more than {MAX_SOURCE_PROFILES} profiles (a loop?)"
            )));
        }
        match self.credentials(&source_profile, depth + 1)? {
            Lookup::Found(c) => Ok(c),
            _ => Err(config_error(format!(
                "{origin} names source_profile {source_profile:?}, which has no keys"
            ))),
        }
    }
}

/// What a shared profile holds: static keys, a `credential_process` command whose output is
/// the keys, or a role to assume with another profile's keys (`chain` runs and refreshes
/// the last two).
pub enum ProfileCredentials {
    Keys(Arc<dyn CredentialSource>),
    Process {
        command: String,
        origin: String,
    },
    Role {
        role: AssumeRoleProfile,
        source: Box<ProfileCredentials>,
    },
}

/// A profile's `role_arn` and how to assume it (STS `AssumeRole`).
#[derive(Debug, Clone)]
pub struct AssumeRoleProfile {
    pub role_arn: String,
    pub session_name: Option<String>,
    pub external_id: Option<String>,
    pub duration_seconds: Option<u32>,
    pub origin: String,
}

/// The INI of `~/.aws/credentials` and `~/.aws/config`: `[section]`s of `name = value` lines, `#` and `;`
/// comment lines. Names are lower-cased (the SDKs read them case-insensitively).
fn parse_credentials_file(text: &str) -> Sections {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[profile  ci]` and `[profile ci]` are one section, as in the SDKs.
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((name, value))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> ChainEnvironment {
        ChainEnvironment::from_vars(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The static part of the chain, in its order: the environment's keys, then the shared
    /// files' profile (a `credential_process` profile is not static: none).
    fn static_chain(
        env: &ChainEnvironment,
    ) -> Result<Option<Arc<dyn CredentialSource>>, StoreError> {
        match environment_keys(env)? {
            Some(keys) => Ok(Some(keys)),
            None => Ok(match shared_profile(env)? {
                Some(ProfileCredentials::Keys(keys)) => Some(keys),
                _ => None,
            }),
        }
    }

    async fn keys(env: &ChainEnvironment) -> AwsCredentials {
        static_chain(env)
            .unwrap()
            .expect("a source")
            .credentials()
            .await
            .unwrap()
    }

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = default-secret\n\n[ci]\nAWS_ACCESS_KEY_ID=AKICI\naws_secret_access_key=ci-secret\naws_session_token = ci-token\n[empty]\n";

    #[tokio::test]
    async fn the_environment_comes_before_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, FILE).unwrap();
        let file = file.to_str().unwrap();
        let both = env(&[
            ("AWS_ACCESS_KEY_ID", "AKIENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("AWS_SHARED_CREDENTIALS_FILE", file),
        ]);
        let k = keys(&both).await;
        assert_eq!(k.access_key_id, "AKIENV");
        assert_eq!(k.secret_access_key.expose(), "env-secret");
        assert_eq!(k.session_token.unwrap().expose(), "env-token");
        let from_file = keys(&env(&[("AWS_SHARED_CREDENTIALS_FILE", file)])).await;
        assert_eq!(from_file.access_key_id, "AKIDEFAULT");
        assert_eq!(from_file.session_token, None);
        let profile = env(&[("AWS_SHARED_CREDENTIALS_FILE", file), ("AWS_PROFILE", "ci")]);
        let k = keys(&profile).await;
        assert_eq!(
            (k.access_key_id.as_str(), k.secret_access_key.expose()),
            ("AKICI", "ci-secret")
        );
        assert_eq!(k.session_token.unwrap().expose(), "ci-token");
        let principal = static_chain(&profile).unwrap().unwrap().principal();
        assert!(principal.contains("AKICI") && principal.contains("profile ci"));
        assert!(!principal.contains("secret"), "{principal}");
    }

    #[tokio::test]
    async fn the_default_file_is_under_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), FILE).unwrap();
        let k = keys(&env(&[("HOME", home.path().to_str().unwrap())])).await;
        assert_eq!(k.access_key_id, "AKIDEFAULT");
    }

    #[test]
    fn missing_or_half_sources_say_what_is_wrong() {
        let nowhere = env(&[("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")]);
        assert!(static_chain(&nowhere).unwrap().is_none());
        let half = env(&[("AWS_ACCESS_KEY_ID", "AKI")]);
        assert!(static_chain(&half)
            .unwrap_err()
            .message
            .contains("AWS_SECRET_ACCESS_KEY is not"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, FILE).unwrap();
        let file = file.to_str().unwrap();
        let unknown = env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", file),
            ("AWS_PROFILE", "nope"),
        ]);
        let err = static_chain(&unknown).unwrap_err().message;
        assert!(err.contains("\"nope\""), "{err}");
        let keyless = env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", file),
            ("AWS_PROFILE", "empty"),
        ]);
        let err = static_chain(&keyless).unwrap_err().message;
        assert!(err.contains("has no aws_access_key_id"), "{err}");
        assert!(!err.contains("default-secret"));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = AwsCredentials {
            access_key_id: "AKI".into(),
            secret_access_key: Secret::new("topsecret"),
            session_token: Some(Secret::new("sessiontok")),
        };
        let s = format!("{:?}", StaticCredentials::new(c, "environment"));
        assert!(!s.contains("topsecret") && !s.contains("sessiontok"), "{s}");
    }
}
