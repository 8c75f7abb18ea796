//! `--memory-limit`, through the real kernel FUSE (root and /dev/fuse required): a directory
//! of 200,000 keys is listed whole (every name, by `ls -f` and by `find`) by a node with a
//! 128 MiB target, whose peak resident set (`VmHWM`) stays under the target plus `SLACK`;
//! its listing, larger than the listings' share, is dropped once read; and readers of an
//! object larger than the cache keep their windows within the target. The emulator's
//! objects are empty (or sparse) files made at test time, so 200,000 keys cost inodes, not
//! disk or time. Every mount is owned by a guard that unmounts even when an assertion fails;
//! every filesystem operation has a timeout.
//!
//! `MEMORY_LIMIT_TEST_MIB=N` runs both with another target, to see them fail: with 32, the
//! 200,000 keys' nodes (about 60 MiB of RSS) are over 32 + 16 MiB; with 4096 (shares as large
//! as no target's), the listing is kept and six readers' windows reach about 220 MiB.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

const T: Duration = Duration::from_secs(120);

const KEYS: u64 = 200_000;

/// What the node holds beyond what the target shares out, which the test allows over the
/// target: the allocator's arenas (one per busy thread, each keeping some free memory) and
/// the FUSE and runtime threads' stacks. The node's own runtime (code, tokio, the HTTP
/// client), about 13 MiB after mounting, is inside the target, not in the slack.
const SLACK: u64 = 16 * MIB;

fn name(i: u64) -> String {
    format!("f{i:07}")
}

/// `n` keys `prefix/f0000000…`, empty objects.
fn make_keys(s: &Server, prefix: &str, n: u64) {
    let dir = s.object_path(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        std::fs::File::create(dir.join(name(i))).unwrap();
    }
}

/// A field of `/proc/PID/status` in bytes (`VmHWM`, `VmRSS`).
fn proc_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

