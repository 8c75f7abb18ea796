//! `s3://` URLs through the real `ossmount` binary against s3s-fs, a third-party S3 server
//! from crates.io that checks SigV4, started in this process on 127.0.0.1 over a temp
//! directory (each subdirectory a bucket) with known keys: `ls` over two listing pages,
//! `stat`, a multi-part `download` byte-exact with its checkpoint removed and its MD5 checked,
//! a byte flipped in transit caught by that check, an object uploaded with its CRC64NVME
//! checked by that instead (and a lie caught), credentials from a shared credentials file,
//! and a wrong secret refused with the service's error code.

mod common;
#[path = "common/s3.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{bin, within, CommandWithin};
use s3_server::*;

/// Runs `ossmount ARGS` off the runtime (which serves the S3 server meanwhile), bounded.
async fn run(args: &[&str], env: Vec<(&'static str, String)>) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = format!("ossmount {}", args.join(" "));
    within(
        Duration::from_secs(200),
        &what.clone(),
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(&args)
                .envs(env)
                .output_within(Duration::from_secs(180), &what)
                .unwrap()
        }),
    )
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_reads_two_listing_pages_and_stat_reads_the_head() {
    let s = S3Server::start().await;
    let many: Vec<String> = (0..1500).map(|i| format!("many/k{i:05}")).collect();
    for (i, key) in many.iter().enumerate() {
        s.put(key, &ossmount::sample::bytes(i as u64, 1 + i % 7));
    }
    let top = ossmount::sample::bytes(77, 12_345);
    s.put("top.bin", &top);
    s.put("dir/inner.txt", b"inner");

    let before = s.request_count();
    let out = run(&["ls", &format!("s3://{BUCKET}/many/")], s.env(SK)).await;
    assert_ok(&out, "ls many/");
    let listed: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(listed.len(), 1500);
    assert_eq!(listed, many, "every key once, in order");
    let pages = s
        .requests_since(before)
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/{BUCKET}/"))
        .count();
    assert_eq!(
        pages, 2,
        "1,500 keys at 1,000 a page: two ListObjectsV2 requests"
    );

    let out = run(&["ls", &format!("s3://{BUCKET}/")], s.env(SK)).await;
    assert_ok(&out, "ls /");
    assert_eq!(stdout(&out), "dir/\nmany/\ntop.bin\n");

    let out = run(&["ls", "-r", &format!("s3://{BUCKET}/dir/")], s.env(SK)).await;
    assert_ok(&out, "ls -r dir/");
    assert_eq!(stdout(&out), "dir/inner.txt\n");

    let out = run(&["stat", &format!("s3://{BUCKET}/top.bin")], s.env(SK)).await;
    assert_ok(&out, "stat");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("object:        s3://{BUCKET}/top.bin")),
        "{text}"
    );
    assert!(text.contains("size:          12345 "), "{text}");
    let etag = text
        .lines()
        .find_map(|l| l.strip_prefix("etag:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("an etag line");
    assert!(
        etag.len() == 32 && etag.bytes().all(|c| c.is_ascii_hexdigit()),
        "a single-part object's ETag is its MD5: {etag}"
    );

    let out = run(&["stat", &format!("s3://{BUCKET}/missing.bin")], s.env(SK)).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NoSuchKey"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_a_multi_part_object_is_byte_exact_and_leaves_no_checkpoint() {
    let s = S3Server::start().await;
    let size = 20 * MIB;
    let seed = 2020;
    ossmount::sample::write_file(&s.object_path("big/model.bin"), seed, size).unwrap();
    let local = s.scratch.path().join("model.bin");
    let before = s.request_count();
    let started = std::time::Instant::now();
    let out = run(
        &[
            "download",
            &format!("s3://{BUCKET}/big/model.bin"),
            local.to_str().unwrap(),
            "--part-size",
            "4MiB",
            "--threads",
            "3",
        ],
        s.env(SK),
    )
    .await;
    assert_ok(&out, "download");
    eprintln!("20 MiB from s3s-fs in {:?}", started.elapsed());
    let got = std::fs::read(&local).unwrap();
    assert_eq!(got.len() as u64, size);
    assert!(
        got == ossmount::sample::bytes(seed, size as usize),
        "downloaded bytes differ"
    );
    assert!(!sibling(&local, ".dcp").exists(), "checkpoint removed");
    assert!(!sibling(&local, ".tmp").exists(), "temp file renamed");
    assert!(stderr(&out).contains("MD5 verified"), "{}", stderr(&out));
    let ranges: Vec<(u64, u64)> = s
        .requests_since(before)
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/{BUCKET}/big/model.bin"))
        .filter_map(|r| r.range.as_deref().map(parse_range))
        .collect();
    // Each byte asked for once, no GET across a 4 MiB part's end (the last parts may be
    // fetched in halves: tail claims).
    assert_eq!(tiling(&ranges), Some(size), "{ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|(a, b)| a / (4 * MIB) == (b - 1) / (4 * MIB)),
        "a GET crossed a part: {ranges:?}"
    );
    assert!(ranges.len() >= 5, "{ranges:?}");
}

/// `bytes=A-B` as `A..B+1`.
fn parse_range(header: &str) -> (u64, u64) {
    let (a, b) = header
        .trim_start_matches("bytes=")
        .split_once('-')
        .expect("a ranged GET");
    (a.parse().unwrap(), b.parse::<u64>().unwrap() + 1)
}

/// The length the ranges cover when, sorted, they tile it from 0 without a gap or overlap.
fn tiling(ranges: &[(u64, u64)]) -> Option<u64> {
    let mut sorted = ranges.to_vec();
    sorted.sort();
    sorted
        .iter()
        .try_fold(0, |at, &(a, b)| (a == at).then_some(b))
}

/// A server that sends one part with a byte flipped: every part arrives, but the whole
/// object's MD5 (its ETag) does not match, so the download fails and keeps nothing; the same
/// download from an honest server succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_in_transit_fails_the_md5_check_and_nothing_is_kept() {
    let s = S3Server::start().await;
    let size = 12 * MIB;
    let seed = 5150;
    ossmount::sample::write_file(&s.object_path("lied.bin"), seed, size).unwrap();
    let local = s.scratch.path().join("lied.bin");
    let args = [
        "download",
        &format!("s3://{BUCKET}/lied.bin"),
        local.to_str().unwrap(),
        "--part-size",
        "4MiB",
        "--threads",
        "3",
    ];
    *s.flip_part_at.lock().unwrap() = Some(4 * MIB);
    let out = run(&args, s.env(SK)).await;
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("MD5 mismatch"), "{err}");
    assert!(
        !local.exists(),
        "no file from a download that failed its MD5"
    );
    assert!(!sibling(&local, ".dcp").exists(), "no checkpoint kept");
    assert!(!sibling(&local, ".tmp").exists(), "no temp file kept");

    *s.flip_part_at.lock().unwrap() = None;
    let out = run(&args, s.env(SK)).await;
    assert_ok(&out, "download from the honest server");
    assert!(stderr(&out).contains("MD5 verified"), "{}", stderr(&out));
    assert!(std::fs::read(&local).unwrap() == ossmount::sample::bytes(seed, size as usize));
}

