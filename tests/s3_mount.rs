//! `ossmount mount` and `prefetch` of `s3://` URLs through the real binary and the real kernel
//! FUSE (root and /dev/fuse required), against s3s-fs on 127.0.0.1 (tests/common/s3.rs):
//! `ls -l` of 1,500 keys over two listing pages, a cold multi-part `cp` byte-exact, resume
//! after SIGKILL with the relay counting the bytes of the second run, a wrong secret refused
//! with the service's error code and nothing mounted, cache entries of an `s3://` and an
//! `oss://` store of one endpoint kept apart, and reads served to the end only once the whole
//! object matches its CRC64NVME or MD5 (`--require-crc` refusing an object with neither). Every mount is a `Mount` guard, which unmounts
//! and reaps it even when the test fails; every wait is bounded.

mod common;
#[path = "common/s3.rs"]
mod s3_server;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::mount::{
    cat_within, entry_checkpoints, force_unmount, fs_op, getxattr, is_mounted, refused_mount,
    require_fuse, Mount,
};
use common::{bin, sha256_file, wait_until, CommandWithin};
use s3_server::*;

/// A mountpoint and a cache directory under the server's scratch directory.
fn dirs(s: &S3Server, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = s.scratch.path().join(name);
    std::fs::create_dir_all(&base).unwrap();
    (base.join("mnt"), base.join("cache"))
}

fn url() -> String {
    format!("s3://{BUCKET}/")
}

