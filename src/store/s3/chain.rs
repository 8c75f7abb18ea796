//! The AWS credential chain, in the order issue 20 asks for (the SDKs' sources; the SDKs
//! themselves differ on where the shared files go): the `AWS_*` keys in the environment; web
//! identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, STS `AssumeRoleWithWebIdentity`,
//! the token file re-read at every refresh because EKS rotates it); container credentials
//! (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, with the authorization token
//! file re-read at every refresh: ECS, EKS Pod Identity); the shared credentials and config
//! files' profile (a `role_arn` assumed with its `source_profile`'s keys, static keys, or a
//! `credential_process`; the role and the process renewed before their keys expire);
//! the EC2 instance role through IMDSv2. The first source that is configured
//! decides: a configured source that fails is an error, not a reason to try the next one, so
//! a broken role never silently becomes other keys. Temporary credentials are kept fresh by
//! `refresh::Refreshing`. `AWS_ENDPOINT_URL_STS`, `OSSMOUNT_CONTAINER_CREDENTIALS_ENDPOINT`
//! and `AWS_EC2_METADATA_SERVICE_ENDPOINT` point the services elsewhere (tests use stand-ins
//! on 127.0.0.1). Written here rather than taken from reqsign 0.16's loaders, which have no
//! container source, hard-code the STS and IMDS addresses and refresh inside the request.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::credentials::{
    environment_keys, shared_profile, AssumeRoleProfile, AwsCredentials, ChainEnvironment,
    CredentialSource, ProfileCredentials,
};
use super::refresh::{Expiring, Fetch, Refreshing};
use crate::store::{time, xml, BoxFut, Secret, StoreError, StoreErrorKind};

const IMDS: &str = "http://169.254.169.254";
const ECS_CONTAINER: &str = "http://169.254.170.2";

fn permanent(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Permanent, message)
}

fn transient(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Transient, message)
}

/// The client for every credential source. It follows no redirect (one would carry the web
/// identity token or the authorization token wherever the answer points) and uses no proxy
/// (the metadata addresses are link-local). A short connect timeout: on a laptop there is no
/// IMDS, and the chain must say so in about a second, not hang.
fn http(total: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(total)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The answer's body when it is a success; else an error naming `from`, the status and the
/// start of the service's error document (which holds none of our secrets), and `hint`.
async fn success_body(
    resp: Result<reqwest::Response, reqwest::Error>,
    from: &str,
    hint: &str,
) -> Result<String, StoreError> {
    let resp = resp.map_err(|e| {
        // Without the URL: a full URI may carry a query the user considers private.
        transient(format!("{from} could not be reached: {}", e.without_url()))
    })?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(permanent(format!(
            "{from} answered {status}, a redirect; credentials are never fetched through one"
        )));
    }
    let body = resp
        .text()
        .await
        .map_err(|e| transient(format!("{from}: the answer broke off: {}", e.without_url())))?;
    if status.is_success() {
        return Ok(body);
    }
    let head: String = body.trim().chars().take(300).collect();
    let message = format!("{from} answered {status}: {head}; {hint}");
    Err(if status.is_server_error() || status.as_u16() == 429 {
        transient(message)
    } else {
        permanent(message)
    })
}

fn parse_expiration(t: &str, from: &str) -> Result<std::time::SystemTime, StoreError> {
    time::parse_iso8601_extended(t.trim())
        .ok_or_else(|| permanent(format!("{from} gave an unreadable Expiration {t:?}")))
}

