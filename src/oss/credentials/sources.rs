//! The sources of the default credential chain, in the official SDKs' order: flags and
//! environment (`OSS_*`, then `ALIBABA_CLOUD_*`), an OIDC role (`ALIBABA_CLOUD_ROLE_ARN`,
//! `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`, `ALIBABA_CLOUD_OIDC_TOKEN_FILE` → STS
//! `AssumeRoleWithOIDC`), a profile of the Alibaba Cloud CLI (`~/.aliyun/config.json`) or of
//! ossutil (`~/.ossutilconfig`), the ECS instance's RAM role (metadata service, IMDSv2 token
//! first), and `ALIBABA_CLOUD_CREDENTIALS_URI`. `OSSMOUNT_ECS_METADATA_ENDPOINT` and
//! `OSSMOUNT_STS_ENDPOINT` point the metadata service and STS elsewhere (tests use stand-ins
//! on 127.0.0.1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    CredentialFiles, Expiring, Fetch, Fixed, ProvideCredentials, Refreshing, RotatingFiles,
};
use crate::oss::{time, Credentials, OssError, Secret};
use crate::store::BoxFut;

const ECS_METADATA: &str = "http://100.100.100.200";
const STS: &str = "https://sts.aliyuncs.com";

/// What the command line adds to the chain.
#[derive(Clone, Default)]
pub struct ChainOptions {
    /// `--access-key-id`/`--access-key-secret`/`--session-token` (or `OSS_*`).
    pub flags: Option<Credentials>,
    /// `--credentials-dir` or the `--access-key-id-file` family: keys in files that rotate.
    pub files: Option<CredentialFiles>,
    /// `--profile` (else `ALIBABA_CLOUD_PROFILE`, else the file's current profile).
    pub profile: Option<String>,
    /// The environment the chain reads: `None` for this process's. A node server resolves
    /// each mount's chain in the environment of the command that asked for the mount, so
    /// one mount's variables never become another's credentials.
    pub env: Option<Arc<BTreeMap<String, String>>>,
}

