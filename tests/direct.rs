//! Objects larger than the whole cache (served by ranged reads through memory windows) under
//! the engine's rules, through the real kernel FUSE (root and /dev/fuse required): the
//! mount's connection limit, its read deadline, the whole-object CRC-64 check and
//! `--require-crc`, and readahead again on a second sequential pass over one handle. Every
//! mount is owned by a guard that unmounts even when an assertion fails; every filesystem
//! operation has a timeout.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use common::mount::*;
use common::*;

const T: Duration = Duration::from_secs(60);

/// With a 16 MiB cache, every object of these tests is larger than the cache.
const SMALL_CACHE: [&str; 2] = ["--cache-size", "16MiB"];

const WINDOW: u64 = 8 * MIB;

fn errno_of<V>(r: std::io::Result<V>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SMALL_CACHE
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_reads_stay_within_max_connections() {
    require_fuse();
    let s = Server::start().await;
    let size = 48 * MIB;
    s.put_sample("wide.bin", 71, size);
    let (mnt, cache) = dirs(&s, "maxconn");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args(&["--max-connections", "2"]));
    // 16 MiB/s per connection: a window takes half a second, so windows fetched ahead
    // would stream together if nothing held them back.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 16 * MIB);
    s.emu.reset_counters();
    let p = m.path("wide.bin");
    let got = fs_op(T, move || std::fs::read(p).unwrap()).await;
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    assert!(
        got == ossmount::sample::bytes(71, size as usize),
        "byte-exact"
    );
    let gets = s.get_ranges("wide.bin", 0);
    let asked: u64 = gets.iter().map(|(a, b)| b - a).sum();
    assert_eq!(asked, size, "every byte asked once: {gets:?}");
    let peak = s
        .emu
        .object_counters(BUCKET, "wide.bin")
        .peak_concurrent_bodies;
    assert!(
        (1..=2).contains(&peak),
        "{peak} bodies streamed at once with --max-connections 2: {gets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_direct_read_that_waits_past_its_deadline_fails_with_eio() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("slow.bin", 72, 24 * MIB);
    s.emu
        .update_faults(|f| f.stalled = vec![format!("{BUCKET}/slow.bin")]);
    let (mnt, cache) = dirs(&s, "deadline");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args(&["--read-deadline", "2s"]));
    let p = m.path("slow.bin");
    let started = std::time::Instant::now();
    let err = fs_op(Duration::from_secs(30), move || errno_of(std::fs::read(p))).await;
    let waited = started.elapsed();
    s.emu.update_faults(|f| f.stalled.clear());
    assert_eq!(err, Some(libc::EIO));
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    let log = m.log_text();
    assert!(
        log.contains("larger than the whole cache") && log.contains("read deadline"),
        "{log}"
    );
}

async fn cat(p: std::path::PathBuf) -> (bool, Vec<u8>) {
    cat_within(T, p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_crc_fails_cat_of_an_object_larger_than_the_cache() {
    require_fuse();
    let s = Server::start().await;
    let size = 24 * MIB + 77;
    s.put_sample("lie.bin", 73, size);
    s.put_sample("true.bin", 74, size);
    s.emu
        .update_faults(|f| f.wrong_crc = vec![format!("{BUCKET}/lie.bin")]);
    let (mnt, cache) = dirs(&s, "crc");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args(&[]));
    let (ok, _) = cat(m.path("lie.bin")).await;
    assert!(!ok, "cat of an object that fails its CRC-64 must fail");
    let (ok, out) = cat(m.path("true.bin")).await;
    assert!(
        ok && out == ossmount::sample::bytes(74, size as usize),
        "byte-exact"
    );
    let log = m.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("CRC-64 mismatch") && l.contains("lie.bin")),
        "the log names the object and the mismatch: {log}"
    );
    // A running mount refreshes its status every second.
    let counted = wait_until(Duration::from_secs(30), || {
        status_json(&cache)["mounted"]["counters"]["crc_mismatches"].as_u64() == Some(1)
    });
    assert!(counted, "{}", status_json(&cache));
    // Once the server tells the truth, the next open asks again and is served.
    s.emu.update_faults(|f| f.wrong_crc.clear());
    let (ok, out) = cat(m.path("lie.bin")).await;
    assert!(ok && out == ossmount::sample::bytes(73, size as usize));
    drop(m);

    // --require-crc refuses an object without a CRC-64 at open, before any GET.
    s.put_sample("nocrc.bin", 75, size);
    s.emu
        .update_faults(|f| f.no_crc = vec![format!("{BUCKET}/nocrc.bin")]);
    let (mnt, cache) = dirs(&s, "requirecrc");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args(&["--require-crc"]));
    let p = m.path("nocrc.bin");
    assert_eq!(
        fs_op(T, move || errno_of(std::fs::read(p))).await,
        Some(libc::EIO)
    );
    assert_eq!(s.emu.object_counters(BUCKET, "nocrc.bin").get_requests, 0);
    assert!(m.log_text().contains("--require-crc"), "{}", m.log_text());
}

/// Reads the whole file through `f` in 1 MiB steps, then drops its pages from the kernel's
/// cache so the next pass is read through the mount again.
fn pass(f: Arc<std::fs::File>, size: u64) -> impl FnOnce() -> Vec<u8> {
    move || {
        let mut out = vec![0u8; size as usize];
        for (i, chunk) in out.chunks_mut(MIB as usize).enumerate() {
            f.read_exact_at(chunk, i as u64 * MIB).unwrap();
        }
        // SAFETY: fadvise on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_sequential_pass_over_one_handle_gets_its_readahead_again() {
    require_fuse();
    let s = Server::start().await;
    let size = 48 * MIB;
    s.put_sample("again.bin", 76, size);
    let want = ossmount::sample::bytes(76, size as usize);
    let (mnt, cache) = dirs(&s, "again");
    let m = Mount::start(&s, &url(), &mnt, &cache, &args(&[]));
    let p = m.path("again.bin");
    let f = Arc::new(fs_op(T, move || std::fs::File::open(p).unwrap()).await);
    // 16 MiB/s per connection: a window takes half a second, so windows fetched ahead
    // stream together.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 16 * MIB);
    let first = fs_op(T, pass(f.clone(), size)).await;
    assert!(first == want, "first pass byte-exact");
    s.emu.reset_counters();
    let second = fs_op(T, pass(f.clone(), size)).await;
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    assert!(second == want, "second pass byte-exact");
    let gets = s.get_ranges("again.bin", 0);
    // Read through the mount again, by whole windows, each asked once (a window still held
    // from the end of the first pass may serve the second without a GET).
    let mut starts: Vec<u64> = gets.iter().map(|(a, _)| *a).collect();
    starts.sort();
    starts.dedup();
    assert!(
        starts.len() == gets.len() && gets.len() as u64 >= size / WINDOW - 2,
        "{gets:?}"
    );
    assert!(
        gets.iter().all(|(a, b)| a % WINDOW == 0 && b - a == WINDOW),
        "{gets:?}"
    );
    // Windows fetched ahead stream beside the one read: more than the kernel's own
    // readahead (1 MiB, at most two windows) could ever ask for at once.
    let peak = s
        .emu
        .object_counters(BUCKET, "again.bin")
        .peak_concurrent_bodies;
    assert!(
        peak >= 3,
        "at most {peak} windows streamed at once: {gets:?}"
    );
    drop(f);
    drop(m);
}