/// Runs `sh -c CMD` (bounded), asserting success; its stdout's lines.
async fn lines_of(cmd: String) -> Vec<String> {
    fs_op(T, move || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output_within(T, &cmd)
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_key_directory_lists_whole_under_a_128mib_target() {
    require_fuse();
    let s = Server::start().await;
    make_keys(&s, "big", KEYS);
    let expected: BTreeSet<String> = (0..KEYS).map(name).collect();
    let limit: u64 = std::env::var("MEMORY_LIMIT_TEST_MIB")
        .map(|v| v.parse::<u64>().unwrap() * MIB)
        .unwrap_or(128 * MIB);
    let (mnt, cache) = dirs(&s, "m");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &[
            "--memory-limit",
            &limit.to_string(),
            "--metadata-ttl",
            "600s",
        ],
    );
    let pid = m.node_pid().expect("the node's pid");
    let status = status_json(&cache);
    let node = &status["mounted"];
    assert_eq!(node["pid"].as_i64(), Some(pid as i64), "{status}");
    assert_eq!(node["memory_limit"].as_u64(), Some(limit), "{status}");
    assert!(node["rss_bytes"].as_u64().unwrap() > 0, "{status}");

    // `ls -f`: readdir alone, every name once.
    let dir = m.path("big");
    let listed = lines_of(format!("ls -f {}", dir.display())).await;
    let names: BTreeSet<String> = listed
        .iter()
        .filter(|n| *n != "." && *n != "..")
        .cloned()
        .collect();
    assert_eq!(listed.len() as u64, KEYS + 2, "ls -f lists each name once");
    assert!(names == expected, "ls -f lists every name");

    // The listing (200,000 entries) is over the listings' share (a quarter of 128 MiB at
    // 256 bytes an entry: 131,072): once its handle closed, it was dropped, and `find`
    // lists the directory again instead of reading it from memory.
    let dropped = wait_until(Duration::from_secs(10), || {
        let st = status_json(&cache);
        st["mounted"]["counters"]["listings_dropped_for_memory"].as_u64() == Some(1)
            && st["mounted"]["listed_entries"].as_u64() == Some(0)
    });
    assert!(dropped, "status: {}", status_json(&cache));
    let before = s.emu.totals().list_requests;
    let found = lines_of(format!("cd {} && find big", m.mnt.display())).await;
    let names: BTreeSet<String> = found
        .iter()
        .filter_map(|p| p.strip_prefix("big/"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        found.len() as u64,
        KEYS + 1,
        "find lists the directory and each name"
    );
    assert!(names == expected, "find lists every name");
    let relisted = s.emu.totals().list_requests - before;
    assert!(
        relisted >= KEYS / 1000,
        "the listing over the share was kept: find made {relisted} list requests"
    );

    let peak = proc_bytes(pid, "VmHWM");
    let status = status_json(&cache);
    eprintln!(
        "node peak RSS {:.1} MiB with a {} MiB target (now {:.1} MiB), {relisted} list requests for find",
        peak as f64 / MIB as f64,
        limit / MIB,
        status["mounted"]["rss_bytes"].as_u64().unwrap() as f64 / MIB as f64,
    );
    assert!(
        peak <= limit + SLACK,
        "the node's peak RSS {} MiB is over the target {} MiB + {} MiB",
        peak / MIB,
        limit / MIB,
        SLACK / MIB
    );
}

/// Readers of objects larger than the cache are served through memory windows (a window
/// read and up to four fetched ahead of a sequential reader, 40 MiB a reader). Without a
/// target, six readers may hold 240 MiB of windows (the default budget is 256 MiB); with
/// a 128 MiB target the windows share 32 MiB, readers wait for memory instead of growing
/// it, and every byte still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_objects_larger_than_the_cache_keep_within_the_target() {
    require_fuse();
    const READERS: u64 = 6;
    const SIZE: u64 = 64 * MIB;
    let s = Server::start().await;
    for i in 0..READERS {
        s.put_sample(&format!("wide{i}.bin"), 100 + i, SIZE);
    }
    let limit: u64 = std::env::var("MEMORY_LIMIT_TEST_MIB")
        .map(|v| v.parse::<u64>().unwrap() * MIB)
        .unwrap_or(128 * MIB);
    let (mnt, cache) = dirs(&s, "w");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &[
            "--cache-size",
            "16MiB",
            "--memory-limit",
            &limit.to_string(),
        ],
    );
    let pid = m.node_pid().expect("the node's pid");
    // The target is node-wide: a mount joining the node with another is told so.
    let other = mnt.parent().unwrap().join("other");
    let joined = Mount::start(&s, &url(), &other, &cache, &["--memory-limit", "1GiB"]);
    let noted = wait_until(Duration::from_secs(20), || {
        joined.log_text().contains(&format!(
            "note: --memory-limit 1.0 GiB was asked for, but the node serving this cache directory uses {} for every mount",
            ossmount::size::human_bytes(limit)
        ))
    });
    assert!(noted, "{}", joined.log_text());
    assert_eq!(joined.node_pid(), Some(pid));
    drop(joined);
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let p = m.path(&format!("wide{i}.bin"));
            fs_op(T, move || std::fs::read(p).unwrap())
        })
        .collect();
    let read = futures_util::future::join_all(readers).await;
    for (i, got) in read.iter().enumerate() {
        assert!(
            *got == ossmount::sample::bytes(100 + i as u64, SIZE as usize),
            "wide{i}.bin byte-exact"
        );
    }
    let counters = &status_json(&cache)["mounted"]["counters"];
    assert!(
        counters["direct_reads"].as_u64().unwrap() > 0,
        "the objects were read through windows: {counters}"
    );
    let peak = proc_bytes(pid, "VmHWM");
    eprintln!(
        "node peak RSS {:.1} MiB with {READERS} readers through windows, {} MiB target",
        peak as f64 / MIB as f64,
        limit / MIB
    );
    assert!(
        peak <= limit + SLACK,
        "the node's peak RSS {} MiB is over the target {} MiB + {} MiB",
        peak / MIB,
        limit / MIB,
        SLACK / MIB
    );
}