/// What was wrong with a JSON answer, without quoting any of it: serde's own message quotes
/// a value of the wrong type (`invalid type: string "..."`), which may be a secret. A missing
/// field is named (a field name is no secret).
fn json_error_without_values(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") {
        return text;
    }
    let what = match e.classify() {
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a value of the wrong type or shape",
        serde_json::error::Category::Eof => "cut short",
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// The JSON answer of container endpoints and IMDS.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsJson {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

impl CredentialsJson {
    fn parse(body: &str, from: &str) -> Result<Expiring, StoreError> {
        let j: CredentialsJson = serde_json::from_str(body).map_err(|e| {
            permanent(format!(
                "{from} gave an unexpected answer: {}",
                json_error_without_values(&e)
            ))
        })?;
        if let Some(code) = j.code.as_deref().filter(|c| *c != "Success") {
            return Err(permanent(format!("{from} answered Code {code:?}")));
        }
        let expiration = match &j.expiration {
            Some(t) => Some(parse_expiration(t, from)?),
            None => None,
        };
        Ok(Expiring {
            credentials: AwsCredentials {
                access_key_id: j.access_key_id,
                secret_access_key: Secret::new(j.secret_access_key),
                session_token: j.token.filter(|t| !t.is_empty()).map(Secret::new),
            },
            expiration,
        })
    }
}

/// How long a `credential_process` command may run.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A profile's `credential_process`: the command (run by `sh -c`, as the AWS SDKs run it on
/// Unix, in the mount's environment) prints `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
/// "Expiration"}` on stdout. Run again before the keys expire (`Refreshing`); keys without an
/// Expiration are kept. Neither its output nor its stderr (which may hold keys) is ever quoted.
pub struct CredentialProcess {
    command: String,
    origin: String,
    /// The mount's environment (its AWS_PROFILE, HOME, ...): the command runs in it, as the
    /// SDKs run it in their caller's, not in whatever the long-lived node started with.
    env: BTreeMap<String, String>,
}

/// What a `credential_process` prints.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJson {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

impl Fetch for CredentialProcess {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>> {
        Box::pin(async move {
            let what = format!("credential_process of {}", self.origin);
            // Its own process group, so a timeout ends what the shell started too.
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&self.command)
                .envs(&self.env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| permanent(format!("{what} could not run: {e}")))?;
            let group = child.id();
            let out = match tokio::time::timeout(PROCESS_TIMEOUT, child.wait_with_output()).await {
                Err(_) => {
                    if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
                        // SAFETY: signalling the process group this call started.
                        unsafe {
                            libc::kill(-pid, libc::SIGKILL);
                        }
                    }
                    return Err(transient(format!(
                        "{what} did not finish within {PROCESS_TIMEOUT:?}"
                    )));
                }
                Ok(Err(e)) => return Err(permanent(format!("{what} could not run: {e}"))),
                Ok(Ok(out)) => out,
            };
            if !out.status.success() {
                return Err(permanent(format!(
                    "{what} failed ({}); run it by hand to see why",
                    out.status
                )));
            }
            let j: ProcessJson = serde_json::from_slice(&out.stdout).map_err(|e| {
                permanent(format!(
                    "{what} printed unexpected output: {}",
                    json_error_without_values(&e)
                ))
            })?;
            if j.version != 1 {
                return Err(permanent(format!(
                    "{what} printed Version {}; the AWS SDKs read Version 1",
                    j.version
                )));
            }
            let expiration = match &j.expiration {
                Some(t) => Some(parse_expiration(t, &what)?),
                None => None,
            };
            Ok(Expiring {
                credentials: AwsCredentials {
                    access_key_id: j.access_key_id,
                    secret_access_key: Secret::new(j.secret_access_key),
                    session_token: j.session_token.filter(|t| !t.is_empty()).map(Secret::new),
                },
                expiration,
            })
        })
    }

    fn describe(&self) -> String {
        format!("the credential_process of {}", self.origin)
    }
}

/// Web identity: STS `AssumeRoleWithWebIdentity`, unsigned, as a form POST (the token stays
/// out of the URL, so out of any access log), with the token file's current content.
pub struct WebIdentity {
    endpoint: String,
    role_arn: String,
    token_file: PathBuf,
    session_name: String,
    http: reqwest::Client,
}

