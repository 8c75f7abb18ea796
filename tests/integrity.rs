//! What ossmount promises about the bytes it serves, through the real kernel FUSE (root and
//! /dev/fuse required): a CRC-64 mismatch is never served nor kept, objects without a CRC are
//! served as unverified or refused, a full disk fails reads and recovers in the same mount, a
//! new version opened beside an old passthrough handle never mixes with it, cached bytes that
//! rotted are refetched, and the cache is private. Every mount is owned by a guard that
//! unmounts even when an assertion fails; every filesystem operation has a timeout.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

const T: Duration = Duration::from_secs(30);

fn errno_of(r: std::io::Result<Vec<u8>>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn entry_state(cache: &Path, key: &str) -> Option<String> {
    status_json(cache)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .map(|e| e["state"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_crc_fails_the_read_and_is_never_kept() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("lie.bin", 41, 3 * MIB + 77);
    s.emu
        .update_faults(|f| f.wrong_crc = vec![format!("{BUCKET}/lie.bin")]);
    let (mnt, cache) = dirs(&s, "crc");
    let args = ["--part-size", "1MiB"];
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("lie.bin");
    let first = fs_op(T, move || errno_of(std::fs::read(p))).await;
    assert_eq!(first, Some(libc::EIO), "a read to the end must fail");
    // The same mount tries again from scratch on the next open: still refused.
    let p = m.path("lie.bin");
    let gets_before = s.emu.object_counters(BUCKET, "lie.bin").get_requests;
    assert_eq!(
        fs_op(T, move || errno_of(std::fs::read(p))).await,
        Some(libc::EIO)
    );
    assert!(s.emu.object_counters(BUCKET, "lie.bin").get_requests > gets_before);
    let log = m.log_text();
    assert!(
        log.contains("CRC-64 mismatch") && log.contains("lie.bin"),
        "the log names the object and the mismatch: {log}"
    );
    assert_ne!(entry_state(&cache, "lie.bin").as_deref(), Some("complete"));
    m.unmount();
    let counters = &status_json(&cache)["last_mount"]["counters"];
    assert!(
        counters["crc_mismatches"].as_u64().unwrap() >= 2,
        "{counters}"
    );

    // After a remount nothing is served from the cache: the server is asked again.
    let gets_before = s.emu.object_counters(BUCKET, "lie.bin").get_requests;
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("lie.bin");
    assert_eq!(
        fs_op(T, move || errno_of(std::fs::read(p))).await,
        Some(libc::EIO)
    );
    assert!(s.emu.object_counters(BUCKET, "lie.bin").get_requests > gets_before);
    // Once the server tells the truth, the same mount serves the object.
    s.emu.update_faults(|f| f.wrong_crc.clear());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = m.path("lie.bin");
    let data = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert_eq!(data, std::fs::read(s.object_path("lie.bin")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_without_a_crc_are_unverified_or_refused() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("nocrc.bin", 42, 2 * MIB);
    s.emu
        .update_faults(|f| f.no_crc = vec![format!("{BUCKET}/nocrc.bin")]);
    let (mnt, cache) = dirs(&s, "nocrc");
    {
        let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
        let p = m.path("nocrc.bin");
        let data = fs_op(T, move || std::fs::read(p)).await.unwrap();
        assert_eq!(data, std::fs::read(s.object_path("nocrc.bin")).unwrap());
        // The read may finish before the last record is written: the state follows.
        let p = m.path("nocrc.bin");
        let settled = fs_op(T, move || {
            wait_until(Duration::from_secs(30), || {
                getxattr(&p, "user.ossmount.cached").as_deref() == Some("unverified")
            })
        })
        .await;
        assert!(settled, "the entry ends up unverified");
        assert_eq!(
            entry_state(&cache, "nocrc.bin").as_deref(),
            Some("unverified")
        );
    }
    let (mnt2, cache2) = dirs(&s, "requirecrc");
    let m = Mount::start(&s, &url(), &mnt2, &cache2, &["--require-crc"]);
    let p = m.path("nocrc.bin");
    assert_eq!(
        fs_op(T, move || errno_of(std::fs::read(p))).await,
        Some(libc::EIO)
    );
    assert!(m.log_text().contains("--require-crc"), "{}", m.log_text());
}

/// A tmpfs of a fixed size, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(path: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status_within(Duration::from_secs(60), "mount -t tmpfs")
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", path.display());
        SmallFs(path.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_read_and_the_same_mount_recovers() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("big.bin", 43, 6 * MIB);
    let (mnt, base) = dirs(&s, "enospc");
    let small = SmallFs::new(&base, "16m");
    let cache = small.0.join("cache");
    // Fill the filesystem from outside the cache, leaving room for records but not parts.
    let filler = small.0.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    let mut chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    while let Ok(n) = f.write_at(&chunk, written) {
        written += n as u64;
        assert!(written < 64 * MIB, "the tmpfs should be full by now");
    }
    // Give back a little for the cache's own small files.
    f.set_len(written.saturating_sub(256 << 10)).unwrap();
    chunk.clear();
    let args = [
        "--part-size",
        "1MiB",
        "--cache-size",
        "1GiB",
        "--min-free-disk",
        "0",
    ];
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("big.bin");
    let err = fs_op(T, move || errno_of(std::fs::read(p))).await;
    assert!(
        matches!(err, Some(libc::ENOSPC) | Some(libc::EIO)),
        "a read with no room fails: {err:?}"
    );
    // Room again: the same mount serves the file.
    drop(f);
    std::fs::remove_file(&filler).unwrap();
    let p = m.path("big.bin");
    let data = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert_eq!(sha256(&data), sha256_file(&s.object_path("big.bin")));
    drop(m);
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_beside_an_open_old_one_never_mixes() {
    require_fuse();
    let s = Server::start().await;
    let v1 = ossmount::sample::bytes(44, (2 * MIB) as usize);
    let v2 = ossmount::sample::bytes(45, (3 * MIB) as usize);
    s.put("doc.bin", &v1);
    let (mnt, cache) = dirs(&s, "versions");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--part-size", "1MiB", "--metadata-ttl", "1s"],
    );
    let p = m.path("doc.bin");
    // Hydrate it whole, then open it again: a complete file goes to the kernel (passthrough,
    // where the kernel offers it).
    let got = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert_eq!(got, v1);
    let p = m.path("doc.bin");
    let (old, buf) = fs_op(T, move || {
        let old = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; 4096];
        old.read_exact_at(&mut buf, 4096).unwrap();
        (std::sync::Arc::new(old), buf)
    })
    .await;
    assert_eq!(buf, v1[4096..8192]);

    s.put("doc.bin", &v2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let p = m.path("doc.bin");
    let new = fs_op(T, move || std::fs::read(p)).await;
    let new = new.unwrap_or_else(|e| panic!("opening the new version failed: {e}"));
    assert_eq!(new.len(), v2.len());
    assert!(new == v2, "the new open reads the new version");
    // The old handle still reads the old version, nothing else.
    let p = m.path("doc.bin");
    let (read, md_new, md_old) = fs_op(T, move || {
        let mut buf = vec![0u8; 64 << 10];
        let read = old.read_exact_at(&mut buf, MIB).map(|()| buf);
        (read, std::fs::metadata(p).unwrap(), old.metadata().unwrap())
    })
    .await;
    let buf = read.unwrap_or_else(|e| {
        panic!(
            "the old handle's read at 1 MiB failed: {e}\n{}",
            m.log_text()
        )
    });
    assert_eq!(buf, v1[MIB as usize..MIB as usize + (64 << 10)]);
    assert_eq!(md_new.len(), v2.len() as u64);
    assert_ne!(md_new.ino(), md_old.ino());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_the_cache_is_found_and_refetched_after_remount() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("rot.bin", 46, 4 * MIB);
    let (mnt, cache) = dirs(&s, "rot");
    let args = ["--part-size", "1MiB"];
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("rot.bin");
    fs_op(T, move || std::fs::read(p)).await.unwrap();
    m.unmount();
    // Bit rot in part 2 of the complete cache file.
    let data_file = std::fs::read_dir(cache.join("entries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data_file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 2 * MIB + 12345).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, 2 * MIB + 12345).unwrap();
    drop(f);

    let before = s.emu.object_counters(BUCKET, "rot.bin");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("rot.bin");
    let data = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert_eq!(sha256(&data), sha256_file(&s.object_path("rot.bin")));
    let after = s.emu.object_counters(BUCKET, "rot.bin");
    assert_eq!(
        after.body_bytes - before.body_bytes,
        MIB,
        "exactly the rotten part is fetched again"
    );
    assert!(
        m.log_text().contains("failed its CRC-64 check"),
        "{}",
        m.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_private_and_a_foreign_one_is_refused() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("p.bin", 47, MIB + 5);
    let (mnt, cache) = dirs(&s, "private");
    {
        let m = Mount::start(&s, &url(), &mnt, &cache, &[]);
        let p = m.path("p.bin");
        fs_op(T, move || std::fs::read(p)).await.unwrap();
        // status.json is written every second.
        assert!(wait_until(Duration::from_secs(30), || cache
            .join("status.json")
            .exists()));
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("entries")), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(cache.join("entries")).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        files += 1;
    }
    assert_eq!(files, 2, "one data file and one checkpoint");
    assert_eq!(mode(&cache.join("status.json")), 0o600);
    assert_eq!(mode(&cache.join("lock")), 0o600);

    // A cache directory owned by someone else, or reached through a symlink, is refused.
    let foreign = cache.with_file_name("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(12345), Some(12345)).unwrap();
    let link = cache.with_file_name("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    for (dir, says) in [(&foreign, "owned by uid 12345"), (&link, "symbolic link")] {
        let out = refused_mount(
            Command::new(bin())
                .args(["mount", &url()])
                .arg(&mnt)
                .arg("--cache-dir")
                .arg(dir)
                .arg("--foreground")
                .envs(s.env()),
            &mnt,
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(says), "{text}");
        assert!(!is_mounted(&mnt));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_object_fails_the_old_handle_for_the_rest_and_new_opens_see_it() {
    require_fuse();
    let s = Server::start().await;
    let v1 = ossmount::sample::bytes(48, (8 * MIB) as usize);
    let v2 = ossmount::sample::bytes(49, (8 * MIB) as usize);
    s.put("moving.bin", &v1);
    let (mnt, cache) = dirs(&s, "moving");
    let args = [
        "--part-size",
        "1MiB",
        "--hydrate",
        "read",
        "--readahead",
        "1MiB",
        "--metadata-ttl",
        "1s",
    ];
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let p = m.path("moving.bin");
    let (old, buf) = fs_op(T, move || {
        let old = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; 4096];
        old.read_exact_at(&mut buf, 0).unwrap();
        (std::sync::Arc::new(old), buf)
    })
    .await;
    assert_eq!(buf, v1[..4096]);
    s.put("moving.bin", &v2);
    // Bytes the old handle does not have yet would come from another version: EIO.
    let o = old.clone();
    let err = fs_op(T, move || {
        let mut b = vec![0u8; 4096];
        o.read_exact_at(&mut b, 6 * MIB)
            .err()
            .and_then(|e| e.raw_os_error())
    })
    .await;
    assert_eq!(err, Some(libc::EIO));
    // What it has stays readable, and it is the old version.
    let buf = fs_op(T, move || {
        let mut buf = vec![0u8; 4096];
        old.read_exact_at(&mut buf, 100).unwrap();
        buf
    })
    .await;
    assert_eq!(buf, v1[100..4196]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p = m.path("moving.bin");
    let now = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert!(now == v2, "a new open reads the new version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_that_waits_past_its_deadline_fails_with_eio() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("slow.bin", 50, MIB);
    s.emu
        .update_faults(|f| f.stalled = vec![format!("{BUCKET}/slow.bin")]);
    let (mnt, cache) = dirs(&s, "deadline");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--read-deadline", "2s"]);
    let p = m.path("slow.bin");
    let started = std::time::Instant::now();
    let err = fs_op(T, move || errno_of(std::fs::read(p))).await;
    let waited = started.elapsed();
    assert_eq!(err, Some(libc::EIO));
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert!(m.log_text().contains("read deadline"), "{}", m.log_text());
    s.emu.update_faults(|f| f.stalled.clear());
}

/// A handle open on a version keeps that version's size in the kernel, whatever a later
/// listing or lookup says: a smaller new version on the server must not end the old handle's
/// reads early (the soak run caught a read at 52.9 MB of a 53.2 MB version returning 0 bytes
/// once a 50.6 MB version was listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_smaller_new_version_listed_never_cuts_short_a_handle_on_the_old_one() {
    require_fuse();
    let s = Server::start().await;
    let v1 = ossmount::sample::bytes(46, (3 * MIB) as usize);
    let v2 = ossmount::sample::bytes(47, MIB as usize);
    s.put("dir/shrinks.bin", &v1);
    let (mnt, cache) = dirs(&s, "shrinks");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--metadata-ttl", "1s"]);
    let p = m.path("dir/shrinks.bin");
    // Read whole first: the old version's bytes are cached, so only the size is at stake
    // (bytes not cached could not be fetched once the server has the new version: EIO).
    let (old, whole) = fs_op(T, move || {
        let f = std::fs::File::open(p).unwrap();
        let mut whole = vec![0u8; 3 * MIB as usize];
        f.read_exact_at(&mut whole, 0).unwrap();
        (f, whole)
    })
    .await;
    assert!(whole == v1);
    s.put("dir/shrinks.bin", &v2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The directory listed again and the name looked up again: they show the new size.
    let (dir, p) = (m.path("dir"), m.path("dir/shrinks.bin"));
    let listed = fs_op(T, move || {
        let n = std::fs::read_dir(dir).unwrap().count();
        (n, std::fs::metadata(p).map(|md| md.len()))
    })
    .await;
    assert_eq!(listed.0, 1);
    // The old handle reads its version to its end.
    let got = fs_op(T, move || {
        let mut buf = vec![0u8; 64 << 10];
        let at = 2 * MIB + 4096;
        old.read_exact_at(&mut buf, at).map(|()| buf)
    })
    .await;
    let got = got.unwrap_or_else(|e| panic!("the old handle's read past the new size: {e}"));
    let at = (2 * MIB + 4096) as usize;
    assert!(got == v1[at..at + (64 << 10)], "the old version's bytes");
}

/// An object that grows between the listing that showed it and its first open is read
/// whole: the kernel was shown the listed size, and a first open of another size must drop
/// it (before, `cat` copied 3,158,073 of 5,255,225 bytes, exit 0: a silently short copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_grown_since_its_listing_reads_whole_at_its_first_open() {
    require_fuse();
    let s = Server::start().await;
    let v1 = ossmount::sample::bytes(48, 3_158_073);
    let v2 = ossmount::sample::bytes(49, 5_255_225);
    s.put("dir/grows.bin", &v1);
    let (mnt, cache) = dirs(&s, "grows");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
    let (dir, p) = (m.path("dir"), m.path("dir/grows.bin"));
    let shown = fs_op(T, move || {
        std::fs::read_dir(dir).unwrap().for_each(drop);
        std::fs::metadata(p).unwrap().len()
    })
    .await;
    assert_eq!(shown, v1.len() as u64);
    s.put("dir/grows.bin", &v2);
    let p = m.path("dir/grows.bin");
    let got = fs_op(T, move || std::fs::read(p).unwrap()).await;
    assert_eq!(
        got.len(),
        v2.len(),
        "the first open after the change read short"
    );
    assert!(got == v2, "the new version's bytes");
}