/// An object uploaded with its CRC64NVME, as AWS SDKs upload new objects (s3s-fs checks the
/// value against its own implementation and keeps it), in parts (so its ETag is no MD5):
/// `stat` shows it, a download checks the whole object against it, and a byte flipped in
/// transit fails that check and keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crc64nvme_object_is_checked_by_it_and_a_byte_flipped_in_transit_is_caught() {
    let s = S3Server::start().await;
    let size = 9 * MIB + 77;
    let data = ossmount::sample::bytes(7070, size as usize);
    let crc = s.put_with_crc64nvme("nvme.bin", &data).await;
    s.as_multipart_upload("nvme.bin");
    let url = format!("s3://{BUCKET}/nvme.bin");

    let out = run(&["stat", &url], s.env(SK)).await;
    assert_ok(&out, "stat");
    assert!(
        stdout(&out).contains(&format!("checksum:      CRC64NVME {crc:016x}")),
        "{}",
        stdout(&out)
    );

    let local = s.scratch.path().join("nvme.bin");
    let args = [
        "download",
        &url,
        local.to_str().unwrap(),
        "--part-size",
        "2MiB",
        "--threads",
        "3",
    ];
    *s.flip_part_at.lock().unwrap() = Some(4 * MIB);
    let out = run(&args, s.env(SK)).await;
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("CRC64NVME mismatch") && err.contains(&format!("{crc:016x}")),
        "{err}"
    );
    assert!(
        !local.exists(),
        "no file from a download that failed its check"
    );
    assert!(!sibling(&local, ".dcp").exists(), "no checkpoint kept");

    *s.flip_part_at.lock().unwrap() = None;
    let out = run(&args, s.env(SK)).await;
    assert_ok(&out, "download from the honest server");
    assert!(
        stderr(&out).contains("CRC64NVME verified"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&local).unwrap() == data);
}

