//! Download throughput and memory benchmark, on the local emulator with a per-connection
//! bandwidth cap and added latency (as a real OSS endpoint behaves per connection).
//!
//! `cargo run --release --example bench_download [-- --size 512MiB --cap 32MiB --latency 20ms
//! --rounds 3 --rss-sizes 1GiB,4GiB]`
//!
//! Each download runs in a child process (this program re-executed), so its peak RSS is its
//! own (`wait4`). Throughput cases run side by side in each round; the table shows medians.

mod common;
use common::arg;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ossmount::emulator::{Emulator, EmulatorConfig, Faults};
use ossmount::hydrate::download::{resumable_download, DownloadRequest};
use ossmount::oss::OssClient;
use ossmount::size::{human_bytes, parse_duration, parse_size};

/// Child mode: one download, then exit. Prints nothing; the parent times and measures it.
async fn child(endpoint: &str, key: &str, out: &Path, part_size: u64, threads: usize) {
    let cfg = common::bench_client_config(endpoint);
    let mut req = DownloadRequest::new("bench", key, out);
    req.part_size = part_size;
    req.threads = threads;
    req.checkpoint = None;
    resumable_download(Arc::new(OssClient::new(cfg).unwrap()), &req, |_| {})
        .await
        .expect("download");
}

struct Run {
    secs: f64,
    max_rss_kib: i64,
}

fn run_child(endpoint: &str, key: &str, out: &Path, part_size: u64, threads: usize) -> Run {
    let start = Instant::now();
    // Reaped below by wait4, which is what reports the child's peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", endpoint, key])
        .arg(out)
        .args([part_size.to_string(), threads.to_string()])
        .spawn()
        .expect("spawn child");
    let mut status = 0;
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed"
    );
    let _ = std::fs::remove_file(out);
    Run {
        secs: start.elapsed().as_secs_f64(),
        max_rss_kib: usage.ru_maxrss,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(child(
            &args[2],
            &args[3],
            Path::new(&args[4]),
            args[5].parse().unwrap(),
            args[6].parse().unwrap(),
        ));
        return;
    }
    let size = parse_size(&arg("--size", "512MiB")).unwrap();
    let cap = parse_size(&arg("--cap", "32MiB")).unwrap();
    let latency = parse_duration(&arg("--latency", "20ms")).unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let rss_sizes: Vec<u64> = arg("--rss-sizes", "1GiB,4GiB")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse_size(s).unwrap())
        .collect();
    let part_size = 8 << 20;

    let dir = PathBuf::from(arg("--dir", "target/bench-download"));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bench")).unwrap();
    let out = dir.join("out.bin");
    let ensure = |key: &str, len: u64| {
        let p = root.join("bench").join(key);
        if std::fs::metadata(&p).map(|m| m.len()).ok() != Some(len) {
            eprintln!("writing {} sample object {key}...", human_bytes(len));
            ossmount::sample::write_file(&p, len ^ 0x5eed, len).unwrap();
        }
    };
    ensure("throughput.bin", size);
    for &s in &rss_sizes {
        ensure(&format!("rss-{s}.bin"), s);
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = EmulatorConfig::new(&root, common::BENCH_AK, common::BENCH_SK);
    cfg.faults = Faults {
        latency_ms: latency.as_millis() as u64,
        bandwidth_per_connection: cap,
        ..Faults::default()
    };
    let emu = rt.block_on(Emulator::start(cfg, "127.0.0.1:0")).unwrap();
    let endpoint = emu.endpoint();
    // One uncapped pass first warms the emulator's CRC cache and the page cache, so no
    // measured case pays for them.
    rt.block_on(async { emu.set_faults(Faults::default()) });
    run_child(&endpoint, "throughput.bin", &out, part_size, 16);
    rt.block_on(async {
        emu.set_faults(Faults {
            latency_ms: latency.as_millis() as u64,
            bandwidth_per_connection: cap,
            ..Faults::default()
        })
    });

    // (label, part size, threads); a part as large as the object is one single-stream GET.
    let cases: Vec<(String, u64, usize)> =
        std::iter::once(("single-stream GET".to_string(), 5u64 << 30, 1))
            .chain(
                [1usize, 3, 8, 16]
                    .into_iter()
                    .map(|t| (format!("download, {t} thread(s)"), part_size, t)),
            )
            .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, (label, ps, t)) in cases.iter().enumerate() {
            let r = run_child(&endpoint, "throughput.bin", &out, *ps, *t);
            eprintln!("round {}: {label}: {:.2}s", round + 1, r.secs);
            times[i].push(r.secs);
        }
    }
    println!(
        "\nthroughput: {} object, {} parts, cap {}/s per connection, +{} ms per request, {} rounds (medians)\n",
        human_bytes(size),
        human_bytes(part_size),
        human_bytes(cap),
        latency.as_millis(),
        rounds
    );
    println!("| case | median time | MiB/s | vs single stream |");
    println!("|---|---:|---:|---:|");
    let base = median(times[0].clone());
    for (i, (label, _, _)) in cases.iter().enumerate() {
        let m = median(times[i].clone());
        println!(
            "| {label} | {m:.2} s | {:.1} | {:.2}x |",
            size as f64 / (1 << 20) as f64 / m,
            base / m
        );
    }

    // Memory: uncapped, 16 threads, 8 MiB parts.
    rt.block_on(async { emu.set_faults(Faults::default()) });
    if !rss_sizes.is_empty() {
        println!("\npeak RSS of the downloading process (8 MiB parts, 16 threads, no cap)\n");
        println!("| object | time | MiB/s | peak RSS |");
        println!("|---|---:|---:|---:|");
    }
    for &s in &rss_sizes {
        let r = run_child(&endpoint, &format!("rss-{s}.bin"), &out, part_size, 16);
        println!(
            "| {} | {:.2} s | {:.1} | {} |",
            human_bytes(s),
            r.secs,
            s as f64 / (1 << 20) as f64 / r.secs,
            human_bytes(r.max_rss_kib as u64 * 1024)
        );
    }
    rt.block_on(emu.shutdown());
}