impl WebIdentity {
    fn from_env(env: &ChainEnvironment) -> Option<Result<WebIdentity, StoreError>> {
        let role = env.get("AWS_ROLE_ARN");
        let file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE");
        let (role_arn, token_file) = match (role, file) {
            (None, None) => return None,
            (Some(r), Some(f)) => (r.to_string(), PathBuf::from(f)),
            (Some(_), None) => return Some(Err(permanent(
                "AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not: web identity needs both (on EKS, check the service account's role annotation)",
            ))),
            (None, Some(_)) => return Some(Err(permanent(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: web identity needs both",
            ))),
        };
        Some(Ok(WebIdentity {
            endpoint: sts_endpoint_of(env),
            role_arn,
            token_file,
            session_name: env
                .get("AWS_ROLE_SESSION_NAME")
                .map(str::to_string)
                .unwrap_or_else(|| format!("ossmount-{}", time::unix_now())),
            http: http(Duration::from_secs(5)),
        }))
    }
}

/// The temporary keys of an STS answer (`<{result}><Credentials>...`).
fn sts_credentials(body: &str, result: &str, from: &str) -> Result<Expiring, StoreError> {
    let doc = xml::parse(body.as_bytes())
        .map_err(|e| permanent(format!("{from} gave an unreadable answer: {e}")))?;
    let c = doc
        .child(result)
        .and_then(|r| r.child("Credentials"))
        .ok_or_else(|| permanent(format!("{from} gave an answer without Credentials")))?;
    let field = |name: &str| {
        c.child_text(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| permanent(format!("{from} gave Credentials without {name}")))
    };
    Ok(Expiring {
        credentials: AwsCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("SessionToken")?)),
        },
        expiration: Some(parse_expiration(&field("Expiration")?, from)?),
    })
}

/// Where STS is: `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else the regional one.
fn sts_endpoint_of(env: &ChainEnvironment) -> String {
    match env
        .get("AWS_ENDPOINT_URL_STS")
        .or_else(|| env.get("AWS_ENDPOINT_URL"))
    {
        Some(e) => e.to_string(),
        None => sts_endpoint(
            env.get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION")),
        ),
    }
}

/// A profile's role: STS `AssumeRole`, a GET signed (SigV4, service `sts`) with the source
/// profile's keys, which are asked again at every refresh (they may be temporary too).
pub struct AssumeRole {
    role: AssumeRoleProfile,
    source: Arc<dyn CredentialSource>,
    endpoint: String,
    region: String,
    session_name: String,
    http: reqwest::Client,
}

impl Fetch for AssumeRole {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>> {
        Box::pin(async move {
            let keys = self.source.credentials().await?;
            let from = format!("STS AssumeRole at {}", self.endpoint);
            let mut query: Vec<(&str, String)> = vec![
                ("Action", "AssumeRole".into()),
                ("Version", "2011-06-15".into()),
                ("RoleArn", self.role.role_arn.clone()),
                ("RoleSessionName", self.session_name.clone()),
            ];
            if let Some(id) = &self.role.external_id {
                query.push(("ExternalId", id.clone()));
            }
            if let Some(d) = self.role.duration_seconds {
                query.push(("DurationSeconds", d.to_string()));
            }
            let mut request = self
                .http
                .get(&self.endpoint)
                .query(&query)
                .build()
                .map_err(|e| permanent(format!("{from}: {}", e.without_url())))?;
            let signing = reqsign::AwsCredential {
                access_key_id: keys.access_key_id.clone(),
                secret_access_key: keys.secret_access_key.expose().to_string(),
                session_token: keys.session_token.as_ref().map(|t| t.expose().to_string()),
                expires_in: None,
            };
            // The signer's errors name what was malformed, never the keys.
            reqsign::AwsV4Signer::new("sts", &self.region)
                .sign(&mut request, &signing)
                .map_err(|e| permanent(format!("cannot sign the request to {from}: {e}")))?;
            let resp = self.http.execute(request).await;
            let body = success_body(
                resp,
                &from,
                &format!(
                    "check that the keys of {}'s source_profile may assume {} (the role's trust policy)",
                    self.role.origin, self.role.role_arn
                ),
            )
            .await?;
            sts_credentials(&body, "AssumeRoleResult", &from)
        })
    }

    fn describe(&self) -> String {
        format!(
            "role {} of {} (AssumeRole at {}, with {})",
            self.role.role_arn,
            self.role.origin,
            self.endpoint,
            self.source.principal()
        )
    }

