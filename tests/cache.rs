//! The cache as users live with it, through real mounts: capacity and LRU eviction measured
//! with du, status and xattrs after a SIGKILL, prefetch then zero-request reads, and an object
//! larger than the whole cache.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;
use ossmount::hydrate::Checkpoint;

fn du_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output_within(Duration::from_secs(60), "du")
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_cache_stays_under_its_limit_and_evicts_lru_first() {
    require_fuse();
    let s = Server::start().await;
    for (i, k) in ["a.bin", "b.bin", "c.bin", "d.bin"].iter().enumerate() {
        s.put_sample(k, 100 + i as u64, 3 * MIB);
    }
    let (mnt, cache) = dirs(&s, "lru");
    let limit = 8 * MIB;
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--cache-size", "8MiB", "--part-size", "1MiB"],
    );
    // `a` stays open the whole time, read in steps between the others.
    let p = m.path("a.bin");
    let a = fs_op(Duration::from_secs(30), move || {
        std::fs::File::open(p).unwrap()
    })
    .await;
    let a = std::sync::Arc::new(a);
    let mut a_bytes = vec![0u8; (3 * MIB) as usize];
    let mut max_du = 0;
    for (step, other) in ["b.bin", "c.bin", "d.bin"].iter().enumerate() {
        let p = m.path(other);
        let data = fs_op(Duration::from_secs(30), move || std::fs::read(p).unwrap()).await;
        assert!(
            data == std::fs::read(s.object_path(other)).unwrap(),
            "{other}"
        );
        let f = a.clone();
        let off = step as u64 * MIB;
        let chunk = fs_op(Duration::from_secs(30), move || {
            let mut b = vec![0u8; MIB as usize];
            f.read_exact_at(&mut b, off).unwrap();
            b
        })
        .await;
        a_bytes[off as usize..(off + MIB) as usize].copy_from_slice(&chunk);
        max_du = max_du.max(du_bytes(&cache));
    }
    assert!(
        a_bytes == std::fs::read(s.object_path("a.bin")).unwrap(),
        "the open reader was never broken"
    );
    assert!(
        max_du <= limit,
        "cache dir grew to {max_du} bytes, limit {limit}"
    );
    // b was the least recently used entry not open: it went first, then c. (A read can
    // finish before its entry's record is written: the record follows within moments.)
    let keys = |st: &serde_json::Value| {
        let mut keys: Vec<String> = st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    };
    let settled = wait_until(Duration::from_secs(30), || {
        keys(&status_json(&cache)) == ["a.bin", "d.bin"]
    });
    let st = status_json(&cache);
    assert!(settled, "entries {:?}: {st}", keys(&st));
    let evictions = st["mounted"]["counters"]["evictions"].as_u64();
    assert!(
        wait_until(Duration::from_secs(30), || status_json(&cache)["mounted"]
            ["counters"]["evictions"]
            .as_u64()
            == Some(2)),
        "evictions: {evictions:?}"
    );
    drop(a);
    let mut m = m;
    let code = tokio::task::spawn_blocking(move || {
        let st = m.unmount();
        (st, m.log_text())
    })
    .await
    .unwrap();
    assert!(code.0.success());
    assert!(
        code.1.contains("2 evictions"),
        "the unmount line has the counters: {}",
        code.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_and_xattrs_agree_with_the_checkpoint_after_sigkill() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("part.bin", 5, 24 * MIB);
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 4 * MIB);
    let (mnt, cache) = dirs(&s, "status");
    let mut m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        // Opening alone starts the whole hydration only with --hydrate open.
        &["--part-size", "1MiB", "--threads", "2", "--hydrate", "open"],
    );
    let p = m.path("part.bin");
    let f = fs_op(Duration::from_secs(10), move || {
        std::fs::File::open(p).unwrap()
    })
    .await;
    assert!(wait_until(Duration::from_secs(30), || entry_checkpoints(
        &cache
    )
    .iter()
    .any(|c| c.parts_present() >= 5)));
    // A running mount refreshes its status every second.
    let shows_hydrating = wait_until(Duration::from_secs(30), || {
        let st = status_json(&cache);
        st["mounted"]["pid"].as_u64().is_some() && st["entries"][0]["state"] == "hydrating"
    });
    assert!(shows_hydrating, "{}", status_json(&cache));
    m.kill9();
    drop(f);
    let ckpt: Checkpoint = entry_checkpoints(&cache).pop().unwrap();
    let st = status_json(&cache);
    let e = &st["entries"][0];
    assert!(st["mounted"].is_null(), "{st}");
    assert_eq!(e["key"], "part.bin");
    assert_eq!(e["state"], "partial");
    assert_eq!(
        e["parts_present"].as_u64().unwrap() as usize,
        ckpt.parts_present()
    );
    assert_eq!(e["parts_total"].as_u64().unwrap(), 24);
    assert_eq!(e["bytes_present"].as_u64().unwrap(), ckpt.bytes_present());

    // Remounted, before any open, the file's xattrs show the same numbers.
    s.emu
        .update_faults(|f| f.stalled = vec![format!("{BUCKET}/part.bin")]);
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
    let p = m.path("part.bin");
    let want = format!("{}/24 parts", ckpt.parts_present());
    let (hyd, cached, etag, other) = fs_op(Duration::from_secs(10), move || {
        (
            getxattr(&p, "user.ossmount.hydration"),
            getxattr(&p, "user.ossmount.cached"),
            getxattr(&p, "user.ossmount.etag"),
            [
                getxattr_errno(&p, "user.other"),
                getxattr_errno(&p, "system.posix_acl_access"),
                getxattr_errno(&p, "security.selinux"),
            ],
        )
    })
    .await;
    // ACLs and security labels are "not supported" (so `ls -l` stops asking for them);
    // other names simply do not exist.
    assert_eq!(
        other,
        [
            Some(libc::ENODATA),
            Some(libc::EOPNOTSUPP),
            Some(libc::EOPNOTSUPP)
        ]
    );
    assert_eq!(hyd.as_deref(), Some(want.as_str()));
    assert_eq!(cached.as_deref(), Some("partial"));
    assert_eq!(etag.as_deref(), Some(ckpt.etag.as_str()));
    let listing = Command::new("getfattr")
        .arg("-d")
        .arg(m.path("part.bin"))
        .output_within(Duration::from_secs(30), "getfattr -d");
    if let Ok(out) = listing {
        // getfattr (package attr) is optional on the machine; when present it lists all three.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("user.ossmount.hydration"), "{text}");
    }
    s.emu.update_faults(|f| f.stalled.clear());
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetched_files_are_served_with_zero_requests() {
    require_fuse();
    let s = Server::start().await;
    let keys: Vec<String> = (0..6)
        .map(|i| format!("pre/dir{}/f{i}.bin", i % 2))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        s.put_sample(k, 500 + i as u64, 2 * MIB + i as u64 * 1000);
    }
    s.put_sample("pre/huge.bin", 9, 64 * MIB);
    let (mnt, cache) = dirs(&s, "prefetch");
    let (status, text) = prefetch_cli(
        &s,
        "oss://test-bucket/pre/",
        &cache,
        &["--cache-size", "32MiB", "--part-size", "1MiB"],
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(
        text.contains("not prefetched (does not fit") && text.contains("pre/huge.bin"),
        "{text}"
    );
    assert_eq!(
        s.emu.object_counters(BUCKET, "pre/huge.bin").get_requests,
        0,
        "huge.bin was not half-fetched"
    );
    let st = status_json(&cache);
    assert_eq!(st["complete_entries"].as_u64(), Some(6), "{st}");

    s.emu.reset_counters();
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--cache-size", "32MiB", "--part-size", "1MiB"],
    );
    // Listed directories (as a shell's glob lists them): the listing confirms each
    // version, so the files open with no request of their own.
    for dir in ["pre/dir0", "pre/dir1"] {
        let p = m.path(dir);
        fs_op(Duration::from_secs(20), move || {
            std::fs::read_dir(p).unwrap().count()
        })
        .await;
    }
    for k in &keys {
        let p = m.path(k);
        let got = fs_op(Duration::from_secs(20), move || std::fs::read(p).unwrap()).await;
        assert!(got == std::fs::read(s.object_path(k)).unwrap(), "{k}");
        let c = s.emu.object_counters(BUCKET, k);
        assert_eq!(c.requests, 0, "{k} was requested: {c:?}");
    }
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_larger_than_the_cache_reads_end_to_end() {
    require_fuse();
    let s = Server::start().await;
    let size: u64 = 5 << 30;
    let seed = 55;
    s.put_sample("five-gib.bin", seed, size);
    let (mnt, cache) = dirs(&s, "huge");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--cache-size", "1GiB"]);
    let p = m.path("five-gib.bin");
    let got = fs_op(Duration::from_secs(600), move || {
        use sha2::Digest;
        use std::io::Read;
        let mut f = std::fs::File::open(p).unwrap();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        (n, hex::encode(h.finalize()))
    })
    .await;
    let want = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < size {
            let k = (size - off).min(buf.len() as u64) as usize;
            ossmount::sample::fill(seed, off, &mut buf[..k]);
            h.update(&buf[..k]);
            off += k as u64;
        }
        hex::encode(h.finalize())
    };
    assert_eq!(got, (size, want));
    assert!(
        du_bytes(&cache) < 1 << 20,
        "nothing of it was kept in the cache"
    );
    drop(m);
    let _ = std::fs::remove_file(s.object_path("five-gib.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequential_reader_of_an_object_larger_than_the_cache_gets_parallel_readahead() {
    require_fuse();
    let s = Server::start().await;
    let size = 96 * MIB;
    s.put_sample("wide.bin", 61, size);
    let (mnt, cache) = dirs(&s, "wide");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--cache-size", "16MiB"]);
    let p = m.path("wide.bin");
    fs_op(Duration::from_secs(20), move || {
        std::fs::metadata(p).unwrap()
    })
    .await;
    // 8 MiB/s per connection: one 8 MiB window takes a second to arrive.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 8 * MIB);
    s.emu.reset_counters();
    let from = 0;
    let p = m.path("wide.bin");
    let got = fs_op(Duration::from_secs(120), move || std::fs::read(p).unwrap()).await;
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    assert!(
        got == ossmount::sample::bytes(61, size as usize),
        "byte-exact"
    );
    let gets = s.get_ranges("wide.bin", from);
    // Every byte asked for once: reads arriving out of order neither restart windows nor
    // fetch a range twice.
    let asked: u64 = gets.iter().map(|(a, b)| b - a).sum();
    assert_eq!(asked, size, "{gets:?}");
    assert_eq!(gets.len(), 12, "8 MiB windows: {gets:?}");
    // The windows ahead streamed together (each takes a second at 8 MiB/s), not one after
    // another as a single stream would.
    let peak = s
        .emu
        .object_counters(BUCKET, "wide.bin")
        .peak_concurrent_bodies;
    assert!(
        peak >= 4,
        "at most {peak} windows streamed at once: {gets:?}"
    );
    // A random reader gets its bytes from a GET that starts at its own page, not at the
    // window's start, and nothing ahead of it.
    s.put_sample("random.bin", 62, size);
    s.emu.reset_counters();
    let p = m.path("random.bin");
    let offset = 50 * MIB + 5 * MIB + 12_345;
    let got = fs_op(Duration::from_secs(30), move || {
        let f = std::fs::File::open(p).unwrap();
        let mut b = vec![0u8; 1000];
        f.read_exact_at(&mut b, offset).unwrap();
        b
    })
    .await;
    let mut want = vec![0u8; 1000];
    ossmount::sample::fill(62, offset, &mut want);
    assert_eq!(got, want);
    let gets = s.get_ranges("random.bin", 0);
    assert_eq!(gets, vec![(offset / 4096 * 4096, 56 * MIB)]);
    assert!(
        m.log_text().contains("larger than the whole cache"),
        "served by ranged reads: {}",
        m.log_text()
    );
    drop(m);
}
