//! Credentials in files that rotate, as ACK swaps a symlinked directory of `AccessKeyId`,
//! `AccessKeySecret` and `SecurityToken` and RRSA rewrites its OIDC token file. A mount
//! reading a large object slowly keeps reading, byte-exact, while its keys are swapped
//! behind the symlink and the emulator revokes the old ones; a client whose keys are refused
//! after a swap looks at the files at once and sends again; the OIDC source reads its token
//! file at each refresh. No secret reaches a log.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::mount::*;
use common::*;
use ossmount::oss::credentials::{
    resolve_chain, ChainOptions, CredentialFiles, ProvideCredentials, RotatingFiles,
};
use ossmount::oss::{Credentials, OssClient, Secret};

/// STS-style keys number `n`, issued by the emulator (valid for an hour) and written as ACK
/// writes them into `base/keys-n`. Returns the directory and the key's secrets.
fn issue_keys(s: &Server, base: &Path, n: u32) -> (PathBuf, String, [String; 2]) {
    let id = format!("STS.rotating-{n}");
    let secret = format!("rotating-secret-{n}-DO-NOT-PRINT");
    let token = format!("rotating-token-{n}-DO-NOT-PRINT");
    s.emu.temporary_keys().issue(
        &id,
        &secret,
        &token,
        SystemTime::now() + Duration::from_secs(3600),
    );
    let dir = base.join(format!("keys-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("AccessKeyId"), &id).unwrap();
    std::fs::write(dir.join("AccessKeySecret"), &secret).unwrap();
    std::fs::write(dir.join("SecurityToken"), &token).unwrap();
    let expires =
        ossmount::oss::time::iso8601_extended(SystemTime::now() + Duration::from_secs(3600));
    std::fs::write(dir.join("Expiration"), expires).unwrap();
    (dir, id, [secret, token])
}

/// Points `link` at `target` in one step (a new symlink renamed over the old one).
fn swap(link: &Path, target: &Path) {
    let tmp = link.with_file_name("creds.swapping");
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_reads_on_while_its_key_files_are_swapped_and_the_old_keys_revoked() {
    require_fuse();
    const SIZE: u64 = 24 << 20;
    let s = Server::start().await;
    s.put_sample("big.bin", 41, SIZE);
    // About 6 s for the whole object: many part requests before and after the swap.
    s.emu.update_faults(|f| {
        f.bandwidth_per_connection = 2 << 20;
        f.bandwidth_total = 4 << 20;
    });
    let base = s.scratch.path().join("ack");
    let (first, first_id, first_secrets) = issue_keys(&s, &base, 1);
    let link = base.join("creds");
    symlink(&first, &link).unwrap();
    let (mnt, cache) = dirs(&s, "rotate");
    let env = vec![
        ("OSS_ENDPOINT", s.emu.endpoint()),
        ("OSS_REGION", "cn-hangzhou".to_string()),
        ("OSSMOUNT_CREDENTIALS_DIR", link.display().to_string()),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()),
    ];
    // Two connections: most part requests are sent after the revoke. (With the adaptive
    // window, the whole object is asked for within the first 4 MiB, every request signed
    // with the old keys before the revoke, and the rotation is never exercised.)
    let mut m = Mount::start_with_env(
        &url(),
        &mnt,
        &cache,
        &["--part-size", "1MiB", "--threads", "2"],
        env,
    );

    let reader = tokio::spawn(fs_op(Duration::from_secs(120), {
        let path = m.path("big.bin");
        move || std::fs::read(path)
    }));
    // Mid-read: some bytes have come, most have not.
    let started = std::time::Instant::now();
    while s.emu.object_counters(BUCKET, "big.bin").body_bytes < 4 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the read did not start: {}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (second, second_id, second_secrets) = issue_keys(&s, &base, 2);
    swap(&link, &second);
    assert!(s.emu.temporary_keys().revoke(&first_id));
    let revoked_at = s.emu.request_log().len();
    let fetched_at_swap = s.emu.object_counters(BUCKET, "big.bin").body_bytes;
    assert!(
        fetched_at_swap < SIZE / 2,
        "too late: {fetched_at_swap} bytes already"
    );

    let got = within(Duration::from_secs(150), "the read", reader)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the read failed: {e}: {}", m.log_text()));
    assert!(
        got == ossmount::sample::bytes(41, SIZE as usize),
        "the bytes read differ from the object"
    );
    let after: Vec<_> = s.emu.request_log()[revoked_at..].to_vec();
    let served = after.iter().filter(|r| r.status == 206).count();
    let refused = after.iter().filter(|r| r.status == 403).count();
    assert!(
        served >= 4,
        "the rest of the object came in {served} parts after the revoke"
    );
    eprintln!(
        "after the revoke: {served} parts served, {refused} requests refused (and sent again)"
    );
    // The revoke happened mid-read: at least one request went out with the old keys and
    // was refused before the new ones were read (the README quotes this).
    assert!(
        refused >= 1,
        "no request was refused after the revoke: the rotation was not exercised"
    );

    let st = m.unmount();
    assert!(st.success());
    let log = m.log_text();
    assert!(
        log.contains("credential files changed: new keys in use")
            && log.contains("STS.***")
            && !log.contains(&second_id),
        "the rotation is logged: {log}"
    );
    for secret in first_secrets.iter().chain(&second_secrets) {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
    }
}

fn client_with(s: &Server, provider: Arc<dyn ProvideCredentials>) -> OssClient {
    let mut cfg = s.client_config();
    cfg.credentials = None;
    cfg.credentials_provider = Some(provider);
    OssClient::new(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_make_the_client_look_at_the_files_at_once_and_send_again() {
    let s = Server::start().await;
    s.put("k.txt", b"kept");
    let base = s.scratch.path().join("ack");
    let (first, first_id, _) = issue_keys(&s, &base, 1);
    let link = base.join("creds");
    symlink(&first, &link).unwrap();
    // No periodic look during the test: only the refusal can find the new keys.
    let files = Arc::new(
        RotatingFiles::with_check_interval(
            CredentialFiles::in_dir(&link),
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    let client = client_with(&s, files.clone());
    assert_eq!(client.head_object(BUCKET, "k.txt").await.unwrap().size, 4);

    let (second, second_id, _) = issue_keys(&s, &base, 2);
    swap(&link, &second);
    s.emu.temporary_keys().revoke(&first_id);
    let from = s.emu.request_log().len();
    assert_eq!(client.head_object(BUCKET, "k.txt").await.unwrap().size, 4);
    let statuses: Vec<u16> = s.emu.request_log()[from..]
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [403, 200],
        "refused once, then sent with the new keys"
    );
    assert_eq!(files.reloads(), 1);

    // Revoked with nothing new in the files: the refusal reaches the caller, at once.
    s.emu.temporary_keys().revoke(&second_id);
    let from = s.emu.request_log().len();
    let err = client.head_object(BUCKET, "k.txt").await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidAccessKeyId"), "{err}");
    assert_eq!(s.emu.request_log().len() - from, 1, "no retry loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_takes_key_files_before_anything_else_and_not_beside_flags() {
    let s = Server::start().await;
    let base = s.scratch.path().join("ack");
    let (dir, id, _) = issue_keys(&s, &base, 1);
    let env: BTreeMap<String, String> = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "env-ak"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "env-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let files = ChainOptions {
        files: Some(CredentialFiles::in_dir(&dir)),
        env: Some(Arc::new(env)),
        ..ChainOptions::default()
    };
    let p = resolve_chain(&files).await.unwrap();
    assert_eq!(p.credentials().await.unwrap().access_key_id, id);
    assert!(
        p.describe().contains(dir.to_str().unwrap()),
        "{}",
        p.describe()
    );
    let both = ChainOptions {
        flags: Some(Credentials {
            access_key_id: "flag-ak".into(),
            access_key_secret: Secret::new("flag-secret"),
            security_token: None,
        }),
        ..files
    };
    let err = resolve_chain(&both).await.err().unwrap().to_string();
    assert!(
        err.contains("given twice") && !err.contains("flag-secret"),
        "{err}"
    );
    // Unreadable files are an error now, naming the file, not at the first read.
    let missing = ChainOptions {
        files: Some(CredentialFiles::in_dir(&base.join("nope"))),
        ..ChainOptions::default()
    };
    let err = resolve_chain(&missing).await.err().unwrap().to_string();
    assert!(err.contains("nope/AccessKeyId"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oidc_role_reads_its_token_file_again_at_each_refresh() {
    use wiremock::matchers::{method, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let sts = MockServer::start().await;
    // Keys that live 2 s: the next call after that needs a refresh.
    Mock::given(method("POST"))
        .and(query_param("Action", "AssumeRoleWithOIDC"))
        .respond_with(move |_: &wiremock::Request| {
            let expires =
                ossmount::oss::time::iso8601_extended(SystemTime::now() + Duration::from_secs(2));
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"Credentials": {
                "AccessKeyId": "STS.oidc", "AccessKeySecret": "oidc-secret",
                "SecurityToken": "oidc-token", "Expiration": expires.replace(".000", ""),
            }}))
        })
        .mount(&sts)
        .await;
    let t = tempfile::tempdir().unwrap();
    let token_file = t.path().join("token");
    std::fs::write(&token_file, "pod-token-first\n").unwrap();
    let env: BTreeMap<String, String> = [
        (
            "ALIBABA_CLOUD_ROLE_ARN",
            "acs:ram::1:role/reader".to_string(),
        ),
        (
            "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
            "acs:ram::1:oidc-provider/ack".into(),
        ),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("OSSMOUNT_STS_ENDPOINT", sts.uri()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let p = resolve_chain(&ChainOptions {
        env: Some(Arc::new(env)),
        ..ChainOptions::default()
    })
    .await
    .unwrap();
    // RRSA rewrites the token file (hourly); the next refresh must send the new token.
    std::fs::write(&token_file, "pod-token-second\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    within(Duration::from_secs(20), "a refresh", p.credentials())
        .await
        .unwrap();
    let bodies: Vec<String> = sts
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies[0].contains("OIDCToken=pod-token-first"),
        "{bodies:?}"
    );
    assert!(
        bodies[1].contains("OIDCToken=pod-token-second"),
        "{bodies:?}"
    );
}
