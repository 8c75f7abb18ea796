//! Defects a line-by-line review of the engine found under concurrency and at the edges, each
//! provoked on purpose through the real kernel FUSE (root and /dev/fuse required): concurrent
//! readers of a rotten cached part, a split with every connection taken, a footer read of an
//! object being fetched whole, reopens of complete entries, and several processes (behind a
//! barrier) reading one cold file at once: slices out of one mapping, or all from the start. Every mount is owned by a
//! guard that unmounts even when an assertion fails; every filesystem operation has a timeout.

mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::mount::*;
use common::*;

const T: Duration = Duration::from_secs(30);

fn data_file(cache: &std::path::Path) -> PathBuf {
    std::fs::read_dir(cache.join("entries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .expect("a cache entry")
}

fn flip_byte(file: &std::path::Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

/// `len` bytes at `at` read with O_DIRECT (each read reaches the mount, none is merged in
/// the page cache), into a page-aligned buffer.
fn read_direct(path: &std::path::Path, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut raw = vec![0u8; len + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + len];
    f.read_exact_at(buf, at)?;
    Ok(buf.to_vec())
}

fn counter(cache: &std::path::Path, name: &str) -> u64 {
    status_json(cache)["mounted"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// Before: two reads checking one rotten part at once, the loser found nothing left to
/// check and served the rotten bytes from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_a_rotten_cached_part_never_serve_its_bytes() {
    require_fuse();
    let s = Server::start().await;
    let size = 32 * MIB;
    s.put_sample("rot.bin", 61, size);
    let want = Arc::new(ossmount::sample::bytes(61, size as usize));
    let (mnt, cache) = dirs(&s, "rot-race");
    // Only the start is fetched: the entry stays partial, so reads (not open's whole-file
    // check) meet the rotten part.
    let args = [
        "--part-size",
        "1MiB",
        "--hydrate",
        "read",
        "--no-passthrough",
    ];
    {
        let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
        let p = m.path("rot.bin");
        fs_op(T, move || read_direct(&p, 0, 2 * MIB as usize).unwrap()).await;
        m.unmount();
    }
    const READERS: usize = 8;
    let rotten = MIB + 12_345;
    for round in 0..6 {
        flip_byte(&data_file(&cache), rotten);
        let before = s.emu.object_counters(BUCKET, "rot.bin").body_bytes;
        let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
        let p = m.path("rot.bin");
        let barrier = Arc::new(Barrier::new(READERS));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (p, barrier) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    read_direct(&p, MIB, 64 << 10)
                })
            })
            .collect();
        let got = fs_op(T, move || {
            readers
                .into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<_>>()
        })
        .await;
        for (i, g) in got.into_iter().enumerate() {
            let g = g.unwrap_or_else(|e| panic!("round {round}, reader {i}: {e}"));
            assert!(
                g == want[MIB as usize..(MIB + (64 << 10)) as usize],
                "round {round}, reader {i} got the rotten bytes"
            );
        }
        let refetched = s.emu.object_counters(BUCKET, "rot.bin").body_bytes - before;
        assert!(
            refetched >= 64 << 10,
            "round {round}: the rotten part was fetched again"
        );
        m.unmount();
    }
}

/// Before: with one connection, the split's GET waited for a connection its own part's
/// stream held while that stream waited for the split: the mount never fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_far_read_with_every_connection_taken_waits_for_the_stream_not_forever() {
    require_fuse();
    let s = Server::start().await;
    let size = 16 * MIB;
    s.put_sample("one.bin", 62, size);
    s.put_sample("other.bin", 63, MIB);
    let (mnt, cache) = dirs(&s, "one-connection");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &[
            "--part-size",
            "8MiB",
            "--hydrate",
            "read",
            "--max-connections",
            "1",
        ],
    );
    for name in ["one.bin", "other.bin"] {
        let p = m.path(name);
        fs_op(T, move || std::fs::metadata(p).unwrap()).await;
    }
    // 2 MiB/s per connection: the stream reaches 6 MiB in about 3 s.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 2 * MIB);
    let far = 6 * MIB + 321;
    let (one, other) = (m.path("one.bin"), m.path("other.bin"));
    let (first, ahead, whole_other) = fs_op(Duration::from_secs(45), move || {
        let f = std::fs::File::open(&one).unwrap();
        let mut a = vec![0u8; 4096];
        f.read_exact_at(&mut a, 0).unwrap();
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, far).unwrap();
        // And the mount still fetches: another file reads whole.
        (a, b, std::fs::read(&other).unwrap())
    })
    .await;
    let want = ossmount::sample::bytes(62, size as usize);
    assert!(first == want[..4096]);
    assert!(ahead == want[far as usize..far as usize + 4096]);
    assert!(whole_other == ossmount::sample::bytes(63, MIB as usize));
    assert!(
        s.emu.totals().peak_concurrent_bodies <= 1,
        "one connection at most: {:?}",
        s.emu.totals()
    );
}