impl ChainOptions {
    fn env(&self, name: &str) -> Option<String> {
        match &self.env {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    fn env_true(&self, name: &str) -> bool {
        self.env(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

/// The variables a credential chain (and the commands' flags) may read: what a node server
/// needs of a mount command's environment, and nothing else.
pub fn chain_environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k == "HOME"
                || k.starts_with("OSS_")
                || k.starts_with("ALIBABA_CLOUD_")
                || k.starts_with("OSSMOUNT_")
        })
        .collect()
}

fn config_err(msg: impl Into<String>) -> OssError {
    OssError::Config(msg.into())
}

/// The client for every credential source. It follows no redirect: one would carry the OIDC
/// token, the metadata session token or a signed request to wherever the answer points.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// A redirect as an error that names it (the client does not follow it).
fn refuse_redirect(resp: reqwest::Response, from: &str) -> Result<reqwest::Response, OssError> {
    let status = resp.status();
    if status.is_redirection() {
        return Err(config_err(format!(
            "{from} answered {status}, a redirect; credentials are never fetched through a redirect"
        )));
    }
    Ok(resp)
}

fn fixed(id: String, secret: String, token: Option<String>) -> Credentials {
    Credentials {
        access_key_id: id,
        access_key_secret: Secret::new(secret),
        security_token: token.map(Secret::new),
    }
}

/// Resolves the chain: the first source that yields credentials wins (temporary sources are
/// asked once here, so a broken one fails now, not at the first read). Logs which source won.
pub async fn resolve_chain(opts: &ChainOptions) -> Result<Arc<dyn ProvideCredentials>, OssError> {
    let mut tried: Vec<String> = Vec::new();
    if let Some(files) = &opts.files {
        if opts.flags.is_some() {
            return Err(config_err(format!(
                "keys were given twice: {} and --access-key-id/OSS_ACCESS_KEY_ID; give one of them",
                files.source
            )));
        }
        return Ok(found(Arc::new(RotatingFiles::open(files.clone())?)));
    }
    if let Some(c) = &opts.flags {
        return Ok(found(Arc::new(Fixed::new(
            c.clone(),
            "flags or OSS_ACCESS_KEY_ID",
        ))));
    }
    match (
        opts.env("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        opts.env("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
    ) {
        (Some(id), Some(secret)) => {
            let c = fixed(id, secret, opts.env("ALIBABA_CLOUD_SECURITY_TOKEN"));
            return Ok(found(Arc::new(Fixed::new(
                c,
                "ALIBABA_CLOUD_ACCESS_KEY_ID",
            ))));
        }
        (Some(_), None) => {
            return Err(config_err(
                "ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not",
            ))
        }
        _ => tried.push("environment".into()),
    }
    if let (Some(role), Some(provider), Some(token_file)) = (
        opts.env("ALIBABA_CLOUD_ROLE_ARN"),
        opts.env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"),
        opts.env("ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
    ) {
        let p = Refreshing::new(OidcRole {
            endpoint: opts
                .env("OSSMOUNT_STS_ENDPOINT")
                .unwrap_or_else(|| STS.into()),
            role_arn: role,
            provider_arn: provider,
            token_file: PathBuf::from(token_file),
            session_name: opts
                .env("ALIBABA_CLOUD_ROLE_SESSION_NAME")
                .unwrap_or_else(|| format!("ossmount-{}", time::unix_now())),
            http: http(),
        });
        p.credentials().await?;
        return Ok(found(Arc::new(p)));
    }
    tried.push("OIDC role (ALIBABA_CLOUD_ROLE_ARN)".into());
    let profile = opts
        .profile
        .clone()
        .or_else(|| opts.env("ALIBABA_CLOUD_PROFILE"));
    if let Some(home) = opts.env("HOME").map(PathBuf::from) {
        let cli = home.join(".aliyun").join("config.json");
        if cli.exists() {
            let provider = cli_profile(&cli, profile.as_deref(), opts).await?;
            provider.credentials().await?;
            return Ok(found(provider));
        }
        let ossutil = home.join(".ossutilconfig");
        if profile.is_none() && ossutil.exists() {
            let c = ossutil_config(&ossutil)?;
            return Ok(found(Arc::new(Fixed::new(c, "~/.ossutilconfig"))));
        }
    }
    if let Some(p) = profile {
        return Err(config_err(format!(
            "profile {p:?} was asked for, but there is no ~/.aliyun/config.json"
        )));
    }
    tried.push("CLI and ossutil profiles".into());
    if opts.env_true("ALIBABA_CLOUD_ECS_METADATA_DISABLED") {
        tried.push("ECS RAM role (disabled by ALIBABA_CLOUD_ECS_METADATA_DISABLED)".into());
    } else {
        let ecs = EcsRole::new(opts.env("ALIBABA_CLOUD_ECS_METADATA"), opts);
        match ecs.resolve_role().await {
            Ok(role) => {
                let p = Refreshing::new(ecs.with_role(role.clone()));
                p.credentials().await?;
                return Ok(found(Arc::new(p)));
            }
            Err(e) => {
                tracing::debug!("no ECS RAM role: {e}");
                tried.push(format!("ECS RAM role ({e})"));
            }
        }
    }
    if let Some(uri) = opts.env("ALIBABA_CLOUD_CREDENTIALS_URI") {
        let p = Refreshing::new(CredentialsUri { uri, http: http() });
        p.credentials().await?;
        return Ok(found(Arc::new(p)));
    }
    tried.push("ALIBABA_CLOUD_CREDENTIALS_URI".into());
    Err(config_err(format!(
        "no credentials: set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (or pass --access-key-id/--access-key-secret), or use --anonymous for a public-read bucket (tried: {})",
        tried.join(", ")
    )))
}

fn found(p: Arc<dyn ProvideCredentials>) -> Arc<dyn ProvideCredentials> {
    tracing::info!("using credentials from {}", p.describe());
    p
}

/// A profile of the Alibaba Cloud CLI: modes AK, StsToken and EcsRamRole.
async fn cli_profile(
    path: &Path,
    name: Option<&str>,
    opts: &ChainOptions,
) -> Result<Arc<dyn ProvideCredentials>, OssError> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        current: String,
        #[serde(default)]
        profiles: Vec<Profile>,
    }
    #[derive(Deserialize)]
    struct Profile {
        name: String,
        #[serde(default)]
        mode: String,
        #[serde(default)]
        access_key_id: String,
        #[serde(default)]
        access_key_secret: String,
        #[serde(default)]
        sts_token: String,
        #[serde(default)]
        ram_role_name: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_err(format!("cannot read {}: {e}", path.display())))?;
    let file: File = serde_json::from_str(&text)
        .map_err(|e| config_err(format!("{} is not valid JSON: {e}", path.display())))?;
    let want = name.unwrap_or(if file.current.is_empty() {
        "default"
    } else {
        &file.current
    });
    let p = file
        .profiles
        .into_iter()
        .find(|p| p.name == want)
        .ok_or_else(|| config_err(format!("{} has no profile {want:?}", path.display())))?;
    let what = format!("profile {want:?} of {}", path.display());
    match p.mode.as_str() {
        "AK" | "" => Ok(Arc::new(Fixed::new(
            fixed(p.access_key_id, p.access_key_secret, None),
            what,
        ))),
        "StsToken" => Ok(Arc::new(Fixed::new(
            fixed(p.access_key_id, p.access_key_secret, Some(p.sts_token)),
            what,
        ))),
        "EcsRamRole" => {
            let ecs = EcsRole::new(Some(p.ram_role_name).filter(|r| !r.is_empty()), opts);
            let role = ecs.resolve_role().await?;
            Ok(Arc::new(Refreshing::new(ecs.with_role(role))))
        }
        other => Err(config_err(format!(
            "{what} has mode {other:?}; ossmount reads modes AK, StsToken and EcsRamRole"
        ))),
    }
}

/// ossutil's INI file: `[Credentials]` with `accessKeyID`, `accessKeySecret`, `stsToken`.
fn ossutil_config(path: &Path) -> Result<Credentials, OssError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_err(format!("cannot read {}: {e}", path.display())))?;
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if section != "Credentials" {
            continue;
        }
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "accesskeyid" => id = Some(v),
            "accesskeysecret" => secret = Some(v),
            "ststoken" => token = Some(v).filter(|t| !t.is_empty()),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(fixed(id, secret, token)),
        _ => Err(config_err(format!(
            "{} has no accessKeyID and accessKeySecret under [Credentials]",
            path.display()
        ))),
    }
}

