//! Datasets through the real kernel mount (root and /dev/fuse): the workloads of many files
//! and huge directories, each on a fresh mount (cold metadata), against the emulator on
//! loopback. Prints one table:
//!
//! - `ls -l` of a directory of `--keys` keys, cold and warm, beside `ossmount ls` of the same
//!   keys (the client alone: what listing costs);
//! - `stat` of one file in an unlisted directory of `--huge` keys: requests made and time;
//! - `find` over `--tree-dirs` × `--tree-files` keys: time and the mount's peak RSS;
//! - `cat` of `--small` 4 KiB files one after another, beside one GET's round trip, on
//!   loopback and with `--latency` ms added to every request (an emulated distant link).
//!
//! Medians of `--rounds` (each a fresh mount process), cases interleaved. `--memory-limit
//! MIB` mounts with that memory target (default: none given, so the node's own default);
//! `--only-find` runs the `find` case alone (`--walk 'ls -lR'` walks the tree with another
//! command).
//!
//! `cargo build --release --bin ossmount && cargo run --release --example bench_datasets`
//! (defaults: 100,000 keys, 1,000,000 in the huge directory, 1,000 × 1,000 for find, 1,000
//! small files, 20 ms, 3 rounds; smaller with e.g. `-- --keys 10000 --huge 100000`).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::mount::Mount;
use common::{Server, BUCKET};

use bench::arg_number as arg;