/// Before: with the whole object being fetched, a read that reached the end waited for
/// every part and the whole-object check: a footer cost the whole object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_footer_read_returns_before_the_object_is_fetched_whole() {
    require_fuse();
    let s = Server::start().await;
    let size = 64 * MIB + 777;
    s.put_sample("table.parquet", 64, size);
    let (mnt, cache) = dirs(&s, "footer");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--part-size", "8MiB", "--hydrate", "open", "--threads", "2"],
    );
    let p = m.path("table.parquet");
    fs_op(T, {
        let p = p.clone();
        move || std::fs::metadata(p).unwrap()
    })
    .await;
    // 2 MiB/s per connection: the whole object takes many seconds, its last 4 KiB one GET.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 2 * MIB);
    let footer_at = size - 4096;
    let footer = fs_op(T, {
        let p = p.clone();
        move || {
            let f = std::fs::File::open(&p).unwrap();
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, footer_at).unwrap();
            b
        }
    })
    .await;
    let fetched_then = s.emu.object_counters(BUCKET, "table.parquet").body_bytes;
    let want = ossmount::sample::bytes(64, size as usize);
    assert!(footer == want[footer_at as usize..]);
    assert!(
        fetched_then < size / 2,
        "the footer waited for {fetched_then} of {size} bytes"
    );
    // The same object read whole through another handle: byte-exact, verified at its end.
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    let whole = fs_op(Duration::from_secs(60), move || std::fs::read(p).unwrap()).await;
    assert!(whole == want);
}

/// Before: a complete entry's checked state died with its hydration, so every reopen read
/// and CRC'd the whole file again; and a small file past its TTL was fetched again in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_a_complete_entry_reads_nothing_back_and_asks_before_refetching() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("big.bin", 65, 8 * MIB);
    s.put_sample("small.txt", 66, 1000);
    let (mnt, cache) = dirs(&s, "reopen");
    let args = [
        "--part-size",
        "1MiB",
        "--metadata-ttl",
        "1s",
        "--no-passthrough",
    ];
    {
        let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
        for name in ["big.bin", "small.txt"] {
            let p = m.path(name);
            fs_op(T, move || std::fs::read(p).unwrap()).await;
        }
        m.unmount();
    }
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    let big = m.path("big.bin");
    let want = ossmount::sample::bytes(65, 8 * MIB as usize);
    for _ in 0..4 {
        let p = big.clone();
        let got = fs_op(T, move || std::fs::read(p).unwrap()).await;
        assert!(got == want);
    }
    // status.json is refreshed every second: wait until it shows the four opens.
    assert!(
        wait_until(Duration::from_secs(30), || counter(&cache, "opens") >= 4),
        "{}",
        status_json(&cache)
    );
    assert_eq!(
        counter(&cache, "parts_checked"),
        8,
        "each cached part read back once in the mount's life, not at every open"
    );

    let small = m.path("small.txt");
    let p = small.clone();
    fs_op(T, move || std::fs::read(p).unwrap()).await;
    let before = s.emu.object_counters(BUCKET, "small.txt");
    std::thread::sleep(Duration::from_millis(1500)); // past the metadata TTL
    let got = fs_op(T, move || std::fs::read(small).unwrap()).await;
    assert!(got == ossmount::sample::bytes(66, 1000));
    let after = s.emu.object_counters(BUCKET, "small.txt");
    assert_eq!(
        after.body_bytes - before.body_bytes,
        0,
        "a complete small file is asked about, not fetched again"
    );
    assert!(after.head_requests > before.head_requests, "{after:?}");
}