/// 503 SlowDown is retried (with backoff) until the part arrives: the download completes
/// byte-exact, having sent each refused GET again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_answers_are_retried_until_the_download_completes() {
    let s = S3Server::start().await;
    let size = 8 * MIB;
    let seed = 503;
    ossmount::sample::write_file(&s.object_path("busy.bin"), seed, size).unwrap();
    let local = s.scratch.path().join("busy.bin");
    *s.slow_downs_left.lock().unwrap() = 3;
    let before = s.request_count();
    let out = run(
        &[
            "download",
            &format!("s3://{BUCKET}/busy.bin"),
            local.to_str().unwrap(),
            "--part-size",
            "4MiB",
            "--threads",
            "2",
        ],
        s.env(SK),
    )
    .await;
    assert_ok(&out, "download through SlowDown answers");
    assert!(std::fs::read(&local).unwrap() == ossmount::sample::bytes(seed, size as usize));
    assert_eq!(
        *s.slow_downs_left.lock().unwrap(),
        0,
        "every SlowDown was sent"
    );
    let ranges: Vec<(u64, u64)> = s
        .requests_since(before)
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.range.as_deref().map(parse_range))
        .collect();
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(tiling(&distinct), Some(size), "{ranges:?}");
    assert_eq!(
        ranges.len(),
        distinct.len() + 3,
        "three GETs refused and sent again: {ranges:?}"
    );
}

/// Keys given as flags, or in key files (`--credentials-dir`, `--access-key-*-file`: the
/// files kubelet and Fluid mount from Secrets), sign s3:// requests in place of the AWS
/// chain, whose keys here are wrong; OSS_ACCESS_KEY_* variables are OSS keys and never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_flags_or_key_files_sign_and_oss_key_variables_do_not() {
    let s = S3Server::start().await;
    s.put("k.bin", b"hello");
    let url = format!("s3://{BUCKET}/k.bin");
    let wrong_chain = s.env("wrong-secret-of-the-chain");

    let out = run(
        &[
            "stat",
            &url,
            "--access-key-id",
            AK,
            "--access-key-secret",
            SK,
        ],
        wrong_chain.clone(),
    )
    .await;
    assert_ok(&out, "stat with the keys as flags");
    assert!(!stderr(&out).contains(SK));

    // An OSS STS token in the environment never goes to S3 with command-line keys, and one
    // key on the command line with the other from OSS_* is refused.
    let mut with_oss_token = wrong_chain.clone();
    with_oss_token.push(("OSS_SESSION_TOKEN", "oss-sts-token-NOT-FOR-S3".into()));
    with_oss_token.push(("OSS_ACCESS_KEY_SECRET", SK.into()));
    let before = s.request_count();
    let out = run(
        &[
            "stat",
            &url,
            "--access-key-id",
            AK,
            "--access-key-secret",
            SK,
        ],
        with_oss_token.clone(),
    )
    .await;
    assert_ok(&out, "stat with keys as flags beside OSS variables");
    let sent = s.requests_since(before);
    assert!(
        !sent.is_empty() && sent.iter().all(|r| r.token.is_none()),
        "{sent:?}"
    );
    let out = run(&["stat", &url, "--access-key-id", AK], with_oss_token).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("give both --access-key-id and --access-key-secret"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(SK));

    let mut oss_vars = wrong_chain.clone();
    oss_vars.push(("OSS_ACCESS_KEY_ID", AK.into()));
    oss_vars.push(("OSS_ACCESS_KEY_SECRET", SK.into()));
    let out = run(&["stat", &url], oss_vars).await;
    assert!(!out.status.success(), "OSS keys signed an S3 request");
    assert!(
        stderr(&out).contains("SignatureDoesNotMatch"),
        "{}",
        stderr(&out)
    );

    let dir = s.scratch.path().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("AccessKeyId"), AK).unwrap();
    std::fs::write(dir.join("AccessKeySecret"), format!("{SK}\n")).unwrap();
    let out = run(
        &["stat", &url, "--credentials-dir", dir.to_str().unwrap()],
        wrong_chain.clone(),
    )
    .await;
    assert_ok(&out, "stat with a key directory");
    let out = run(
        &[
            "stat",
            &url,
            "--access-key-id-file",
            dir.join("AccessKeyId").to_str().unwrap(),
            "--access-key-secret-file",
            dir.join("AccessKeySecret").to_str().unwrap(),
        ],
        wrong_chain.clone(),
    )
    .await;
    assert_ok(&out, "stat with key files");
    assert!(!stderr(&out).contains(SK));
}