    fn principal(&self) -> String {
        format!("role {} ({})", self.role.role_arn, self.role.origin)
    }
}

/// The source a shared profile stands for: its keys, its process or its role, the last two
/// kept fresh by `Refreshing`.
fn profile_source(
    profile: ProfileCredentials,
    env: &ChainEnvironment,
) -> Arc<dyn CredentialSource> {
    match profile {
        ProfileCredentials::Keys(keys) => keys,
        ProfileCredentials::Process { command, origin } => {
            Arc::new(Refreshing::new(CredentialProcess {
                command,
                origin,
                env: env.vars().clone(),
            }))
        }
        ProfileCredentials::Role { role, source } => Arc::new(Refreshing::new(AssumeRole {
            session_name: role
                .session_name
                .clone()
                .unwrap_or_else(|| format!("ossmount-{}", time::unix_now())),
            role,
            source: profile_source(*source, env),
            endpoint: sts_endpoint_of(env),
            region: env
                .get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION"))
                .unwrap_or(super::DEFAULT_REGION)
                .to_string(),
            http: http(Duration::from_secs(5)),
        })),
    }
}

/// STS's regional endpoint (the SDKs' default since 2022), the global one without a region.
fn sts_endpoint(region: Option<&str>) -> String {
    match region {
        Some(r) if r.starts_with("cn-") => format!("https://sts.{r}.amazonaws.com.cn"),
        Some(r) => format!("https://sts.{r}.amazonaws.com"),
        None => "https://sts.amazonaws.com".into(),
    }
}

impl Fetch for WebIdentity {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>> {
        Box::pin(async move {
            let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
                permanent(format!(
                    "cannot read the web identity token file {} (AWS_WEB_IDENTITY_TOKEN_FILE): {e}",
                    self.token_file.display()
                ))
            })?;
            let token = token.trim();
            if token.is_empty() {
                return Err(permanent(format!(
                    "the web identity token file {} (AWS_WEB_IDENTITY_TOKEN_FILE) is empty",
                    self.token_file.display()
                )));
            }
            let from = format!("STS AssumeRoleWithWebIdentity at {}", self.endpoint);
            let resp = self
                .http
                .post(&self.endpoint)
                .form(&[
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", self.role_arn.as_str()),
                    ("RoleSessionName", self.session_name.as_str()),
                    ("WebIdentityToken", token),
                ])
                .send()
                .await;
            let body = success_body(
                resp,
                &from,
                "check that the role in AWS_ROLE_ARN trusts the token's issuer and that the token file is current",
            )
            .await?;
            sts_credentials(&body, "AssumeRoleWithWebIdentityResult", &from)
        })
    }

    fn describe(&self) -> String {
        format!(
            "web identity (role {} through STS at {})",
            self.role_arn, self.endpoint
        )
    }

    fn principal(&self) -> String {
        format!("role {} (web identity)", self.role_arn)
    }
}

/// Container credentials: a GET of the ECS or EKS Pod Identity agent's endpoint, with the
/// authorization token (its file re-read every time: the agent rotates it).
pub struct Container {
    uri: String,
    /// What to call it in messages: the variable that named it, not the full URI.
    origin: &'static str,
    token_file: Option<PathBuf>,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl Container {
    fn from_env(env: &ChainEnvironment) -> Option<Result<Container, StoreError>> {
        let (uri, origin) =
            if let Some(relative) = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
                let base = env
                    .get("OSSMOUNT_CONTAINER_CREDENTIALS_ENDPOINT")
                    .unwrap_or(ECS_CONTAINER)
                    .trim_end_matches('/');
                let path = relative.trim_start_matches('/');
                (
                    format!("{base}/{path}"),
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                )
            } else if let Some(full) = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
                if let Err(e) = allowed_full_uri(full) {
                    return Some(Err(e));
                }
                (full.to_string(), "AWS_CONTAINER_CREDENTIALS_FULL_URI")
            } else {
                return None;
            };
        Some(Ok(Container {
            uri,
            origin,
            token_file: env
                .get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                .map(PathBuf::from),
            token: env
                .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                .map(Secret::new),
            http: http(Duration::from_secs(5)),
        }))
    }

    /// The Authorization header's value now: the file's content, else the variable's.
    fn authorization(&self) -> Result<Option<String>, StoreError> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        permanent(format!(
                            "cannot read the container authorization token file {} (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => self.token.as_ref().map(|t| t.expose().trim().to_string()),
        };
        match token {
            // A line break would end the header and start another: the SDKs refuse it too.
            Some(t) if t.contains(['\r', '\n']) => Err(permanent(
                "the container authorization token holds a line break; it must be one line",
            )),
            other => Ok(other),
        }
    }
}

