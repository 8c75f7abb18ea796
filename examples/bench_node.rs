//! One node against one process per mount, through the real kernel mount (root and
//! /dev/fuse): N mounts read the same object at once, either all on one cache directory (one
//! node serves them) or each on its own cache directory (N nodes, as before mounts could
//! share). Prints, per N and layout, the medians (min–max) over `--rounds` of the object's
//! bytes fetched from the server, the cache's bytes on disk (`du`), the peak RSS of the
//! serving processes together, and the wall time until every reader had the whole object.
//! Each round starts from empty caches.
//!
//! `cargo build --release --bin ossmount && cargo run --release --example bench_node`
//! (defaults: a 1024 MiB object, N = 1, 2 and 4, 3 rounds; e.g. `-- --size-mib 256 --rounds 5`).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::mount::Mount;
use common::{Server, BUCKET};

const KEY: &str = "model/weights.bin";

fn du_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    total
}

fn peak_rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Reads the whole file, returning its length.
fn read_all(path: PathBuf) -> u64 {
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let got = f.read(&mut buf).unwrap();
        if got == 0 {
            return n;
        }
        n += got as u64;
    }
}

struct Round {
    fetched_mib: f64,
    cache_mib: f64,
    rss_mib: f64,
    secs: f64,
}

fn round(s: &Server, n: usize, shared: bool, tag: &str, size: u64) -> Round {
    let base = s.scratch.path().join(tag);
    let before = s.emu.object_counters(BUCKET, KEY).body_bytes;
    let caches: Vec<PathBuf> = (0..n)
        .map(|i| {
            base.join(if shared {
                "cache".into()
            } else {
                format!("cache{i}")
            })
        })
        .collect();
    let mounts: Vec<Mount> = (0..n)
        .map(|i| {
            Mount::start(
                s,
                &format!("oss://{BUCKET}/"),
                &base.join(format!("mnt{i}")),
                &caches[i],
                &[],
            )
        })
        .collect();
    let started = Instant::now();
    let readers: Vec<_> = mounts
        .iter()
        .map(|m| {
            let p = m.path(KEY);
            std::thread::spawn(move || read_all(p))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), size, "a reader got the whole object");
    }
    let secs = started.elapsed().as_secs_f64();
    let pids: BTreeSet<i32> = mounts.iter().filter_map(Mount::node_pid).collect();
    let rss_mib = pids.iter().map(|p| peak_rss_mib(*p)).sum();
    let distinct: BTreeSet<&PathBuf> = caches.iter().collect();
    let cache_bytes: u64 = distinct.iter().map(|c| du_bytes(c)).sum();
    drop(mounts);
    Round {
        fetched_mib: (s.emu.object_counters(BUCKET, KEY).body_bytes - before) as f64 / 1048576.0,
        cache_mib: cache_bytes as f64 / 1048576.0,
        rss_mib,
        secs,
    }
}

fn stat(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn stat_secs(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.2} ({:.2}–{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let size = bench::arg_number("--size-mib", 1024) << 20;
    let rounds = bench::arg_number("--rounds", 3) as usize;
    let ns: Vec<usize> = bench::arg("--mounts", "1,2,4")
        .split(',')
        .map(|n| n.parse().expect("--mounts 1,2,4"))
        .collect();
    let bin = common::bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with cargo build --release --bin ossmount",
        bin.display()
    );
    let s = Server::start().await;
    s.put_sample(KEY, 7, size);
    println!(
        "| mounts | caches | MiB fetched | MiB in cache | peak RSS MiB (all serving processes) | seconds until every reader had it |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &ns {
        // Layouts interleaved round by round: the machine's noise falls on both alike.
        let mut results: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
        for r in 0..rounds {
            for (li, shared) in [true, false].into_iter().enumerate() {
                let tag = format!("n{n}-{}-{r}", if shared { "one" } else { "each" });
                let s = &s;
                let got = tokio::task::block_in_place(|| round(s, n, shared, &tag, size));
                results[li].push(got);
            }
        }
        for (li, label) in ["one node, one cache", "a node and cache each"]
            .iter()
            .enumerate()
        {
            if n == 1 && li == 1 {
                continue; // the same thing with one mount
            }
            let rs = &results[li];
            println!(
                "| {n} | {label} | {} | {} | {} | {} |",
                stat(rs.iter().map(|r| r.fetched_mib).collect()),
                stat(rs.iter().map(|r| r.cache_mib).collect()),
                stat(rs.iter().map(|r| r.rss_mib).collect()),
                stat_secs(rs.iter().map(|r| r.secs).collect()),
            );
        }
    }
}