/// `n` keys `prefix/f0000000…` whose objects are sparse files of `size` bytes: a million
/// keys cost inodes, not disk.
fn make_keys(s: &Server, prefix: &str, n: u64, size: u64) {
    let dir = s.object_path(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        let f = std::fs::File::create(dir.join(format!("f{i:07}"))).unwrap();
        f.set_len(size).unwrap();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs a shell command, asserting success; returns its stdout and the time it took.
fn timed_sh(cmd: &str) -> (String, f64) {
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{cmd} failed");
    (String::from_utf8_lossy(&out.stdout).into_owned(), secs)
}

/// The mount process's peak resident set, from /proc.
fn peak_rss_mib(m: &Mount) -> f64 {
    let pid = m.node_pid().expect("the node's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024.0
}

/// A fresh mount of the bucket on its own cache, with the metadata TTL long enough for
/// "warm" to mean warm (and `--memory-limit` when asked for).
fn mount(s: &Server, round: usize, name: &str) -> Mount {
    let base = s.scratch.path().join(format!("{name}-{round}"));
    let limit = arg("--memory-limit", 0);
    let limit = format!("{}", limit << 20);
    let mut extra = vec!["--metadata-ttl", "600s"];
    if limit != "0" {
        extra.extend(["--memory-limit", &limit]);
    }
    Mount::start(
        s,
        &format!("oss://{BUCKET}/"),
        &base.join("mnt"),
        &base.join("cache"),
        &extra,
    )
}

fn ossmount_ls(s: &Server, prefix: &str) -> (usize, f64) {
    let t = Instant::now();
    let out = Command::new(common::bin())
        .args(["ls", &format!("oss://{BUCKET}/{prefix}")])
        .envs(s.env())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "ossmount ls failed");
    (String::from_utf8_lossy(&out.stdout).lines().count(), secs)
}

/// One GET of a small object, start to last byte, as the mount's client makes it.
async fn get_round_trip(s: &Server, key: &str) -> f64 {
    let client = s.client();
    let mut v = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let mut r = client.get_object(BUCKET, key, None, None);
        while r.next_chunk().await.unwrap().is_some() {}
        v.push(t.elapsed().as_secs_f64());
    }
    median(&mut v)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys = arg("--keys", 100_000);
    let huge = arg("--huge", 1_000_000);
    let tree_dirs = arg("--tree-dirs", 1000);
    let tree_files = arg("--tree-files", 1000);
    let small = arg("--small", 1000);
    let latency = arg("--latency", 20);
    let rounds = arg("--rounds", 3) as usize;
    let only_find = std::env::args().any(|a| a == "--only-find");
    let bin = common::bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with cargo build --release --bin ossmount",
        bin.display()
    );
    let s = Server::start().await;
    let t = Instant::now();
    eprintln!("making {keys} + {huge} + {tree_dirs}×{tree_files} keys and {small} small files…");
    if !only_find {
        make_keys(&s, "big", keys, 4096);
        make_keys(&s, "huge", huge, 4096);
    }
    for d in 0..tree_dirs {
        make_keys(&s, &format!("tree/d{d:04}"), tree_files, 4096);
    }
    for i in 0..small * (!only_find as u64) {
        s.put_sample(&format!("small/s{i:04}"), i, 4096);
    }
    eprintln!("made in {:.0} s", t.elapsed().as_secs_f64());

    let mut client_ls = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut stat_time = Vec::new();
    let mut stat_requests = Vec::new();
    let mut find_time = Vec::new();
    let mut find_rss = Vec::new();
    let mut cat = [Vec::new(), Vec::new()];
    let mut rtt = [Vec::new(), Vec::new()];
    let mut small_gets = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if only_find {
            let m = mount(&s, round, "find");
            let walk = bench::arg("--walk", "find");
            let (out, secs) = timed_sh(&format!("{walk} {} | wc -l", m.path("tree").display()));
            if walk == "find" {
                assert_eq!(
                    out.trim().parse::<u64>().unwrap(),
                    1 + tree_dirs * (1 + tree_files),
                    "find sees every key"
                );
            }
            println!(
                "{walk} over {} keys in {tree_dirs} dirs: {secs:.2} s, the node's peak RSS {:.0} MiB",
                tree_dirs * tree_files,
                peak_rss_mib(&m)
            );
            continue;
        }
        let (n, secs) = ossmount_ls(&s, "big/");
        assert_eq!(n as u64, keys, "ossmount ls lists every key");
        client_ls.push(secs);

        let m = mount(&s, round, "ls");
        let ls = format!("ls -l {} | wc -l", m.path("big").display());
        let (out, secs) = timed_sh(&ls);
        assert_eq!(
            out.trim().parse::<u64>().unwrap(),
            keys + 1,
            "ls -l shows every key"
        );
        cold.push(secs);
        let (_, secs) = timed_sh(&ls);
        warm.push(secs);
        drop(m);

        let m = mount(&s, round, "stat");
        timed_sh(&format!("stat {} >/dev/null", m.path("huge").display()));
        let before = s.emu.totals().requests;
        let (_, secs) = timed_sh(&format!(
            "stat {} >/dev/null",
            m.path(&format!("huge/f{:07}", huge / 2)).display()
        ));
        stat_requests.push((s.emu.totals().requests - before) as f64);
        stat_time.push(secs);
        drop(m);

        let m = mount(&s, round, "find");
        let (out, secs) = timed_sh(&format!("find {} | wc -l", m.path("tree").display()));
        assert_eq!(
            out.trim().parse::<u64>().unwrap(),
            1 + tree_dirs * (1 + tree_files),
            "find sees every key"
        );
        find_time.push(secs);
        find_rss.push(peak_rss_mib(&m));
        drop(m);

        for (i, ms) in [0, latency].into_iter().enumerate() {
            s.emu.update_faults(|f| f.latency_ms = ms);
            rtt[i].push(get_round_trip(&s, "small/s0000").await);
            let m = mount(&s, round, &format!("cat{i}"));
            let before = s.emu.totals();
            let (out, secs) = timed_sh(&format!(
                "cd {} && cat s* | wc -c",
                m.path("small").display()
            ));
            assert_eq!(out.trim().parse::<u64>().unwrap(), small * 4096);
            let after = s.emu.totals();
            small_gets.push((after.get_requests - before.get_requests) as f64 / small as f64);
            cat[i].push(secs / small as f64);
            drop(m);
        }
        s.emu.update_faults(|f| f.latency_ms = 0);
    }

    if only_find {
        s.emu.shutdown().await;
        return;
    }
    let ls_client = median(&mut client_ls);
    let ls_cold = median(&mut cold);
    let ls_warm = median(&mut warm);
    println!(
        "\ndatasets through the mount, loopback emulator, median of {rounds} (fresh mount each)\n"
    );
    println!("| case | median | target | |");
    println!("|---|---:|---:|---|");
    println!("| `ossmount ls` of {keys} keys (the client alone) | {ls_client:.2} s | | |");
    let target = 1.25 * ls_client + 1.0;
    println!(
        "| `ls -l` of {keys} keys, cold | {ls_cold:.2} s | ≤ {target:.2} s | {} |",
        if ls_cold <= target { "met" } else { "MISSED" }
    );
    println!("| `ls -l` of {keys} keys, warm | {ls_warm:.2} s | | |");
    let (st, sr) = (median(&mut stat_time), median(&mut stat_requests));
    println!(
        "| `stat` in an unlisted dir of {huge} keys | {:.1} ms, {sr:.0} requests | ≤ 2 requests | {} |",
        st * 1e3,
        if sr <= 2.0 { "met" } else { "MISSED" }
    );
    let (ft, fr) = (median(&mut find_time), median(&mut find_rss));
    println!(
        "| `find` over {} keys in {tree_dirs} dirs | {ft:.2} s, peak RSS {fr:.0} MiB | RSS < 1024 MiB | {} |",
        tree_dirs * tree_files,
        if fr < 1024.0 { "met" } else { "MISSED" }
    );
    for (i, ms) in [0, latency].into_iter().enumerate() {
        let (c, r) = (median(&mut cat[i]), median(&mut rtt[i]));
        let target = 1.5 * r + 0.001;
        println!(
            "| `cat` of {small} × 4 KiB, +{ms} ms per request: per file | {:.2} ms (one GET: {:.2} ms) | ≤ {:.2} ms | {} |",
            c * 1e3,
            r * 1e3,
            target * 1e3,
            if c <= target { "met" } else { "MISSED" }
        );
    }
    println!(
        "\nGET requests per small file: {:.2}",
        median(&mut small_gets)
    );
    s.emu.shutdown().await;
}