/// Set in a re-executed test binary: `PATH OFFSET LEN SEED` of the slice it copies out of
/// a mapping (the child's side of the mmap test below).
const MMAP_SLICE_CHILD: &str = "OSSMOUNT_TEST_MMAP_SLICE";

/// The child's side: maps the whole file read-only, says `ready`, waits for a line on stdin
/// (the barrier), copies its slice out in 256 KiB pieces (page faults through the mount) and
/// checks every byte against the object's.
fn copy_slice_out_of_a_mapping(spec: &str) {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let f: Vec<&str> = spec.split(' ').collect();
    let (path, offset, len, seed) = (
        f[0],
        f[1].parse::<usize>().unwrap(),
        f[2].parse::<usize>().unwrap(),
        f[3].parse::<u64>().unwrap(),
    );
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file kept open until the munmap below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert!(base != libc::MAP_FAILED, "mmap of {path} failed");
    // SAFETY: the mapping is `size` bytes long and lives until the munmap below.
    let mapped = unsafe { std::slice::from_raw_parts(base as *const u8, size) };
    println!("ready");
    std::io::stdout().flush().unwrap();
    std::io::stdin()
        .lock()
        .read_line(&mut String::new())
        .unwrap();
    let mut copy = vec![0u8; 256 << 10];
    let mut want = vec![0u8; 256 << 10];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(copy.len());
        copy[..n].copy_from_slice(&mapped[at..at + n]);
        ossmount::sample::fill(seed, at as u64, &mut want[..n]);
        assert!(
            copy[..n] == want[..n],
            "bytes at {at} differ from the object's"
        );
        at += n;
    }
    // SAFETY: unmapping the mapping made above, no longer used.
    unsafe { libc::munmap(base, size) };
    println!("copied {len} bytes at {offset}, all the object's");
}

/// Children that each print `ready` and then wait for a line on stdin: they are released
/// together once all are ready (bounded), so their reads reach the mount at the same time.
/// Each must exit with success; returns what each printed after `ready`.
fn release_together(children: &mut [std::process::Child]) -> Vec<Vec<String>> {
    use std::io::{BufRead, Write};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (rest_tx, rest_rx) = std::sync::mpsc::channel();
    for (i, c) in children.iter_mut().enumerate() {
        let out = c.stdout.take().unwrap();
        let (ready_tx, rest_tx) = (ready_tx.clone(), rest_tx.clone());
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(out).lines();
            // The test harness's "test NAME ... " may share the line.
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.ends_with("ready"));
            let _ = ready_tx.send(ready);
            let _ = rest_tx.send((i, lines.map_while(Result::ok).collect::<Vec<_>>()));
        });
    }
    for _ in 0..children.len() {
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a child did not get ready within 60 s");
        assert!(ready, "a child ended before it was ready");
    }
    for c in children.iter_mut() {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    for c in children.iter_mut() {
        let st = wait_within(c, Duration::from_secs(120), "a reader process");
        assert!(st.success(), "a reader process failed: {st}");
    }
    let mut printed = vec![Vec::new(); children.len()];
    for _ in 0..children.len() {
        let (i, rest) = rest_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a child's output did not end");
        printed[i] = rest;
    }
    printed
}

