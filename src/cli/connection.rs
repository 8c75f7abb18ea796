//! Command-line options shared by every command that talks to object storage (endpoint,
//! region, credentials, signature version, addressing, timeouts), their translation into an
//! OSS `ClientConfig` or an `S3Config`, and `ObjectUrl`, by whose scheme (`oss://`, `s3://`) a
//! command picks the client it builds. Secrets come from the environment, files or flags and
//! are never echoed. Only the command line lives here: the library's types know nothing of
//! clap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use ossmount::oss::credentials::{
    resolve_chain, ChainOptions, CredentialFiles, ProvideCredentials, RotatingFiles,
};
use ossmount::oss::{
    Addressing, ClientConfig, Credentials, Endpoint, OssClient, OssError, OssUrl, Secret,
    SignatureVersion,
};
use ossmount::store::s3::credentials::ChainEnvironment;
use ossmount::store::s3::{
    AwsCredentials, CredentialSource as S3CredentialSource, StaticCredentials,
};
use ossmount::store::s3::{S3Addressing, S3Client, S3Config, S3Endpoint, S3Url};
use ossmount::store::{ObjectStore, RequestObserver, StoreUrl};

#[derive(Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectionArgs {
    /// OSS endpoint, e.g. oss-cn-hangzhou.aliyuncs.com or http://127.0.0.1:9000; for s3://
    /// URLs an S3 endpoint (without this flag: AWS_ENDPOINT_URL, else AWS's for the region)
    #[arg(long, env = "OSS_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Region for V4 signatures (e.g. cn-hangzhou); derived from standard endpoints when omitted.
    /// For s3:// URLs, without this flag: AWS_REGION, else us-east-1
    #[arg(long, env = "OSS_REGION", global = true)]
    pub region: Option<String>,
    #[arg(long, env = "OSS_ACCESS_KEY_ID", global = true, hide_env_values = true)]
    pub access_key_id: Option<String>,
    #[arg(
        long,
        env = "OSS_ACCESS_KEY_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub access_key_secret: Option<String>,
    /// STS security token for temporary credentials
    #[arg(long, env = "OSS_SESSION_TOKEN", global = true, hide_env_values = true)]
    pub session_token: Option<String>,
    /// A directory of AccessKeyId, AccessKeySecret and (STS) SecurityToken and Expiration
    /// files, re-read whenever they change (ACK and kubelet rotate them behind a symlink)
    #[arg(
        long,
        env = "OSSMOUNT_CREDENTIALS_DIR",
        global = true,
        value_name = "DIR"
    )]
    pub credentials_dir: Option<PathBuf>,
    /// A file holding the AccessKey id, re-read whenever it changes (with
    /// --access-key-secret-file, and --session-token-file for STS keys)
    #[arg(long, global = true, value_name = "FILE")]
    pub access_key_id_file: Option<PathBuf>,
    /// A file holding the AccessKey secret, re-read whenever it changes
    #[arg(long, global = true, value_name = "FILE")]
    pub access_key_secret_file: Option<PathBuf>,
    /// A file holding the STS security token, re-read whenever it changes
    #[arg(long, global = true, value_name = "FILE")]
    pub session_token_file: Option<PathBuf>,
    /// A profile of ~/.aliyun/config.json (the Alibaba Cloud CLI's) to take credentials from
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Send unsigned requests (public-read buckets)
    #[arg(long, global = true)]
    pub anonymous: bool,
    /// s3:// URLs: an ETag of 32 hex digits is not the object's MD5 on this store (it is on
    /// AWS, MinIO and R2 for single-part uploads), so objects are not verified by it
    #[arg(long, global = true)]
    #[serde(default)]
    pub etag_is_not_md5: bool,
    #[arg(long, default_value = "v4", global = true,
          value_parser = PossibleValuesParser::new(SignatureVersion::NAMES).map(|s| s.parse::<SignatureVersion>().expect("a listed name")))]
    pub signature_version: SignatureVersion,
    #[arg(long, default_value = "auto", global = true,
          value_parser = PossibleValuesParser::new(Addressing::NAMES).map(|s| s.parse::<Addressing>().expect("a listed name")))]
    pub addressing: Addressing,
    /// Connect timeout, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = ossmount::size::parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer, e.g. 30s
    #[arg(long, default_value = "30s", value_parser = ossmount::size::parse_duration, global = true)]
    pub read_timeout: Duration,
    /// Attempts per request (first included) before giving up on 5xx, throttling and resets
    /// [default: 6; 3 for mount, so a read fails promptly when the server is gone]
    #[arg(long, global = true)]
    pub max_attempts: Option<u32>,
    /// --endpoint was on the command line (not from OSS_ENDPOINT): only then does an s3://
    /// URL use it instead of AWS_ENDPOINT_URL. Set by `main` from the parse; sent to a node
    /// with the mount (absent from an older command's spec: false).
    #[arg(skip)]
    #[serde(default)]
    pub endpoint_on_command_line: bool,
    /// --region was on the command line (not from OSS_REGION): only then does an s3:// URL
    /// use it instead of AWS_REGION.
    #[arg(skip)]
    #[serde(default)]
    pub region_on_command_line: bool,
    /// Which of --access-key-id, --access-key-secret and --session-token were on the command
    /// line (or set from a Fluid mount's keys), not from OSS_* variables: an s3:// URL signs
    /// only with keys given so, both of them, and sends a token only if it was given so too
    /// (an OSS STS token never goes to an S3 endpoint).
    #[arg(skip)]
    #[serde(default)]
    pub keys_on_command_line: KeysOnCommandLine,
}