/// The JSON the metadata service, a credentials URI and STS use for temporary keys.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TemporaryJson {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    access_key_secret: String,
    #[serde(default)]
    security_token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

impl TemporaryJson {
    fn into_expiring(self, from: &str) -> Result<Expiring, OssError> {
        if let Some(code) = self.code.as_deref().filter(|c| *c != "Success") {
            return Err(config_err(format!("{from} answered Code {code:?}")));
        }
        let expiration = match &self.expiration {
            Some(t) => Some(time::parse_iso8601_extended(t).ok_or_else(|| {
                config_err(format!("{from} gave an unreadable Expiration {t:?}"))
            })?),
            None => None,
        };
        Ok(Expiring {
            credentials: fixed(
                self.access_key_id,
                self.access_key_secret,
                self.security_token,
            ),
            expiration,
        })
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: Result<reqwest::Response, reqwest::Error>,
    from: &str,
) -> Result<T, OssError> {
    let resp = resp.map_err(|e| config_err(format!("{from}: {e}")))?;
    let resp = refuse_redirect(resp, from)?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| config_err(format!("{from}: {e}")))?;
    if !status.is_success() {
        // The body is the service's error document; it holds no secret of ours.
        let head: String = body.chars().take(300).collect();
        return Err(config_err(format!("{from} answered {status}: {head}")));
    }
    serde_json::from_str(&body).map_err(|e| config_err(format!("{from}: unexpected answer: {e}")))
}

/// STS AssumeRoleWithOIDC with the token file's current content (it rotates).
struct OidcRole {
    endpoint: String,
    role_arn: String,
    provider_arn: String,
    token_file: PathBuf,
    session_name: String,
    http: reqwest::Client,
}

impl Fetch for OidcRole {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, OssError>> {
        Box::pin(async move {
            let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
                config_err(format!(
                    "cannot read the OIDC token file {} (ALIBABA_CLOUD_OIDC_TOKEN_FILE): {e}",
                    self.token_file.display()
                ))
            })?;
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Answer {
                credentials: TemporaryJson,
            }
            let query = [
                ("Action", "AssumeRoleWithOIDC"),
                ("Format", "JSON"),
                ("Version", "2015-04-01"),
                ("RoleArn", self.role_arn.as_str()),
                ("OIDCProviderArn", self.provider_arn.as_str()),
                ("RoleSessionName", self.session_name.as_str()),
                ("DurationSeconds", "3600"),
            ];
            let resp = self
                .http
                .post(&self.endpoint)
                .query(&query)
                .form(&[("OIDCToken", token.trim())])
                .send()
                .await;
            let a: Answer = read_json(resp, "STS AssumeRoleWithOIDC").await?;
            a.credentials.into_expiring("STS AssumeRoleWithOIDC")
        })
    }

    fn describe(&self) -> String {
        format!("the OIDC role {} (STS AssumeRoleWithOIDC)", self.role_arn)
    }
}