/// A full URI gets the authorization token, so plain HTTP only to this machine or the ECS
/// and EKS agents' link-local addresses, as the SDKs allow; anything else must be HTTPS.
fn allowed_full_uri(uri: &str) -> Result<(), StoreError> {
    let bad = |why: &str| {
        permanent(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {why}; it must be https://, or http:// to a loopback address, 169.254.170.2, 169.254.170.23 or fd00:ec2::23"
        ))
    };
    let url = reqwest::Url::parse(uri).map_err(|_| bad("is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = url.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback_or_agent = host == "localhost"
                || host.parse::<IpAddr>().is_ok_and(|ip| {
                    ip.is_loopback()
                        || ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"]
                            .iter()
                            .any(|agent| agent.parse::<IpAddr>() == Ok(ip))
                });
            if loopback_or_agent {
                Ok(())
            } else {
                Err(bad("is plain http to another host"))
            }
        }
        _ => Err(bad("has neither http nor https")),
    }
}

impl Fetch for Container {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>> {
        Box::pin(async move {
            let mut rb = self.http.get(&self.uri);
            if let Some(token) = self.authorization()? {
                rb = rb.header("authorization", token);
            }
            let from = format!("the container credentials endpoint ({})", self.origin);
            let body = success_body(
                rb.send().await,
                &from,
                "check the task role (ECS) or the pod identity association (EKS) and the authorization token",
            )
            .await?;
            CredentialsJson::parse(&body, &from)
        })
    }

    fn describe(&self) -> String {
        format!("container credentials ({})", self.origin)
    }
}

/// The EC2 instance's role through IMDSv2: a session token first (PUT), then the role's name
/// and its credentials with that token. Every fetch asks for the role name again, as the
/// SDKs do: a role replaced on the instance is picked up at the next refresh.
pub struct Imds {
    base: String,
    http: reqwest::Client,
}

impl Imds {
    fn from_env(env: &ChainEnvironment) -> Imds {
        Imds {
            base: env
                .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or(IMDS)
                .trim_end_matches('/')
                .to_string(),
            http: http(Duration::from_secs(2)),
        }
    }

    async fn get(&self, path: &str, token: &str, what: &str) -> Result<String, StoreError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-aws-ec2-metadata-token", token)
            .send()
            .await;
        success_body(
            resp,
            &format!("the instance metadata service ({what})"),
            "check the instance profile attached to this instance",
        )
        .await
    }
}

impl Fetch for Imds {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>> {
        Box::pin(async move {
            let resp = self
                .http
                .put(format!("{}/latest/api/token", self.base))
                .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                .send()
                .await;
            let token = success_body(
                resp,
                "the instance metadata service (IMDSv2 token)",
                "set AWS_EC2_METADATA_DISABLED=true when not on EC2",
            )
            .await?;
            let token = token.trim();
            let roles = self
                .get(
                    "/latest/meta-data/iam/security-credentials/",
                    token,
                    "role name",
                )
                .await?;
            let role = roles.lines().next().unwrap_or("").trim();
            if role.is_empty() {
                return Err(permanent(
                    "the instance metadata service lists no role: this instance has no instance profile",
                ));
            }
            let body = self
                .get(
                    &format!("/latest/meta-data/iam/security-credentials/{role}"),
                    token,
                    "role credentials",
                )
                .await?;
            CredentialsJson::parse(
                &body,
                &format!("the instance metadata service (role {role})"),
            )
        })
    }