/// See `ConnectionArgs::keys_on_command_line`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeysOnCommandLine {
    pub id: bool,
    pub secret: bool,
    pub token: bool,
}

/// An object or prefix URL: its scheme picks the store.
#[derive(Debug, Clone)]
pub enum ObjectUrl {
    Oss(OssUrl),
    S3(S3Url),
}

impl ObjectUrl {
    pub fn parse(s: &str) -> Result<ObjectUrl, String> {
        if s.starts_with("s3://") {
            S3Url::parse(s).map(ObjectUrl::S3)
        } else {
            OssUrl::parse(s).map(ObjectUrl::Oss)
        }
    }

    pub fn bucket(&self) -> &str {
        match self {
            ObjectUrl::Oss(u) => &u.bucket,
            ObjectUrl::S3(u) => &u.bucket,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            ObjectUrl::Oss(u) => &u.key,
            ObjectUrl::S3(u) => &u.key,
        }
    }

    /// The bucket and key in the library's words (what `mount` and `prefetch` take).
    pub fn store_url(&self) -> StoreUrl {
        match self {
            ObjectUrl::Oss(u) => u.clone().into(),
            ObjectUrl::S3(u) => u.clone().into(),
        }
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectUrl::Oss(u) => u.fmt(f),
            ObjectUrl::S3(u) => u.fmt(f),
        }
    }
}