/// The ECS instance's RAM role through the metadata service, IMDSv2 token first.
struct EcsRole {
    base: String,
    role: Option<String>,
    imdsv1_disabled: bool,
    http: reqwest::Client,
}

impl EcsRole {
    fn new(role: Option<String>, opts: &ChainOptions) -> EcsRole {
        EcsRole {
            base: opts
                .env("OSSMOUNT_ECS_METADATA_ENDPOINT")
                .unwrap_or_else(|| ECS_METADATA.into())
                .trim_end_matches('/')
                .to_string(),
            role,
            imdsv1_disabled: opts.env_true("ALIBABA_CLOUD_IMDSV1_DISABLED"),
            http: http(),
        }
    }

    fn with_role(mut self, role: String) -> EcsRole {
        self.role = Some(role);
        self
    }

    /// An IMDSv2 session token; `None` (plain v1 requests) when the service offers none and
    /// v1 is allowed. With v1 forbidden, no token for whatever reason is an error.
    async fn token(&self) -> Result<Option<String>, OssError> {
        match self.request_token().await {
            Ok(token) => Ok(Some(token)),
            Err(why) if self.imdsv1_disabled => Err(config_err(format!(
                "the ECS metadata service gave no IMDSv2 token ({why}) and ALIBABA_CLOUD_IMDSV1_DISABLED forbids v1"
            ))),
            Err(why) => {
                tracing::debug!("no IMDSv2 token ({why}); asking the ECS metadata service with v1");
                Ok(None)
            }
        }
    }

    /// The token, or why there is none (never the token itself).
    async fn request_token(&self) -> Result<String, String> {
        let resp = self
            .http
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aliyun-ecs-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("it answered {status}"));
        }
        let body = resp
            .text()
            .await
            .map_err(|e| format!("its answer could not be read: {e}"))?;
        match body.trim() {
            "" => Err("its answer was empty".into()),
            token => Ok(token.to_string()),
        }
    }

    /// A GET with the session token; fails when IMDSv1 is forbidden and no token came.
    async fn get(&self, path: &str) -> Result<reqwest::Response, OssError> {
        let token = self.token().await?;
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.header("X-aliyun-ecs-metadata-token", t);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| config_err(format!("ECS metadata service: {e}")))?;
        refuse_redirect(resp, "ECS metadata service")
    }

    async fn resolve_role(&self) -> Result<String, OssError> {
        if let Some(r) = &self.role {
            return Ok(r.clone());
        }
        let resp = self
            .get("/latest/meta-data/ram/security-credentials/")
            .await?;
        if !resp.status().is_success() {
            return Err(config_err(format!(
                "ECS metadata service answered {} for the role name",
                resp.status()
            )));
        }
        let role = resp.text().await.unwrap_or_default().trim().to_string();
        if role.is_empty() {
            return Err(config_err("this ECS instance has no RAM role attached"));
        }
        Ok(role)
    }
}

impl Fetch for EcsRole {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, OssError>> {
        Box::pin(async move {
            let role = self.role.clone().unwrap_or_default();
            let resp = self
                .get(&format!(
                    "/latest/meta-data/ram/security-credentials/{role}"
                ))
                .await?;
            let t: TemporaryJson = read_json(Ok(resp), "ECS metadata service").await?;
            t.into_expiring("ECS metadata service")
        })
    }

    fn describe(&self) -> String {
        format!(
            "the ECS RAM role {} (metadata service)",
            self.role.as_deref().unwrap_or("?")
        )
    }
}

/// `ALIBABA_CLOUD_CREDENTIALS_URI`: a GET answering the metadata service's JSON.
struct CredentialsUri {
    uri: String,
    http: reqwest::Client,
}

impl Fetch for CredentialsUri {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, OssError>> {
        Box::pin(async move {
            let resp = self.http.get(&self.uri).send().await;
            let t: TemporaryJson = read_json(resp, "the credentials URI").await?;
            t.into_expiring("the credentials URI")
        })
    }

    fn describe(&self) -> String {
        "ALIBABA_CLOUD_CREDENTIALS_URI".into()
    }
}