fn sibling(local: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", local.display()))
}

/// `--endpoint` on the command line wins over AWS_ENDPOINT_URL, and OSS_ENDPOINT (another
/// service's) is never read for s3:// URLs: both point at a closed port here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_flag_wins_and_oss_variables_are_not_read() {
    let s = S3Server::start().await;
    s.put("x/y.bin", b"y");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut env: Vec<(&'static str, String)> = s
        .env(SK)
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
        .collect();
    env.push(("AWS_ENDPOINT_URL", closed.clone()));
    env.push(("OSS_ENDPOINT", s.endpoint.clone()));
    let url = format!("s3://{BUCKET}/x/");
    let out = run(
        &["--max-attempts", "1", "--endpoint", &s.endpoint, "ls", &url],
        env.clone(),
    )
    .await;
    assert_ok(&out, "ls with --endpoint");
    assert_eq!(stdout(&out), "x/y.bin\n");
    let out = run(&["--max-attempts", "1", "ls", &url], env).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("network error talking to {closed}")),
        "AWS_ENDPOINT_URL, not OSS_ENDPOINT: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_shared_credentials_file_profile() {
    let s = S3Server::start().await;
    s.put("a.txt", b"a");
    let file = s.scratch.path().join("credentials");
    std::fs::write(
        &file,
        format!("[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n[ci]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n"),
    )
    .unwrap();
    let mut env: Vec<(&'static str, String)> = s
        .env(SK)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_SHARED") && !k.starts_with("AWS_PROFILE"))
        .map(|(k, v)| match k {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => (k, String::new()),
            _ => (k, v),
        })
        .collect();
    env.push(("AWS_SHARED_CREDENTIALS_FILE", file.display().to_string()));
    env.push(("AWS_PROFILE", "ci".into()));
    let out = run(&["ls", &format!("s3://{BUCKET}/")], env.clone()).await;
    assert_ok(&out, "ls with profile ci");
    assert_eq!(stdout(&out), "a.txt\n");

    // Without AWS_PROFILE the default profile's keys are sent, and refused: s3s answers an
    // unknown access key id with NotSignedUp (AWS with InvalidAccessKeyId).
    env.retain(|(k, _)| *k != "AWS_PROFILE");
    let out = run(&["ls", &format!("s3://{BUCKET}/")], env).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("NotSignedUp") && err.contains("HTTP 403"),
        "{err}"
    );
    assert!(err.contains("check AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_with_the_service_code_and_never_printed() {
    let s = S3Server::start().await;
    s.put(
        "data/one.bin",
        &ossmount::sample::bytes(1, 5 * MIB as usize),
    );
    let wrong = "wrong-secret-MUST-NOT-APPEAR-77";

    let out = run(&["ls", &format!("s3://{BUCKET}/data/")], s.env(wrong)).await;
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(
        err.contains("AWS_SECRET_ACCESS_KEY"),
        "the hint names the key: {err}"
    );
    assert!(!err.contains(wrong) && !err.contains(SK), "{err}");

    let local = s.scratch.path().join("one.bin");
    let out = run(
        &[
            "download",
            &format!("s3://{BUCKET}/data/one.bin"),
            local.to_str().unwrap(),
        ],
        s.env(wrong),
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("SignatureDoesNotMatch") && err.contains("HTTP 403"),
        "the HEAD's refusal, with the reason a GET asked for: {err}"
    );
    assert!(!err.contains(wrong) && !err.contains(SK), "{err}");
    assert!(!local.exists(), "nothing written for a refused download");
    assert!(!sibling(&local, ".dcp").exists() && !sibling(&local, ".tmp").exists());

    let out = run(
        &["stat", &format!("s3://{BUCKET}/data/one.bin")],
        s.env(wrong),
    )
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(SK), "{err}");
}