/// The size of key `i` of the listing test: varied, so a size shown for the wrong key shows.
fn listed_size(i: usize) -> usize {
    (i * 7919) % 3001
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ls_l_of_1500_keys_reads_two_listing_pages_with_the_right_sizes() {
    require_fuse();
    let s = S3Server::start().await;
    for i in 0..1500 {
        s.put(&format!("many/k{i:04}"), &vec![b'x'; listed_size(i)]);
    }
    let (mnt, cache) = dirs(&s, "ls");
    let m = Mount::start_with_env(&url(), &mnt, &cache, &[], s.env(SK));
    let lists_before = list_requests(&s);
    let dir = m.path("many");
    let out = fs_op(Duration::from_secs(120), move || {
        Command::new("ls")
            .arg("-l")
            .arg(dir)
            .output_within(Duration::from_secs(120), "ls -l")
            .unwrap()
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for line in text.lines().filter(|l| l.starts_with('-')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields.last().unwrap();
        let i: usize = name.trim_start_matches('k').parse().unwrap();
        let size: usize = fields[4].parse().unwrap();
        assert_eq!(size, listed_size(i), "{line}");
        seen += 1;
    }
    assert_eq!(seen, 1500, "{text}");
    let pages = list_requests(&s) - lists_before;
    assert!(
        pages >= 2,
        "1,500 keys need two ListObjectsV2 pages, {pages} sent"
    );
    drop(m);
}

/// Listing requests the server has seen (GETs of the bucket itself).
fn list_requests(s: &S3Server) -> usize {
    s.requests_since(0)
        .iter()
        .filter(|r| r.method == "GET" && r.path.trim_end_matches('/') == format!("/{BUCKET}"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_cp_of_a_multi_part_object_is_byte_exact() {
    require_fuse();
    let s = S3Server::start().await;
    let size = 40 * MIB;
    s.put("big.bin", &ossmount::sample::bytes(40, size as usize));
    let (mnt, cache) = dirs(&s, "cp");
    let m = Mount::start_with_env(&url(), &mnt, &cache, &["--part-size", "4MiB"], s.env(SK));
    let dest = s.scratch.path().join("out.bin");
    let (src, d) = (m.path("big.bin"), dest.clone());
    let st = fs_op(Duration::from_secs(120), move || {
        Command::new("cp")
            .arg(src)
            .arg(d)
            .status_within(Duration::from_secs(120), "cp")
            .unwrap()
    })
    .await;
    assert!(st.success(), "{}", m.log_text());
    assert_eq!(sha256_file(&dest), sha256_file(&s.object_path("big.bin")));
    let ranged = s
        .requests_since(0)
        .iter()
        .filter(|r| r.range.is_some() && r.path.ends_with("/big.bin"))
        .count();
    assert!(ranged >= 10, "40 MiB in 4 MiB parts: {ranged} ranged GETs");
    // The entry says where it came from: `status` names it by its s3:// URL.
    let out = Command::new(bin())
        .args(["status", "--cache-dir"])
        .arg(&cache)
        .output_within(Duration::from_secs(60), "ossmount status")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("s3://{BUCKET}/big.bin")), "{text}");
    // A prefetch into the mount's cache is the mount's work (its control socket), asked by
    // scheme: the s3:// one runs with the mount's client (the object is already complete:
    // nothing is fetched), an oss:// one of the same bucket finds no mount to run it.
    let prefetch = |what: String| {
        Command::new(bin())
            .args(["prefetch", &what, "--cache-dir"])
            .arg(&cache)
            .envs(s.env(SK))
            .output_within(Duration::from_secs(120), "ossmount prefetch")
            .unwrap()
    };
    let gets_before = s.request_count();
    let out = prefetch(format!("s3://{BUCKET}/"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("prefetched 1 objects"), "{err}");
    assert!(
        s.requests_since(gets_before)
            .iter()
            .all(|r| r.range.is_none()),
        "a complete entry is not fetched again"
    );
    let out = prefetch(format!("oss://{BUCKET}/"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("no mount of oss://{BUCKET}")),
        "{err}"
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_hydration_then_remount_fetches_only_the_rest() {
    require_fuse();
    let s = S3Server::start().await;
    let (size, part) = (40 * MIB, 4 * MIB);
    s.put("resume.bin", &ossmount::sample::bytes(41, size as usize));
    // One request at a time, each held 400 ms: the hydration takes seconds, and the kill
    // finds some parts present and others not.
    *s.body_delay.lock().unwrap() = Duration::from_millis(400);
    let (mnt, cache) = dirs(&s, "kill");
    let flags = [
        "--part-size",
        "4MiB",
        "--threads",
        "1",
        "--max-connections",
        "1",
    ];
    let mut m = Mount::start_with_env(&url(), &mnt, &cache, &flags, s.env(SK));
    let dest = s.scratch.path().join("resumed.bin");
    let mut cp = Command::new("cp")
        .arg(m.path("resume.bin"))
        .arg(&dest)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = (size / part) as usize;
    let reached = wait_until(Duration::from_secs(60), || {
        entry_checkpoints(&cache)
            .iter()
            .any(|c| c.parts_present() >= 3)
    });
    m.kill9();
    let _ = cp.kill();
    let _ = cp.wait();
    assert!(reached, "the hydration never had 3 parts: {}", m.log_text());
    let present = entry_checkpoints(&cache)
        .pop()
        .expect("the entry's checkpoint survives SIGKILL")
        .bytes_present();
    assert!(
        present >= 3 * part && present < size,
        "{present} of {size} bytes present after the kill ({parts} parts)"
    );
    drop(m);

    *s.body_delay.lock().unwrap() = Duration::ZERO;
    let before = s.body_bytes.load(Ordering::SeqCst);
    let m = Mount::start_with_env(&url(), &mnt, &cache, &["--part-size", "4MiB"], s.env(SK));
    let (src, d) = (m.path("resume.bin"), dest.clone());
    let st = fs_op(Duration::from_secs(120), move || {
        Command::new("cp")
            .arg(src)
            .arg(d)
            .status_within(Duration::from_secs(120), "cp")
            .unwrap()
    })
    .await;
    assert!(st.success(), "{}", m.log_text());
    assert_eq!(
        sha256_file(&dest),
        sha256_file(&s.object_path("resume.bin"))
    );
    let second = s.body_bytes.load(Ordering::SeqCst) - before;
    eprintln!("present after the kill: {present} of {size} bytes; the second run fetched {second}");
    assert!(
        second < size && second <= size - present + part,
        "the second run fetched {second} bytes; {} were missing",
        size - present
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_is_refused_with_the_service_code_and_nothing_is_mounted() {
    require_fuse();
    let s = S3Server::start().await;
    s.put("a.txt", b"a");
    let (mnt, cache) = dirs(&s, "wrong");
    std::fs::create_dir_all(&mnt).unwrap();
    let wrong = "wrong-secret-MUST-NOT-APPEAR-31";
    let env = s.env(wrong);
    let (m2, c2) = (mnt.clone(), cache.clone());
    let out = tokio::task::spawn_blocking(move || {
        refused_mount(
            Command::new(bin())
                .args(["mount", &url()])
                .arg(&m2)
                .arg("--cache-dir")
                .arg(&c2)
                .arg("--foreground")
                .envs(env),
            &m2,
        )
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(err.contains(&format!("s3://{BUCKET}/")), "{err}");
    assert!(!err.contains(wrong) && !err.contains(SK), "{err}");
    assert!(!is_mounted(&mnt));
    // No node stays behind for the refused mount; one that did is killed, and fails the test.
    let released = wait_until(Duration::from_secs(30), || {
        !ossmount::cache::lock_is_held(&cache)
    });
    if !released {
        let pid = std::fs::read_to_string(cache.join("lock")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: signalling a process by pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if is_mounted(&mnt) {
        force_unmount(&mnt);
    }
    assert!(released, "a node still holds {}", cache.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_entry_is_never_an_oss_entry_of_the_same_endpoint_bucket_and_key() {
    let s = S3Server::start().await;
    s.put(
        "data/p.bin",
        &ossmount::sample::bytes(7, (3 * MIB) as usize),
    );
    let cache = s.scratch.path().join("prefetched");
    let (what, env) = (format!("s3://{BUCKET}/data/"), s.env(SK));
    let c2 = cache.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["prefetch", &what, "--quiet", "--cache-dir"])
            .arg(&c2)
            .envs(env)
            .output_within(Duration::from_secs(120), "ossmount prefetch")
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    use ossmount::cache::{Cache, Capacity};
    use ossmount::hydrate::{ConnectionLimiter, HydrationConfig};
    use ossmount::store::ObjectStore;
    // Clients of both kinds at the server's endpoint; nothing here sends a request.
    let s3: Arc<dyn ObjectStore> = Arc::new(
        ossmount::store::s3::S3Client::new(ossmount::store::s3::S3Config::new(
            ossmount::store::s3::S3Endpoint::parse(&s.endpoint).unwrap(),
        ))
        .unwrap(),
    );
    let oss: Arc<dyn ObjectStore> = Arc::new(
        ossmount::oss::OssClient::new(ossmount::oss::ClientConfig::new(
            ossmount::oss::Endpoint::parse(&s.endpoint).unwrap(),
        ))
        .unwrap(),
    );
    // The OSS client's location is its bare endpoint, as before S3: its caches stay valid.
    assert_eq!(oss.location(), s.endpoint);
    assert_ne!(s3.location(), oss.location());
    let by_s3 = Cache::open(
        &cache,
        s3,
        HydrationConfig::default(),
        ConnectionLimiter::new(1, 0),
        Capacity {
            max_bytes: 1 << 30,
            min_free_disk: 0,
        },
    )
    .unwrap();
    let id = by_s3
        .cached_identity(BUCKET, "data/p.bin")
        .expect("the prefetched entry, complete, seen through the S3 client");
    assert_eq!(id.size, 3 * MIB);
    let by_oss = by_s3.for_store(oss);
    assert!(by_oss.cached_identity(BUCKET, "data/p.bin").is_none());
    assert!(by_oss.entry_state(BUCKET, "data/p.bin").is_none());
}

async fn cat(p: std::path::PathBuf) -> (bool, Vec<u8>) {
    cat_within(Duration::from_secs(120), p).await
}

/// A mounted S3 object is served to its end only once the whole object matches its digest:
/// CRC64NVME where it was uploaded with one, the MD5 ETag otherwise. A byte flipped in
/// transit fails the `cat` (the mismatch logged and counted), and the next open, with the
/// server honest again, is served byte-exact. `--require-crc` serves objects with either
/// digest and refuses, before any GET, one whose ETag is a multipart upload's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_end_only_on_bytes_that_match_the_whole_object_digest() {
    require_fuse();
    let s = S3Server::start().await;
    let size = 13 * MIB + 5;
    let md5_data = ossmount::sample::bytes(61, size as usize);
    s.put("md5.bin", &md5_data);
    let nvme_data = ossmount::sample::bytes(62, size as usize);
    s.put_with_crc64nvme("nvme.bin", &nvme_data).await;
    // Uploaded in parts: its ETag is no MD5, so its CRC64NVME verifies it.
    s.as_multipart_upload("nvme.bin");
    s.put("multi.bin", &ossmount::sample::bytes(63, size as usize));
    s.as_multipart_upload("multi.bin");
    let (mnt, cache) = dirs(&s, "digest");
    let flags = ["--part-size", "4MiB"];
    let m = Mount::start_with_env(&url(), &mnt, &cache, &flags, s.env(SK));

    for (key, data, algorithm) in [
        ("md5.bin", &md5_data, "MD5"),
        ("nvme.bin", &nvme_data, "CRC64NVME"),
    ] {
        *s.flip_part_at.lock().unwrap() = Some(8 * MIB);
        let (ok, out) = cat(m.path(key)).await;
        assert!(
            !ok,
            "{key}: cat of bytes that fail the {algorithm} check must fail"
        );
        assert!(
            out.len() < size as usize,
            "{key}: the end is never served ({} bytes)",
            out.len()
        );
        let log = m.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{algorithm} mismatch")) && l.contains(key)),
            "{log}"
        );
        *s.flip_part_at.lock().unwrap() = None;
        let (ok, out) = cat(m.path(key)).await;
        assert!(
            ok && out == *data,
            "{key}: served byte-exact once the server is honest ({} bytes): {}",
            out.len(),
            m.log_text()
        );
        // Complete once its last records are durable too, a moment after the last read.
        let path = m.path(key);
        let complete = wait_until(Duration::from_secs(20), || {
            getxattr(&path, "user.ossmount.cached").as_deref() == Some("complete")
        });
        assert!(
            complete,
            "{key}: checked by its {algorithm}: {:?}",
            getxattr(&path, "user.ossmount.cached")
        );
    }
    let (ok, _) = cat(m.path("multi.bin")).await;
    assert!(ok, "without --require-crc an unverifiable object is served");
    let path = m.path("multi.bin");
    let unverified = wait_until(Duration::from_secs(20), || {
        getxattr(&path, "user.ossmount.cached").as_deref() == Some("unverified")
    });
    assert!(unverified, "{:?}", getxattr(&path, "user.ossmount.cached"));
    drop(m);

    let (mnt, cache) = dirs(&s, "require");
    let flags = ["--part-size", "4MiB", "--require-crc"];
    let m = Mount::start_with_env(&url(), &mnt, &cache, &flags, s.env(SK));
    let (ok, out) = cat(m.path("md5.bin")).await;
    assert!(ok && out == md5_data, "an MD5 ETag verifies it");
    let before = s.request_count();
    let (ok, _) = cat(m.path("multi.bin")).await;
    assert!(!ok, "a multipart ETag is no MD5: refused");
    assert!(
        s.requests_since(before).iter().all(|r| r.range.is_none()),
        "refused before any GET of its bytes"
    );
    let log = m.log_text();
    assert!(log.contains("--require-crc"), "{log}");
    drop(m);
}

/// A digest mismatch that no read sees (the reader that took the corrupt bytes stopped short
/// of the end and closed; the fetch went on and failed the check alone) still costs the
/// kernel's pages of that version and the entry: the next open, with the server honest again,
/// is served byte-exact, not from pages the first reader left behind, and nothing of the
/// failed entry is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_digest_mismatch_no_read_saw_still_drops_the_pages_and_the_entry() {
    require_fuse();
    let s = S3Server::start().await;
    let size = 13 * MIB + 5;
    let data = ossmount::sample::bytes(64, size as usize);
    s.put("quiet.bin", &data);
    let (mnt, cache) = dirs(&s, "quiet");
    let m = Mount::start_with_env(&url(), &mnt, &cache, &["--part-size", "4MiB"], s.env(SK));
    *s.flip_part_at.lock().unwrap() = Some(8 * MIB);
    // The last part comes late: the check cannot end before the reader is gone.
    *s.hold_part_at.lock().unwrap() = Some((12 * MIB, Duration::from_secs(3)));
    // Reads the first 9 MiB (the flipped byte among them) and closes.
    let path = m.path("quiet.bin");
    let head = fs_op(Duration::from_secs(60), move || {
        use std::io::Read;
        let mut f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; (9 * MIB) as usize];
        f.read_exact(&mut buf).map(|_| buf)
    })
    .await
    .unwrap();
    assert_ne!(
        head[..],
        data[..head.len()],
        "the first reader got the flipped byte"
    );
    let failed = wait_until(Duration::from_secs(60), || {
        m.log_text()
            .lines()
            .any(|l| l.contains("MD5 mismatch") && l.contains("quiet.bin"))
    });
    assert!(
        failed,
        "the fetch went on and failed its check: {}",
        m.log_text()
    );
    *s.flip_part_at.lock().unwrap() = None;
    *s.hold_part_at.lock().unwrap() = None;
    let (ok, out) = cat(m.path("quiet.bin")).await;
    assert!(ok, "{}", m.log_text());
    assert!(
        out == data,
        "served byte-exact, not the first reader's pages"
    );
    drop(m);
}
