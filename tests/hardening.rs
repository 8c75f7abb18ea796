//! Defects a line-by-line review of the engine found under concurrency and at the edges, each
//! provoked on purpose through the real kernel FUSE (root and /dev/fuse required): concurrent
//! readers of a rotten cached part, a split with every connection taken, a footer read of an
//! object being fetched whole, and reopens of complete entries. Every mount is owned by a
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
