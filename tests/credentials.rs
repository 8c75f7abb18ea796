//! The credential chain of the official SDKs, against stand-ins that are real HTTP servers on
//! 127.0.0.1 (wiremock): an ECS metadata service (IMDSv2 token, role name, credentials that
//! expire after a few seconds), STS AssumeRoleWithOIDC (checks the token file's content), a
//! credentials URI, and the CLI's and ossutil's profile files. The emulator accepts each
//! temporary key only until it expires, so a mount that keeps reading across rotations
//! proves the refresh. No test contacts a real cloud address.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::mount::*;
use common::*;
use ossmount::emulator::TemporaryKeys;
use wiremock::matchers::{body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Mints a new temporary key on every call, valid for `lifetime`, and registers it with the
/// emulator; remembers every secret it handed out.
#[derive(Clone)]
struct Minter {
    keys: TemporaryKeys,
    lifetime: Duration,
    minted: Arc<AtomicU64>,
    secrets: Arc<Mutex<Vec<String>>>,
    prefix: &'static str,
}

impl Minter {
    fn new(keys: TemporaryKeys, lifetime: Duration, prefix: &'static str) -> Minter {
        Minter {
            keys,
            lifetime,
            minted: Arc::default(),
            secrets: Arc::default(),
            prefix,
        }
    }

    fn mint(&self) -> serde_json::Value {
        let n = self.minted.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("{}-{n}", self.prefix);
        let secret = format!("temp-secret-{}-{n}-DO-NOT-PRINT", self.prefix);
        let token = format!("temp-token-{}-{n}-DO-NOT-PRINT", self.prefix);
        let expires = SystemTime::now() + self.lifetime;
        self.keys.issue(&id, &secret, &token, expires);
        self.secrets.lock().unwrap().push(secret.clone());
        self.secrets.lock().unwrap().push(token.clone());
        serde_json::json!({
            "Code": "Success",
            "AccessKeyId": id,
            "AccessKeySecret": secret,
            "SecurityToken": token,
            "Expiration": ossmount::oss::time::iso8601_extended(expires).replace(".000", ""),
            "LastUpdated": "2026-01-01T00:00:00Z",
        })
    }
}

impl Respond for Minter {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(self.mint())
    }
}

struct StsAnswer(Minter);

impl Respond for StsAnswer {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "RequestId": "standin",
            "Credentials": self.0.mint(),
        }))
    }
}

/// The environment of a command that must find its credentials in the chain.
fn chain_env(s: &Server, home: &Path) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = s
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("OSS_ACCESS_KEY") && !k.contains("ECS_METADATA_DISABLED"))
        .collect();
    env.push(("HOME", home.display().to_string()));
    env
}

