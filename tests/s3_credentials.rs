//! The AWS credential chain (`store::s3::chain`) against stand-ins on 127.0.0.1: a small
//! HTTP server per test playing STS (`AssumeRoleWithWebIdentity`, checking the token it got),
//! a container credentials endpoint (checking the Authorization header) and IMDSv2 (refusing
//! every GET without the session token from its PUT). Each source on its own; the chain's
//! order (an earlier source wins, and a later one is not even asked); a rotated token file
//! read at the next refresh; credentials refreshed ahead of expiry without making a caller
//! wait, and after expiry with one; an unreachable IMDS failing within its timeouts; and end
//! to end, `ossmount ls s3://...` through the binary with web identity against s3s-fs (which
//! checks the SigV4 signature, `x-amz-security-token` included). A profile's
//! `credential_process` is a real script: run, run again once its keys near expiry, and its
//! failures said without quoting what it printed. Every environment is built
//! by the test: nothing reaches a real AWS address. Times come from real clocks, so the
//! short-lived credentials live a few seconds.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{bin, within, CommandWithin};
use ossmount::store::s3::credentials::{ChainEnvironment, CredentialSource};
use ossmount::store::s3::resolve_chain;
use ossmount::store::time::iso8601_extended;

/// One request as a stand-in saw it.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    /// Path and query.
    uri: String,
    headers: hyper::HeaderMap,
    body: String,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A form field of the body (STS's POST).
    fn form(&self, name: &str) -> Option<String> {
        self.body.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

type Handler = Arc<dyn Fn(&Hit) -> (u16, String) + Send + Sync>;

/// An HTTP/1.1 stand-in on 127.0.0.1 answering with `handler`, after `delay` when one is set.
struct StandIn {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    delay: Arc<Mutex<Duration>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl StandIn {
    async fn start(handler: impl Fn(&Hit) -> (u16, String) + Send + Sync + 'static) -> StandIn {
        let handler: Handler = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (log, wait) = (hits.clone(), delay.clone());
        let accept_loop = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (handler, log, wait) = (handler.clone(), log.clone(), wait.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, log, wait) = (handler.clone(), log.clone(), wait.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let hit = Hit {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let (status, answer) = handler(&hit);
                            log.lock().unwrap().push(hit);
                            let delay = *wait.lock().unwrap();
                            tokio::time::sleep(delay).await;
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                    .expect("a response"),
                            )
                        }
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(socket);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        StandIn {
            url,
            hits,
            delay,
            accept_loop,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

fn expiring_in(lifetime: Duration) -> String {
    iso8601_extended(SystemTime::now() + lifetime)
}

/// STS's answer to AssumeRoleWithWebIdentity.
fn sts_answer(id: &str, secret: &str, token: &str, lifetime: Duration) -> String {
    format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ml:trainer</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{}</Expiration>
      <AccessKeyId>{id}</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>stand-in</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        expiring_in(lifetime)
    )
}

const STS_REFUSAL: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error><RequestId>stand-in</RequestId></ErrorResponse>"#;

/// A stand-in STS that answers a well-formed AssumeRoleWithWebIdentity for `role` with keys
/// derived from the token it got (`ASIA-<token>`), valid for `lifetime`; any other request is
/// refused as STS refuses it.
async fn sts(role: &'static str, lifetime: Duration) -> StandIn {
    StandIn::start(move |hit| {
        let token = hit.form("WebIdentityToken").unwrap_or_default();
        let good = hit.method == "POST"
            && hit.form("Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && hit.form("Version").as_deref() == Some("2011-06-15")
            && hit.form("RoleArn").as_deref() == Some(role)
            && hit.form("RoleSessionName").is_some()
            && token.starts_with("jwt-");
        if good {
            let answer = sts_answer(
                &format!("ASIA-{token}"),
                &format!("secret-of-{token}"),
                &format!("session-of-{token}"),
                lifetime,
            );
            (200, answer)
        } else {
            (400, STS_REFUSAL.to_string())
        }
    })
    .await
}

/// The container and IMDS answer.
fn json_answer(id: &str, lifetime: Duration) -> String {
    format!(
        r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{id}","SecretAccessKey":"secret-of-{id}","Token":"session-of-{id}","Expiration":"{}","RoleArn":"arn:aws:iam::123456789012:role/pod"}}"#,
        expiring_in(lifetime)
    )
}

/// A stand-in container endpoint serving `/v1/credentials` to callers whose Authorization is
/// the current value of `token`; it names its keys after that token.
async fn container(token: Arc<Mutex<String>>, lifetime: Duration) -> StandIn {
    StandIn::start(move |hit| {
        let expected = token.lock().unwrap().clone();
        if hit.method != "GET" || hit.uri != "/v1/credentials" {
            return (404, "not found".into());
        }
        if hit.header("authorization") != Some(expected.as_str()) {
            return (401, r#"{"Message":"invalid authorization token"}"#.into());
        }
        (
            200,
            json_answer(&format!("ASIA-container-{expected}"), lifetime),
        )
    })
    .await
}

const IMDS_TOKEN: &str = "imds-session-token-1";

/// A stand-in IMDSv2: a token for a PUT with a TTL header; every GET without that token is
/// refused (401), as on an instance that requires IMDSv2.
async fn imds(lifetime: Duration) -> StandIn {
    StandIn::start(move |hit| match (hit.method.as_str(), hit.uri.as_str()) {
        ("PUT", "/latest/api/token") => {
            if hit.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                (200, IMDS_TOKEN.into())
            } else {
                (400, "missing TTL".into())
            }
        }
        ("GET", _) if hit.header("x-aws-ec2-metadata-token") != Some(IMDS_TOKEN) => {
            (401, "".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "instance-role\n".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/instance-role") => {
            (200, json_answer("ASIA-imds", lifetime))
        }
        _ => (404, "".into()),
    })
    .await
}

/// An environment of exactly these variables (and IMDS off unless a test points it at a
/// stand-in), so nothing of the test runner's and no real AWS address is used.
fn env(pairs: &[(&str, &str)]) -> ChainEnvironment {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("HOME".into(), "/nonexistent-home".into());
    vars.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
    for (k, v) in pairs {
        vars.insert(k.to_string(), v.to_string());
    }
    ChainEnvironment::from_vars(vars)
}

const HOUR: Duration = Duration::from_secs(3600);
const ROLE: &str = "arn:aws:iam::123456789012:role/trainer";

async fn key_id(source: &dyn CredentialSource) -> String {
    within(Duration::from_secs(20), "credentials", source.credentials())
        .await
        .unwrap()
        .access_key_id
}

async fn resolve_err(env: &ChainEnvironment) -> String {
    match within(Duration::from_secs(20), "resolve_chain", resolve_chain(env)).await {
        Ok(source) => panic!("resolved to {}", source.principal()),
        Err(e) => e.message,
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn web_identity_assumes_the_role_with_the_token_from_the_file() {
    let sts = sts(ROLE, HOUR).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, "jwt-one\n");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_SESSION_NAME", "trainer-session"),
        ("AWS_ENDPOINT_URL_STS", &sts.url),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    let c = source.credentials().await.unwrap();
    assert_eq!(c.access_key_id, "ASIA-jwt-one");
    assert_eq!(c.secret_access_key.expose(), "secret-of-jwt-one");
    assert_eq!(c.session_token.unwrap().expose(), "session-of-jwt-one");
    let hits = sts.hits();
    assert_eq!(hits.len(), 1, "one AssumeRoleWithWebIdentity: {hits:?}");
    assert_eq!(hits[0].form("RoleSessionName").unwrap(), "trainer-session");
    assert!(
        !hits[0].uri.contains("jwt-one") && hits[0].header("authorization").is_none(),
        "the token travels in the form body, and the call is unsigned: {:?}",
        hits[0]
    );
    assert!(source.principal().contains(ROLE), "{}", source.principal());
    let shown = format!("{source:?} {}", source.principal());
    assert!(
        !shown.contains("secret-of") && !shown.contains("session-of"),
        "{shown}"
    );

    // A token STS refuses: the error names STS, its code and what to check, never the token.
    write(&token_file, "not-a-jwt-but-secret");
    let err = resolve_err(&e).await;
    assert!(
        err.contains("STS AssumeRoleWithWebIdentity")
            && err.contains("InvalidIdentityToken")
            && err.contains("AWS_ROLE_ARN"),
        "{err}"
    );
    assert!(!err.contains("not-a-jwt-but-secret"), "{err}");

    // Half a configuration is an error naming the missing half.
    let err = resolve_err(&env(&[("AWS_ROLE_ARN", ROLE)])).await;
    assert!(err.contains("AWS_WEB_IDENTITY_TOKEN_FILE is not"), "{err}");
}

#[tokio::test]
async fn a_rotated_token_file_is_read_at_the_next_refresh() {
    // Keys for 3 s: the margin is 1 s, so the second call below finds them expired.
    let sts = sts(ROLE, Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, "jwt-first");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", &sts.url),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    assert_eq!(key_id(&*source).await, "ASIA-jwt-first");
    // EKS writes the projected token anew; the old one would be refused by now.
    write(&token_file, "jwt-second");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(key_id(&*source).await, "ASIA-jwt-second");
    let sent: Vec<String> = sts
        .hits()
        .iter()
        .map(|h| h.form("WebIdentityToken").unwrap())
        .collect();
    assert_eq!(sent, ["jwt-first", "jwt-second"]);
}

#[tokio::test]
async fn expiring_credentials_are_refreshed_ahead_without_making_callers_wait() {
    // Keys for 6 s: from 4 s on (a third of the lifetime left) they are due for refresh.
    let sts = sts(ROLE, Duration::from_secs(6)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, "jwt-a");
    let e = env(&[
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", &sts.url),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    assert_eq!(key_id(&*source).await, "ASIA-jwt-a");
    // Before the margin: no refresh.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(key_id(&*source).await, "ASIA-jwt-a");
    assert_eq!(sts.hits().len(), 1);
    // In the margin, with STS slow: callers keep the valid keys and do not wait for STS.
    write(&token_file, "jwt-b");
    sts.set_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for _ in 0..5 {
        let asked = Instant::now();
        assert_eq!(key_id(&*source).await, "ASIA-jwt-a");
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "a caller waited {:?} for a refresh while its keys were valid",
            asked.elapsed()
        );
    }
    // The one background refresh lands before the old keys expire.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let id = key_id(&*source).await;
        if id == "ASIA-jwt-b" {
            break;
        }
        assert!(Instant::now() < deadline, "no refresh landed; still {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sts.hits().len(), 2, "one refresh for all those callers");
}

#[tokio::test]
async fn container_credentials_send_the_authorization_token_from_its_file() {
    let current = Arc::new(Mutex::new("pod-token-1".to_string()));
    let endpoint = container(current.clone(), Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    write(&token_file, "pod-token-1\n");
    // The relative URI, against the endpoint override (169.254.170.2 otherwise).
    let e = env(&[
        ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v1/credentials"),
        ("OSSMOUNT_CONTAINER_CREDENTIALS_ENDPOINT", &endpoint.url),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    let c = source.credentials().await.unwrap();
    assert_eq!(c.access_key_id, "ASIA-container-pod-token-1");
    assert_eq!(
        c.session_token.unwrap().expose(),
        "session-of-ASIA-container-pod-token-1"
    );
    // The agent rotates the token; the file is read again at the refresh.
    *current.lock().unwrap() = "pod-token-2".into();
    write(&token_file, "pod-token-2\n");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(key_id(&*source).await, "ASIA-container-pod-token-2");
    let auth: Vec<String> = endpoint
        .hits()
        .iter()
        .map(|h| h.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(auth, ["pod-token-1", "pod-token-2"]);

    // The full URI with the token in the environment (ECS with a sidecar agent).
    let full = format!("{}/v1/credentials", endpoint.url);
    let e = env(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-token-2"),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    assert_eq!(key_id(&*source).await, "ASIA-container-pod-token-2");

    // A wrong token: the endpoint's refusal, named, without the token.
    let e = env(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "stale-pod-token"),
    ]);
    let err = resolve_err(&e).await;
    assert!(
        err.contains("container credentials endpoint") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains("stale-pod-token"), "{err}");

    // The token never goes over plain HTTP to another host: refused before any request.
    let before = endpoint.hits().len();
    let e = env(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://credentials.example.com/v1/credentials",
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-token-2"),
    ]);
    let err = resolve_err(&e).await;
    assert!(err.contains("must be https://"), "{err}");
    assert_eq!(endpoint.hits().len(), before);
}

#[tokio::test]
async fn imds_v2_asks_for_a_session_token_first() {
    let imds = imds(HOUR).await;
    let e = env(&[
        ("AWS_EC2_METADATA_DISABLED", ""),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
    ]);
    let source = resolve_chain(&e).await.unwrap();
    let c = source.credentials().await.unwrap();
    assert_eq!(c.access_key_id, "ASIA-imds");
    assert_eq!(c.session_token.unwrap().expose(), "session-of-ASIA-imds");
    let calls: Vec<(String, String)> = imds
        .hits()
        .iter()
        .map(|h| (h.method.clone(), h.uri.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("PUT".to_string(), "/latest/api/token".to_string()),
            (
                "GET".into(),
                "/latest/meta-data/iam/security-credentials/".into()
            ),
            (
                "GET".into(),
                "/latest/meta-data/iam/security-credentials/instance-role".into()
            ),
        ]
    );

    // AWS_EC2_METADATA_DISABLED: not asked at all.
    let before = imds.hits().len();
    let e = env(&[
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
    ]);
    let err = resolve_err(&e).await;
    assert!(
        err.contains("no AWS credentials") && err.contains("AWS_EC2_METADATA_DISABLED"),
        "{err}"
    );
    assert_eq!(imds.hits().len(), before);
}

#[tokio::test]
async fn an_imds_that_never_answers_fails_the_chain_within_seconds() {
    // Accepts connections (the kernel does, into the backlog) and never answers: the worst
    // case for a laptop whose network swallows 169.254.169.254.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = silent.local_addr().unwrap();
    let e = env(&[
        ("AWS_EC2_METADATA_DISABLED", ""),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &format!("http://{addr}"),
        ),
    ]);
    let started = Instant::now();
    let err = resolve_err(&e).await;
    let took = started.elapsed();
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(err.contains("instance metadata service"), "{err}");
    assert!(took < Duration::from_secs(4), "the chain took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn shared_config_file_profiles_give_static_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let credentials = dir.path().join("credentials");
    write(
        &config,
        "[default]\nregion = eu-west-1\n\n[profile ci]\naws_access_key_id = AKIACONFIG\naws_secret_access_key = config-secret\n\n[profile both]\naws_access_key_id = AKIABOTHCONFIG\naws_secret_access_key = both-config-secret\n",
    );
    write(
        &credentials,
        "[both]\naws_access_key_id = AKIABOTHCREDS\naws_secret_access_key = both-creds-secret\n",
    );
    let files = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
    ];
    let with = |profile: &'static str| {
        let mut pairs = files.to_vec();
        pairs.push(("AWS_PROFILE", profile));
        env(&pairs)
    };
    let ci = resolve_chain(&with("ci")).await.unwrap();
    let c = ci.credentials().await.unwrap();
    assert_eq!(c.access_key_id, "AKIACONFIG");
    assert_eq!(c.secret_access_key.expose(), "config-secret");
    assert!(ci.principal().contains("profile ci"), "{}", ci.principal());
    // The credentials file wins over the config file for the same profile.
    let both = resolve_chain(&with("both")).await.unwrap();
    assert_eq!(key_id(&*both).await, "AKIABOTHCREDS");
    // A `[default]` with only a region is no credentials: the chain goes on (to IMDS, off here).
    let err = resolve_err(&env(&files)).await;
    assert!(err.contains("no AWS credentials"), "{err}");
    // `~/.aws/config` under HOME without the variables.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::copy(&config, home.path().join(".aws/config")).unwrap();
    let e = env(&[
        ("HOME", home.path().to_str().unwrap()),
        ("AWS_PROFILE", "ci"),
    ]);
    assert_eq!(
        key_id(&*resolve_chain(&e).await.unwrap()).await,
        "AKIACONFIG"
    );
    let err = resolve_err(&with("missing")).await;
    assert!(err.contains("\"missing\""), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// The earlier source wins, and the later ones are not even asked.
#[tokio::test]
async fn the_chain_takes_the_first_configured_source_in_the_sdks_order() {
    let sts = sts(ROLE, HOUR).await;
    let current = Arc::new(Mutex::new("pod-token".to_string()));
    let container = container(current, HOUR).await;
    let imds = imds(HOUR).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, "jwt-order");
    let credentials = dir.path().join("credentials");
    write(
        &credentials,
        "[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = file-secret\n",
    );
    let full = format!("{}/v1/credentials", container.url);
    let sources: Vec<(&str, String)> = vec![
        ("AWS_ACCESS_KEY_ID", "AKIAENV".into()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret".into()),
        ("AWS_ROLE_ARN", ROLE.into()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.to_str().unwrap().into(),
        ),
        ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-token".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.to_str().unwrap().into(),
        ),
        ("AWS_EC2_METADATA_DISABLED", String::new()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.clone()),
    ];
    // Each round drops the first source still present; the next one must win.
    let rounds: [(&[&str], &str); 5] = [
        (&[], "AKIAENV"),
        (
            &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            "ASIA-jwt-order",
        ),
        (
            &["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"],
            "ASIA-container-pod-token",
        ),
        (&["AWS_CONTAINER_CREDENTIALS_FULL_URI"], "AKIAFILE"),
        (&["AWS_SHARED_CREDENTIALS_FILE"], "ASIA-imds"),
    ];
    let mut dropped: Vec<&str> = Vec::new();
    let mut asked = Vec::new();
    for (drop_now, winner) in rounds {
        dropped.extend_from_slice(drop_now);
        let pairs: Vec<(&str, &str)> = sources
            .iter()
            .filter(|(k, _)| !dropped.contains(k))
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let source = resolve_chain(&env(&pairs)).await.unwrap();
        assert_eq!(key_id(&*source).await, winner, "without {dropped:?}");
        asked.push((sts.hits().len(), container.hits().len(), imds.hits().len()));
    }
    // Cumulative requests (STS, container, IMDS) after each round: only the winner was asked.
    assert_eq!(
        asked,
        [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0), (1, 1, 3)]
    );
}

// --- end to end: the binary, web identity, s3s-fs ---

const AK: &str = "s3-creds-test-ak";
const SK: &str = "s3-creds-secret-DO-NOT-PRINT-77f0";
const BUCKET: &str = "creds-bucket";

/// s3s-fs over a temp directory with one key pair, recording the security token header of
/// every request it gets.
struct S3Server {
    endpoint: String,
    dir: tempfile::TempDir,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl S3Server {
    async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(dir.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let log = tokens.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                let log = log.clone();
                let logged = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let token = req
                            .headers()
                            .get("x-amz-security-token")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        log.lock().unwrap().push(token);
                        hyper::service::Service::call(&service, req)
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(socket);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, logged)
                        .await;
                });
            }
        });
        S3Server {
            endpoint,
            dir,
            tokens,
            accept_loop,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// `ossmount ARGS` in exactly `env` (nothing inherited), off the runtime, bounded.
async fn run(args: &[&str], env: Vec<(String, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = format!("ossmount {}", args.join(" "));
    within(
        Duration::from_secs(120),
        &what.clone(),
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(&args)
                .env_clear()
                .envs(env)
                .output_within(Duration::from_secs(100), &what)
                .unwrap()
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_through_the_binary_with_web_identity_against_s3s() {
    let s3 = S3Server::start().await;
    for key in ["data/a.bin", "data/b.bin", "readme.txt"] {
        let path = s3.dir.path().join(BUCKET).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, key.as_bytes()).unwrap();
    }
    // STS hands out the one pair s3s knows, with a session token.
    const SESSION: &str = "session-token-DO-NOT-PRINT-9a2b";
    let sts = StandIn::start(|hit| {
        if hit.form("WebIdentityToken").as_deref() == Some("jwt-e2e")
            && hit.form("RoleArn").as_deref() == Some(ROLE)
        {
            (200, sts_answer(AK, SK, SESSION, HOUR))
        } else {
            (400, STS_REFUSAL.to_string())
        }
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    write(&token_file, "jwt-e2e\n");
    let env = vec![
        ("HOME", home.path().to_str().unwrap().to_string()),
        ("AWS_ENDPOINT_URL_S3", s3.endpoint.clone()),
        ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ROLE_ARN", ROLE.into()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.to_str().unwrap().into(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("RUST_LOG", "info".into()),
    ];
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into(), v)).collect();
    let started = Instant::now();
    let out = run(&["ls", "-r", &format!("s3://{BUCKET}/")], env.clone()).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "ls failed: {stdout}{stderr}");
    assert_eq!(stdout, "data/a.bin\ndata/b.bin\nreadme.txt\n");
    eprintln!("ls with web identity took {:?}", started.elapsed());
    assert_eq!(sts.hits().len(), 1);
    let tokens = s3.tokens.lock().unwrap().clone();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t.as_deref() == Some(SESSION)),
        "every S3 request carries the session token STS gave: {tokens:?}"
    );
    for secret in [SK, SESSION, "jwt-e2e"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{stderr}"
        );
    }

    // STS refusing the token: the command fails naming STS and its code, and asks no S3.
    write(&token_file, "jwt-revoked\n");
    let asked = s3.tokens.lock().unwrap().len();
    let out = run(&["ls", &format!("s3://{BUCKET}/")], env).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("AssumeRoleWithWebIdentity") && stderr.contains("InvalidIdentityToken"),
        "{stderr}"
    );
    assert!(!stderr.contains("jwt-revoked"), "{stderr}");
    assert_eq!(s3.tokens.lock().unwrap().len(), asked);
}

/// A profile's `credential_process`: the script's keys sign, it runs again once they near
/// their Expiration (here a few seconds ahead, within the refresh margin) and its new keys
/// take over; a script that fails, or prints something else, is an error that names the
/// profile and quotes nothing it printed.
#[tokio::test]
async fn a_credential_process_profile_is_run_and_run_again_before_its_keys_expire() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = dir.path().join("creds.sh");
    // Each run prints keys numbered by how many runs came before, expiring in 4 s.
    write(
        &script,
        &format!(
            "#!/bin/sh\necho run >> {runs}\nn=$(wc -l < {runs})\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"AKIAPROC%s\", \"SecretAccessKey\": \"proc-secret\", \"SessionToken\": \"proc-token\", \"Expiration\": \"%s\"}}' \"$n\" \"$1\"\n",
            runs = runs.display()
        ),
    );
    let config = dir.path().join("config");
    let expiring = expiring_in(Duration::from_secs(4));
    write(
        &config,
        &format!(
            "[profile proc]\ncredential_process = sh {} {expiring}\n\n[profile broken]\ncredential_process = sh -c 'echo leaked-secret-output; echo stderr-secret >&2; exit 3'\n\n[profile garbage]\ncredential_process = echo not-json-secret\n\n[profile wrongtype]\ncredential_process = echo '{{\"Version\": \"type-secret\", \"AccessKeyId\": \"a\", \"SecretAccessKey\": \"b\"}}'\n",
            script.display()
        ),
    );
    let with = |profile: &'static str| {
        env(&[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
            ("AWS_PROFILE", profile),
        ])
    };
    let source = resolve_chain(&with("proc")).await.unwrap();
    let first = source.credentials().await.unwrap();
    assert_eq!(first.access_key_id, "AKIAPROC1");
    assert_eq!(first.secret_access_key.expose(), "proc-secret");
    assert_eq!(first.session_token.unwrap().expose(), "proc-token");
    assert!(
        source.principal().contains("profile proc"),
        "{}",
        source.principal()
    );
    // Within the margin (a third of 4 s is left at most): a refresh runs the script again.
    let renewed = within(
        Duration::from_secs(20),
        "a second run of the script",
        async {
            loop {
                let k = source.credentials().await.unwrap();
                if k.access_key_id != "AKIAPROC1" {
                    return k;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(
        renewed.access_key_id.starts_with("AKIAPROC"),
        "{}",
        renewed.access_key_id
    );
    assert!(std::fs::read_to_string(&runs).unwrap().lines().count() >= 2);

    for (profile, what) in [
        ("broken", "failed"),
        ("garbage", "unexpected output"),
        // serde would quote a value of the wrong type: it is not.
        ("wrongtype", "wrong type"),
    ] {
        let err = resolve_err(&with(profile)).await;
        assert!(
            err.contains(what) && err.contains(&format!("profile {profile}")),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }
}

/// STS's answer to AssumeRole.
fn assume_role_answer(id: &str, secret: &str, token: &str, lifetime: Duration) -> String {
    sts_answer(id, secret, token, lifetime)
        .replace("AssumeRoleWithWebIdentity", "AssumeRole")
        .replace(
            "<SubjectFromWebIdentityToken>system:serviceaccount:ml:trainer</SubjectFromWebIdentityToken>",
            "<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/reader/s</Arn></AssumedRoleUser>",
        )
}

/// A `role_arn` profile, end to end: STS AssumeRole is asked with a GET signed (SigV4,
/// service `sts`) with the keys of its `source_profile` (a static profile here), naming the
/// role, the session name and the external id; the role's keys (the pair s3s knows, with a
/// session token) sign the S3 requests of `ls` through the binary. A loop of
/// source_profiles, and a role without a source, are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_arn_profile_assumes_its_role_with_the_keys_of_its_source_profile() {
    let s3 = S3Server::start().await;
    let path = s3.dir.path().join(BUCKET).join("r.txt");
    std::fs::write(&path, b"role").unwrap();
    const SESSION: &str = "role-session-DO-NOT-PRINT-77";
    const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/reader";
    let sts = StandIn::start(|hit| {
        let query = |name: &str| {
            let (_, q) = hit.uri.split_once('?')?;
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
            })
        };
        let signed_by_source = hit.header("authorization").is_some_and(|a| {
            a.starts_with("AWS4-HMAC-SHA256 Credential=AKIASOURCE/")
                && a.contains("/us-east-1/sts/aws4_request")
                && a.contains("Signature=")
        }) && hit.header("x-amz-date").is_some();
        let good = hit.method == "GET"
            && signed_by_source
            && query("Action").as_deref() == Some("AssumeRole")
            && query("RoleArn").as_deref() == Some(ROLE_ARN)
            && query("RoleSessionName").as_deref() == Some("nightly-job")
            && query("ExternalId").as_deref() == Some("ext-42");
        if good {
            (200, assume_role_answer(AK, SK, SESSION, HOUR))
        } else {
            (
                403,
                STS_REFUSAL.replace("InvalidIdentityToken", "AccessDenied"),
            )
        }
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    write(
        &config,
        &format!(
            "[profile reader]\nrole_arn = {ROLE_ARN}\nsource_profile = base\nrole_session_name = nightly-job\nexternal_id = ext-42\n\n[profile base]\naws_access_key_id = AKIASOURCE\naws_secret_access_key = source-secret-NEVER-PRINTED\n\n[profile loop-a]\nrole_arn = {ROLE_ARN}\nsource_profile = loop-b\n\n[profile loop-b]\nrole_arn = {ROLE_ARN}\nsource_profile = loop-a\n\n[profile sourceless]\nrole_arn = {ROLE_ARN}\n"
        ),
    );
    let env_for = |profile: &str| -> Vec<(String, String)> {
        [
            ("HOME", home.path().to_str().unwrap().to_string()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap().to_string()),
            ("AWS_ENDPOINT_URL_S3", s3.endpoint.clone()),
            ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_PROFILE", profile.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let out = run(&["ls", &format!("s3://{BUCKET}/")], env_for("reader")).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "ls failed: {stdout}{stderr}\n{:?}",
        sts.hits()
    );
    assert_eq!(stdout, "r.txt\n");
    assert_eq!(sts.hits().len(), 1, "one AssumeRole");
    let tokens = s3.tokens.lock().unwrap().clone();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t.as_deref() == Some(SESSION)),
        "every S3 request carries the role's session token: {tokens:?}"
    );
    for secret in [SK, SESSION, "source-secret-NEVER-PRINTED"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{stderr}"
        );
    }

    for (profile, why) in [
        ("loop-a", "more than 4 profiles"),
        ("sourceless", "without source_profile"),
    ] {
        let out = run(&["ls", &format!("s3://{BUCKET}/")], env_for(profile)).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success());
        assert!(stderr.contains(why), "{profile}: {stderr}");
    }
}