/// Names what was given, never the secret or the token.
impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "access_key_secret",
                &self.access_key_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("credentials_dir", &self.credentials_dir)
            .field("access_key_id_file", &self.access_key_id_file)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl ConnectionArgs {
    /// The OSS client's configuration, with credentials from the default chain (flags and
    /// `OSS_*` first; see `oss::credentials`) unless `--anonymous`, the chain reading `env`
    /// (a node builds each mount in its command's environment) or, without it, this
    /// process's environment.
    pub async fn client_config_in(
        &self,
        env: Option<std::sync::Arc<std::collections::BTreeMap<String, String>>>,
    ) -> Result<ClientConfig, OssError> {
        let endpoint = self.endpoint.as_deref().ok_or_else(|| {
            OssError::Config(
                "no endpoint: pass --endpoint (e.g. oss-cn-hangzhou.aliyuncs.com) or set OSS_ENDPOINT"
                    .into(),
            )
        })?;
        let endpoint = Endpoint::parse(endpoint).map_err(OssError::Config)?;
        let mut cfg = ClientConfig::new(endpoint);
        cfg.region = self.region.clone();
        cfg.signature_version = self.signature_version;
        cfg.addressing = self.addressing;
        cfg.connect_timeout = self.connect_timeout;
        cfg.read_timeout = self.read_timeout;
        cfg.retry.max_attempts = self.max_attempts.unwrap_or(6).max(1);
        if self.anonymous {
            return Ok(cfg);
        }
        let flags = match (&self.access_key_id, &self.access_key_secret) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id.clone(),
                access_key_secret: Secret::new(secret.clone()),
                security_token: self.session_token.clone().map(Secret::new),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(OssError::Config(
                    "OSS_ACCESS_KEY_ID is set but OSS_ACCESS_KEY_SECRET is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(OssError::Config(
                    "OSS_ACCESS_KEY_SECRET is set but OSS_ACCESS_KEY_ID is not".into(),
                ))
            }
        };
        let chain = ChainOptions {
            files: self.credential_files()?,
            flags,
            profile: self.profile.clone(),
            env,
        };
        cfg.credentials_provider = Some(resolve_chain(&chain).await?);
        Ok(cfg)
    }

    /// The rotating credential files asked for, if any.
    pub fn credential_files(&self) -> Result<Option<CredentialFiles>, OssError> {
        let explicit = (
            &self.access_key_id_file,
            &self.access_key_secret_file,
            &self.session_token_file,
        );
        match (&self.credentials_dir, explicit) {
            (None, (None, None, None)) => Ok(None),
            (Some(dir), (None, None, None)) => Ok(Some(CredentialFiles::in_dir(dir))),
            (None, (Some(id), Some(secret), token)) => Ok(Some(CredentialFiles::explicit(
                id.clone(),
                secret.clone(),
                token.clone(),
            ))),
            (None, _) => Err(OssError::Config(
                "--access-key-id-file and --access-key-secret-file go together (and --session-token-file with them for STS keys)".into(),
            )),
            (Some(_), _) => Err(OssError::Config(
                "--credentials-dir (OSSMOUNT_CREDENTIALS_DIR) names a directory of the key files: give it or the --access-key-*-file flags, not both".into(),
            )),
        }
    }

    /// The credential files' paths made absolute, as this command means them (a node
    /// resolves nothing against its own working directory).
    pub fn make_paths_absolute(&mut self) -> std::io::Result<()> {
        for path in [
            &mut self.credentials_dir,
            &mut self.access_key_id_file,
            &mut self.access_key_secret_file,
            &mut self.session_token_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = std::path::absolute(&*path)?;
        }
        Ok(())
    }

    /// The client for `url`'s store, reporting its requests to `observer`.
    pub async fn store_for(
        &self,
        url: &ObjectUrl,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> anyhow::Result<Arc<dyn ObjectStore>> {
        self.store_in(url, observer, None, 6).await
    }

    /// `store_for` with the credential chain reading `env` instead of this process's
    /// environment (a node builds each mount in its command's environment), and
    /// `default_attempts` when --max-attempts is not given (a mount's reads fail sooner than a
    /// download's).
    pub async fn store_in(
        &self,
        url: &ObjectUrl,
        observer: Option<Arc<dyn RequestObserver>>,
        env: Option<Arc<BTreeMap<String, String>>>,
        default_attempts: u32,
    ) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let attempts = self.max_attempts.unwrap_or(default_attempts).max(1);
        Ok(match url {
            ObjectUrl::Oss(_) => {
                let mut cfg = self.client_config_in(env).await?;
                cfg.retry.max_attempts = attempts;
                cfg.observer = observer;
                Arc::new(OssClient::new(cfg)?)
            }
            ObjectUrl::S3(_) => {
                let env = match env {
                    Some(vars) => ChainEnvironment::from_vars((*vars).clone()),
                    None => ChainEnvironment::from_process(),
                };
                let mut cfg = self.s3_config(&env).await?;
                cfg.retry.max_attempts = attempts;
                cfg.observer = observer;
                Arc::new(S3Client::new(cfg)?)
            }
        })
    }

    /// What names `url`'s endpoint in a default cache directory's name: the OSS endpoint as
    /// before (so existing default caches are found again); for S3 the kind and the endpoint
    /// an S3 client would use, so an `s3://` and an `oss://` mount of one bucket do not meet
    /// in one directory by default.
    pub fn cache_dir_endpoint(&self, url: &ObjectUrl, env: &ChainEnvironment) -> String {
        match url {
            ObjectUrl::Oss(_) => self.endpoint.clone().unwrap_or_default(),
            ObjectUrl::S3(_) => {
                let endpoint = match &self.endpoint {
                    Some(e) if self.endpoint_on_command_line => Some(e.as_str()),
                    _ => env
                        .get("AWS_ENDPOINT_URL_S3")
                        .or_else(|| env.get("AWS_ENDPOINT_URL")),
                };
                format!("s3+{}", endpoint.unwrap_or("aws"))
            }
        }
    }

    /// The S3 client's configuration: the endpoint from --endpoint, else AWS_ENDPOINT_URL,
    /// else AWS's for the region; the region from --region, else AWS_REGION (or
    /// AWS_DEFAULT_REGION), else us-east-1; credentials from the AWS chain unless
    /// `--anonymous` (environment, web identity, container, shared files, IMDSv2: see
    /// `store::s3::chain`; a temporary source is asked once here, so a broken one fails now).
    /// The OSS_* variables are not read: they name another service.
    pub async fn s3_config(&self, env: &ChainEnvironment) -> anyhow::Result<S3Config> {
        let var = |name: &str| env.get(name).map(str::to_string);
        let region = match &self.region {
            Some(r) if self.region_on_command_line => Some(r.clone()),
            _ => var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
        }
        .unwrap_or_else(|| ossmount::store::s3::DEFAULT_REGION.to_string());
        let endpoint = match &self.endpoint {
            Some(e) if self.endpoint_on_command_line => Some(e.clone()),
            _ => var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
        };
        let endpoint = match endpoint {
            Some(e) => S3Endpoint::parse(&e).map_err(anyhow::Error::msg)?,
            None => S3Endpoint::aws(&region),
        };
        let mut cfg = S3Config::new(endpoint);
        cfg.region = region;
        cfg.addressing = match self.addressing {
            Addressing::Auto => S3Addressing::Auto,
            Addressing::Path => S3Addressing::Path,
            Addressing::Virtual => S3Addressing::Virtual,
            Addressing::Cname => anyhow::bail!(
                "--addressing cname is for OSS custom domains: s3:// URLs take auto, path or virtual"
            ),
        };
        cfg.connect_timeout = self.connect_timeout;
        cfg.read_timeout = self.read_timeout;
        cfg.retry.max_attempts = self.max_attempts.unwrap_or(6).max(1);
        cfg.etag_is_md5 = !self.etag_is_not_md5;
        if !self.anonymous {
            cfg.credentials = Some(self.s3_credentials(env).await?);
        }
        Ok(cfg)
    }

    /// The keys an s3:// URL signs with: the key files (`--credentials-dir`,
    /// `--access-key-*-file`, re-read when they change), else keys given on the command line,
    /// else the AWS chain. OSS_ACCESS_KEY_* variables are OSS keys: never used for S3.
    async fn s3_credentials(
        &self,
        env: &ChainEnvironment,
    ) -> anyhow::Result<Arc<dyn S3CredentialSource>> {
        let given = self.keys_on_command_line;
        if let Some(files) = self.credential_files()? {
            if given.id || given.secret {
                anyhow::bail!(
                    "keys were given twice: {} and --access-key-id/--access-key-secret; give one of them",
                    files.source
                );
            }
            let files = RotatingFiles::open(files)?;
            tracing::info!("using AWS credentials from {}", files.describe());
            return Ok(Arc::new(KeyFilesForS3(files)));
        }
        if given.id || given.secret {
            let (Some(id), Some(secret), true, true) = (
                &self.access_key_id,
                &self.access_key_secret,
                given.id,
                given.secret,
            ) else {
                anyhow::bail!(
                    "for an s3:// URL give both --access-key-id and --access-key-secret on the command line (OSS_ACCESS_KEY_* variables are OSS keys and are not used for S3)"
                );
            };
            let token = self.session_token.clone().filter(|_| given.token);
            let keys = AwsCredentials {
                access_key_id: id.clone(),
                secret_access_key: ossmount::store::Secret::new(secret.clone()),
                session_token: token.map(ossmount::store::Secret::new),
            };
            let source = StaticCredentials::new(keys, "command line");
            tracing::info!("using AWS credentials: {}", source.principal());
            return Ok(Arc::new(source));
        }
        ossmount::store::s3::resolve_chain(env)
            .await
            .context("cannot get AWS credentials")
    }
}

/// Key files (`--credentials-dir`, `--access-key-*-file`) for an S3 client: the same files,
/// re-read when kubelet or ACK rotate them, handed out as AWS keys.
struct KeyFilesForS3(RotatingFiles);

impl std::fmt::Debug for KeyFilesForS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFilesForS3({})", self.0.describe())
    }
}

impl S3CredentialSource for KeyFilesForS3 {
    fn credentials(
        &self,
    ) -> ossmount::store::BoxFut<'_, Result<AwsCredentials, ossmount::store::StoreError>> {
        Box::pin(async move {
            let keys = self.0.credentials().await.map_err(|e| {
                ossmount::store::StoreError::new(
                    ossmount::store::StoreErrorKind::Permanent,
                    format!("cannot read the AWS keys from the credential files: {e}"),
                )
            })?;
            Ok(AwsCredentials {
                access_key_id: keys.access_key_id,
                secret_access_key: ossmount::store::Secret::new(
                    keys.access_key_secret.expose().to_string(),
                ),
                session_token: keys
                    .security_token
                    .map(|t| ossmount::store::Secret::new(t.expose().to_string())),
            })
        })
    }

    fn principal(&self) -> String {
        self.0.principal()
    }
}