async fn ecs_standin(minter: Minter) -> MockServer {
    let imds = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .and(header("X-aliyun-ecs-metadata-token-ttl-seconds", "21600"))
        .respond_with(ResponseTemplate::new(200).set_body_string("imds-session-token"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/ram/security-credentials/"))
        .and(header("X-aliyun-ecs-metadata-token", "imds-session-token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("test-role"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/ram/security-credentials/test-role"))
        .and(header("X-aliyun-ecs-metadata-token", "imds-session-token"))
        .respond_with(minter)
        .mount(&imds)
        .await;
    imds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_on_an_ecs_ram_role_keeps_reading_across_rotations() {
    require_fuse();
    let s = Server::start().await;
    for i in 0..40 {
        s.put(
            &format!("f{i:02}.txt"),
            format!("file {i}\n").repeat(100).as_bytes(),
        );
    }
    let minter = Minter::new(s.emu.temporary_keys(), Duration::from_secs(4), "ecs");
    let imds = ecs_standin(minter.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let (mnt, cache) = dirs(&s, "ecs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut env = chain_env(&s, home.path());
    env.push(("OSSMOUNT_ECS_METADATA_ENDPOINT", imds.uri()));
    env.push(("RUST_LOG", "trace".into()));
    let log = mnt.with_extension("log");
    let child = std::process::Command::new(bin())
        .args(["mount", &url()])
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--foreground", "--metadata-ttl", "1s"])
        .envs(env)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = Mount {
        child: Some(child),
        mnt: mnt.clone(),
        log: log.clone(),
        cache: cache.clone(),
    };
    assert!(
        wait_until(Duration::from_secs(60), || is_mounted(&mnt)),
        "mount did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Read a new file every 300 ms for 12 s: three lifetimes of a key.
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let p = mnt.join(format!("f{:02}.txt", i % 40));
        let got = fs_op(Duration::from_secs(20), move || std::fs::read(p)).await;
        let want = format!("file {}\n", i % 40).repeat(100);
        assert_eq!(
            got.unwrap_or_else(|e| panic!("read {i} failed: {e}")),
            want.as_bytes()
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let minted = minter.minted.load(Ordering::SeqCst);
    assert!(minted >= 3, "only {minted} keys: no rotation happened");
    let node_log = guard.cache.join("ossmount.log");
    drop(guard);
    // The command's output, then the log of the node that served the mount.
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(node_log).unwrap_or_default();
    assert!(
        text.contains("ECS RAM role test-role"),
        "the log names the source"
    );
    for secret in minter.secrets.lock().unwrap().iter() {
        assert!(!text.contains(secret.as_str()), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oidc_role_is_assumed_with_the_token_file() {
    let s = Server::start().await;
    s.put("d/a.txt", b"abc");
    let minter = Minter::new(s.emu.temporary_keys(), Duration::from_secs(3600), "oidc");
    let sts = MockServer::start().await;
    Mock::given(method("POST"))
        .and(query_param("Action", "AssumeRoleWithOIDC"))
        .and(query_param("RoleArn", "acs:ram::1:role/reader"))
        .and(query_param(
            "OIDCProviderArn",
            "acs:ram::1:oidc-provider/ack",
        ))
        .and(body_string_contains("OIDCToken=the-pod-token"))
        .respond_with(StsAnswer(minter.clone()))
        .mount(&sts)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(
            r#"{"Code":"AuthenticationFail.OIDCToken.Invalid","Message":"bad token"}"#,
        ))
        .mount(&sts)
        .await;
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, "the-pod-token\n").unwrap();
    let mut env = chain_env(&s, home.path());
    env.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()));
    env.push(("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/reader".into()));
    env.push((
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
        "acs:ram::1:oidc-provider/ack".into(),
    ));
    env.push(("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.display().to_string()));
    env.push(("OSSMOUNT_STS_ENDPOINT", sts.uri()));
    env.push(("RUST_LOG", "trace".into()));
    let (status, text) = run_cli(&["ls", "oss://test-bucket/d/"], env.clone()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("d/a.txt"), "{text}");
    assert!(text.contains("OIDC role acs:ram::1:role/reader"), "{text}");
    for secret in minter.secrets.lock().unwrap().iter() {
        assert!(
            !text.contains(secret.as_str()),
            "a secret reached the output"
        );
    }
    // Another token: STS refuses, and the error says so.
    std::fs::write(&token, "a-stolen-token").unwrap();
    let (status, text) = run_cli(&["ls", "oss://test-bucket/d/"], env).await;
    assert!(!status.success());
    assert!(
        text.contains("AuthenticationFail.OIDCToken.Invalid"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_uri_and_profile_files_are_used_in_order() {
    let s = Server::start().await;
    s.put("d/a.txt", b"abc");
    let home = tempfile::tempdir().unwrap();
    let mut env = chain_env(&s, home.path());
    env.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()));
    env.push(("RUST_LOG", "info".into()));

    // Nothing configured: a clear error that lists what was tried.
    let (status, text) = run_cli(&["stat", "oss://test-bucket/d/a.txt"], env.clone()).await;
    assert!(!status.success());
    assert!(
        text.contains("no credentials") && text.contains("ECS RAM role (disabled"),
        "{text}"
    );

    // A credentials URI.
    let minter = Minter::new(s.emu.temporary_keys(), Duration::from_secs(3600), "uri");
    let uri = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/creds"))
        .respond_with(minter.clone())
        .mount(&uri)
        .await;
    let mut with_uri = env.clone();
    with_uri.push((
        "ALIBABA_CLOUD_CREDENTIALS_URI",
        format!("{}/creds", uri.uri()),
    ));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/d/a.txt"], with_uri.clone()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("ALIBABA_CLOUD_CREDENTIALS_URI"), "{text}");

    // ossutil's config comes before the URI.
    std::fs::write(
        home.path().join(".ossutilconfig"),
        format!("[Credentials]\nlanguage=EN\nendpoint=x\naccessKeyID={AK}\naccessKeySecret={SK}\n"),
    )
    .unwrap();
    let (status, text) = run_cli(&["stat", "oss://test-bucket/d/a.txt"], with_uri.clone()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("~/.ossutilconfig"), "{text}");

    // The CLI's config.json comes before ossutil's; --profile picks a profile.
    std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
    std::fs::write(
        home.path().join(".aliyun/config.json"),
        serde_json::json!({
            "current": "broken",
            "profiles": [
                {"name": "broken", "mode": "AK", "access_key_id": AK, "access_key_secret": "wrong"},
                {"name": "good", "mode": "AK", "access_key_id": AK, "access_key_secret": SK},
            ]
        })
        .to_string(),
    )
    .unwrap();
    let (status, text) = run_cli(&["stat", "oss://test-bucket/d/a.txt"], with_uri.clone()).await;
    assert!(
        !status.success(),
        "the current profile has a wrong secret: {text}"
    );
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    let (status, text) = run_cli(
        &["--profile", "good", "stat", "oss://test-bucket/d/a.txt"],
        with_uri.clone(),
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(text.contains("profile \"good\""), "{text}");
    assert!(!text.contains(SK), "a secret reached the output");

    // The environment comes before every file.
    let mut with_env = with_uri;
    with_env.push(("ALIBABA_CLOUD_ACCESS_KEY_ID", AK.into()));
    with_env.push(("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SK.into()));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/d/a.txt"], with_env).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("ALIBABA_CLOUD_ACCESS_KEY_ID"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_temporary_key_is_refused_by_the_emulator() {
    let s = Server::start().await;
    s.put("a.txt", b"abc");
    s.emu.temporary_keys().issue(
        "old-key",
        "old-secret",
        "old-token",
        SystemTime::now() - Duration::from_secs(1),
    );
    let mut cfg = s.client_config();
    cfg.credentials = Some(ossmount::oss::Credentials {
        access_key_id: "old-key".into(),
        access_key_secret: ossmount::oss::Secret::new("old-secret"),
        security_token: Some(ossmount::oss::Secret::new("old-token")),
    });
    let err = ossmount::oss::OssClient::new(cfg)
        .unwrap()
        .head_object(BUCKET, "a.txt")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("SecurityTokenExpired"));
}

/// An ECS metadata service stand-in at the socket level (wiremock always sends whole bodies):
/// the token PUT gets its headers and then a body cut short; any other request gets the role
/// name `test-role`. Returns its address and the request lines it saw.
async fn imds_with_a_cut_off_token() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line.clone());
                let answer: &[u8] = if line.starts_with("PUT /latest/api/token") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\nimds-sess"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntest-role"
                };
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_imdsv1_disabled_an_unreadable_token_is_an_error_not_a_v1_request() {
    let s = Server::start().await;
    s.put("a.txt", b"abc");
    let (imds, seen) = imds_with_a_cut_off_token().await;
    let home = tempfile::tempdir().unwrap();
    let mut env = chain_env(&s, home.path());
    env.push(("OSSMOUNT_ECS_METADATA_ENDPOINT", imds));
    env.push(("ALIBABA_CLOUD_IMDSV1_DISABLED", "true".into()));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/a.txt"], env).await;
    assert!(!status.success(), "{text}");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l.starts_with("PUT /latest/api/token ")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| l.starts_with("PUT /latest/api/token ")),
        "a request went out without a token: {seen:?}"
    );
    assert!(
        text.contains("no IMDSv2 token (its answer could not be read")
            && text.contains("ALIBABA_CLOUD_IMDSV1_DISABLED forbids v1"),
        "{text}"
    );
}

/// A stand-in that answers every request with `status` pointing at `target`.
async fn redirecting_to(target: String, status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(status).insert_header("Location", target.as_str()))
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_sources_follow_no_redirect() {
    let s = Server::start().await;
    s.put("a.txt", b"abc");
    let home = tempfile::tempdir().unwrap();
    let minter = Minter::new(
        s.emu.temporary_keys(),
        Duration::from_secs(3600),
        "elsewhere",
    );
    // Wherever a redirect points, a working source waits: following it would succeed.
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(StsAnswer(minter.clone()))
        .mount(&elsewhere)
        .await;
    Mock::given(method("GET"))
        .respond_with(minter.clone())
        .mount(&elsewhere)
        .await;
    let mut env = chain_env(&s, home.path());
    env.push(("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()));

    // A credentials URI answering 302.
    let uri = redirecting_to(format!("{}/creds", elsewhere.uri()), 302).await;
    let mut with_uri = env.clone();
    with_uri.push((
        "ALIBABA_CLOUD_CREDENTIALS_URI",
        format!("{}/creds", uri.uri()),
    ));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/a.txt"], with_uri).await;
    assert!(!status.success(), "{text}");
    assert!(text.contains("answered 302 Found, a redirect"), "{text}");

    // STS answering 307, which would resend the POST with the OIDC token.
    let sts = redirecting_to(format!("{}/sts", elsewhere.uri()), 307).await;
    let token = home.path().join("token");
    std::fs::write(&token, "the-pod-token\n").unwrap();
    let mut with_oidc = env.clone();
    with_oidc.push(("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/reader".into()));
    with_oidc.push((
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
        "acs:ram::1:oidc-provider/ack".into(),
    ));
    with_oidc.push(("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.display().to_string()));
    with_oidc.push(("OSSMOUNT_STS_ENDPOINT", sts.uri()));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/a.txt"], with_oidc).await;
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("STS AssumeRoleWithOIDC answered 307 Temporary Redirect, a redirect"),
        "{text}"
    );

    // The metadata service redirecting the credentials of its role (with the session token).
    let imds = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("imds-session-token"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/ram/security-credentials/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("test-role"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/ram/security-credentials/test-role"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/creds", elsewhere.uri()).as_str()),
        )
        .mount(&imds)
        .await;
    let mut with_ecs: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| !k.contains("ECS_METADATA_DISABLED"))
        .collect();
    with_ecs.push(("OSSMOUNT_ECS_METADATA_ENDPOINT", imds.uri()));
    let (status, text) = run_cli(&["stat", "oss://test-bucket/a.txt"], with_ecs).await;
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("ECS metadata service answered 302 Found, a redirect"),
        "{text}"
    );

    let followed = elsewhere.received_requests().await.unwrap();
    assert!(
        followed.is_empty(),
        "a redirect was followed: {:?}",
        followed
            .iter()
            .map(|r| r.url.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(minter.minted.load(Ordering::SeqCst), 0);
}