    fn describe(&self) -> String {
        format!("the EC2 instance role (IMDSv2 at {})", self.base)
    }
}

/// Resolves the chain in `env`: the first configured source, asked once now so that a broken
/// one fails here and not at the first read. Logs which source won (never a secret).
pub async fn resolve_chain(
    env: &ChainEnvironment,
) -> Result<Arc<dyn CredentialSource>, StoreError> {
    let source = resolve(env).await?;
    tracing::info!("using AWS credentials: {}", source.principal());
    Ok(source)
}

async fn resolve(env: &ChainEnvironment) -> Result<Arc<dyn CredentialSource>, StoreError> {
    if let Some(keys) = environment_keys(env)? {
        return Ok(keys);
    }
    if let Some(web) = WebIdentity::from_env(env) {
        let p = Refreshing::new(web?);
        p.credentials().await?;
        return Ok(Arc::new(p));
    }
    if let Some(container) = Container::from_env(env) {
        let p = Refreshing::new(container?);
        p.credentials().await?;
        return Ok(Arc::new(p));
    }
    if let Some(profile) = shared_profile(env)? {
        let source = profile_source(profile, env);
        // A process or a role that fails is said now, not at the first request.
        source.credentials().await?;
        return Ok(source);
    }
    let imds_why = if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        "disabled by AWS_EC2_METADATA_DISABLED".to_string()
    } else {
        // One probe without retries: off EC2 this fails within the connect timeout.
        let imds = Imds::from_env(env);
        match imds.fetch().await {
            Ok(first) => return Ok(Arc::new(Refreshing::seeded(imds, first))),
            Err(e) => {
                tracing::debug!("no EC2 instance role: {e}");
                e.message
            }
        }
    };
    Err(permanent(format!(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials or ~/.aws/config (AWS_PROFILE), or a web identity role (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), or pass --anonymous for a public bucket (the EC2 instance role: {imds_why})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_uri_gets_the_token_over_https_or_to_this_machine_and_the_agents_only() {
        for ok in [
            "https://credentials.example.com/v1/creds",
            "http://127.0.0.1:51679/creds",
            "http://localhost/creds",
            "http://[::1]:8080/creds",
            "http://169.254.170.2/v2/credentials/abc",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
        ] {
            assert!(allowed_full_uri(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://credentials.example.com/v1/creds",
            "http://10.0.0.7/creds",
            "http://169.254.169.254/latest/meta-data/",
            "ftp://127.0.0.1/creds",
            "not a url",
        ] {
            let err = allowed_full_uri(refused).unwrap_err().message;
            assert!(err.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"), "{err}");
        }
    }

    #[test]
    fn sts_is_regional_when_a_region_is_known() {
        assert_eq!(
            sts_endpoint(Some("eu-west-1")),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            sts_endpoint(Some("cn-north-1")),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(sts_endpoint(None), "https://sts.amazonaws.com");
    }

    #[test]
    fn answers_without_keys_or_with_a_failure_code_are_errors_that_hold_no_secret() {
        let failed = r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"ASIAX","SecretAccessKey":"do-not-print","Token":"tok"}"#;
        let err = CredentialsJson::parse(failed, "IMDS").unwrap_err().message;
        assert!(err.contains("AssumeRoleUnauthorizedAccess"), "{err}");
        assert!(!err.contains("do-not-print"), "{err}");
        let keyless = r#"{"AccessKeyId":"ASIAX","Token":"tok"}"#;
        let err = CredentialsJson::parse(keyless, "IMDS").unwrap_err().message;
        assert!(err.contains("SecretAccessKey"), "{err}");
        let expiring = r#"{"AccessKeyId":"ASIAX","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-02T03:04:05Z"}"#;
        let e = CredentialsJson::parse(expiring, "IMDS").unwrap();
        assert_eq!(
            e.expiration.map(time::iso8601_extended).as_deref(),
            Some("2030-01-02T03:04:05.000Z")
        );
    }
}