/// Tensor-parallel ranks loading one model: four processes (not threads: each has its own
/// mapping, page faults and readahead) map one cold file through the mount and copy their
/// quarters out at once. Every byte is the object's, and the object is fetched once: at most
/// one part more per reader (a reader's first read-around may start inside its neighbour's
/// quarter), however the four streams' reads interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_copying_their_quarters_out_of_one_mapping_fetch_the_object_once() {
    if let Ok(spec) = std::env::var(MMAP_SLICE_CHILD) {
        return copy_slice_out_of_a_mapping(&spec);
    }
    require_fuse();
    let s = Server::start().await;
    const SEED: u64 = 71;
    let size = 48 * MIB + 12_345;
    s.put_sample("model.bin", SEED, size);
    let (mnt, cache) = dirs(&s, "mmap-quarters");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
    let p = m.path("model.bin");
    let q = p.clone();
    assert_eq!(
        fs_op(T, move || std::fs::metadata(q).unwrap().len()).await,
        size
    );
    // Slow enough that the four streams overlap for a while.
    s.emu.update_faults(|f| {
        f.latency_ms = 5;
        f.bandwidth_per_connection = 8 * MIB;
    });
    let before = s.emu.object_counters(BUCKET, "model.bin");
    let quarter = size.div_ceil(4);
    let me = std::env::current_exe().unwrap();
    let name = "four_processes_copying_their_quarters_out_of_one_mapping_fetch_the_object_once";
    let mut children: Vec<_> = (0..4)
        .map(|i| {
            let (a, b) = (i * quarter, ((i + 1) * quarter).min(size));
            std::process::Command::new(&me)
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env(
                    MMAP_SLICE_CHILD,
                    format!("{} {a} {} {SEED}", p.display(), b - a),
                )
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let printed = fs_op(Duration::from_secs(200), move || {
        release_together(&mut children)
    })
    .await;
    for (i, lines) in printed.iter().enumerate() {
        assert!(
            lines.iter().any(|l| l.starts_with("copied ")),
            "reader {i} did not copy its quarter: {lines:?}"
        );
    }
    s.emu.update_faults(|f| {
        f.latency_ms = 0;
        f.bandwidth_per_connection = 0;
    });
    let after = s.emu.object_counters(BUCKET, "model.bin");
    let fetched = after.body_bytes - before.body_bytes;
    assert!(
        fetched >= size && fetched <= size + 4 * MIB,
        "fetched {fetched} bytes for an object of {size}: {after:?}"
    );
    assert!(
        after.peak_concurrent_bodies >= 4,
        "the four readers' fetches overlapped: {after:?}"
    );
}

/// Several jobs of one node loading one model: four processes `cat` one cold file from the
/// start, released together. Each gets the object's bytes, and the object is fetched once:
/// their reads share one hydration (and the kernel's page cache), not four.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_reading_one_file_from_the_start_share_one_fetch() {
    require_fuse();
    let s = Server::start().await;
    let size = 40 * MIB + 4321;
    s.put_sample("model.bin", 72, size);
    let (mnt, cache) = dirs(&s, "same-start");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
    let p = m.path("model.bin");
    let q = p.clone();
    assert_eq!(
        fs_op(T, move || std::fs::metadata(q).unwrap().len()).await,
        size
    );
    s.emu.update_faults(|f| {
        f.latency_ms = 5;
        f.bandwidth_per_connection = 8 * MIB;
    });
    let before = s.emu.object_counters(BUCKET, "model.bin");
    let outs: Vec<PathBuf> = (0..4)
        .map(|i| s.scratch.path().join(format!("copy-{i}")))
        .collect();
    // Each shell says it is ready, waits for the barrier's line, then becomes `cat`.
    let mut children: Vec<_> = outs
        .iter()
        .map(|out| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(r#"echo ready; read go; exec cat "$0" > "$1""#)
                .arg(&p)
                .arg(out)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs_op(Duration::from_secs(200), move || {
        release_together(&mut children)
    })
    .await;
    s.emu.update_faults(|f| {
        f.latency_ms = 0;
        f.bandwidth_per_connection = 0;
    });
    let want = ossmount::sample::bytes(72, size as usize);
    for out in &outs {
        assert!(
            std::fs::read(out).unwrap() == want,
            "{} differs",
            out.display()
        );
    }
    let after = s.emu.object_counters(BUCKET, "model.bin");
    let fetched = after.body_bytes - before.body_bytes;
    assert!(
        fetched >= size && fetched <= size + MIB,
        "fetched {fetched} bytes for an object of {size} read by four processes: {after:?}"
    );
    drop(m);
}
