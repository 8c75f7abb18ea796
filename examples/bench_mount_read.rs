//! Reading a fully hydrated file through the mount: kernel passthrough vs every read served
//! by ossmount from its cache file. Each round mounts afresh and times the first read of the
//! file (the cache file itself is in the page cache, the mount's is empty), so the difference
//! is the FUSE round trip. Rounds alternate the two mounts.
//!
//! `cargo run --release --example bench_mount_read [-- --size 1GiB --rounds 5]` (as root)
//!
//! With `--fuse`: the FUSE settings instead (kernel readahead, background requests, request
//! threads), one changed at a time from the defaults, every read served by ossmount: one
//! reader of the file, and four readers of four quarter-size files at once.

mod common;
use common::arg;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ossmount::emulator::{Emulator, EmulatorConfig};
use ossmount::fs::fuse::FuseTuning;
use ossmount::mount::MountOptions;
use ossmount::node::run_mount;
use ossmount::oss::{OssClient, OssUrl};
use ossmount::size::{human_bytes, parse_size};

fn mounted(mnt: &Path) -> bool {
    let m = std::fs::canonicalize(mnt).unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == m.to_str())
}

fn read_all(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            return n;
        }
        n += k as u64;
    }
}

/// Mounts, runs `work` on the mountpoint, unmounts.
fn with_mount<T>(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    dir: &Path,
    passthrough: bool,
    work: impl FnOnce(&Path) -> T,
) -> T {
    with_tuned_mount(rt, endpoint, dir, passthrough, FuseTuning::default(), work)
}

fn with_tuned_mount<T>(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    dir: &Path,
    passthrough: bool,
    tuning: FuseTuning,
    work: impl FnOnce(&Path) -> T,
) -> T {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cfg = common::bench_client_config(endpoint);
    let _g = rt.enter();
    let client = Arc::new(OssClient::new(cfg).unwrap());
    let mut opts = MountOptions::new(
        OssUrl::parse("oss://bench/").unwrap().into(),
        mnt.clone(),
        dir.join("cache"),
    );
    opts.threads = 8;
    opts.max_connections = 16;
    opts.metadata_ttl = Duration::from_secs(600);
    opts.passthrough = passthrough;
    opts.fuse = tuning;
    let handle = rt.handle().clone();
    let t = std::thread::spawn(move || run_mount(&opts, client, handle, || {}).unwrap());
    let start = Instant::now();
    while !mounted(&mnt) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = work(&mnt);
    assert!(std::process::Command::new("umount")
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    t.join().unwrap();
    out
}

fn main() {
    let size = parse_size(&arg("--size", "1GiB")).unwrap();
    let rounds: usize = arg("--rounds", "5").parse().unwrap();
    let dir = PathBuf::from(arg("--dir", "target/bench-mount-read"));
    let root = dir.join("root");
    let obj = root.join("bench/file.bin");
    if std::fs::metadata(&obj).map(|m| m.len()).ok() != Some(size) {
        ossmount::sample::write_file(&obj, 7, size).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir.join("cache"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt
        .block_on(Emulator::start(
            EmulatorConfig::new(&root, common::BENCH_AK, common::BENCH_SK),
            "127.0.0.1:0",
        ))
        .unwrap();
    let endpoint = emu.endpoint();
    if std::env::args().any(|a| a == "--fuse") {
        fuse_sweep(&rt, &endpoint, &dir, &root, size, rounds);
        rt.block_on(emu.shutdown());
        return;
    }
    // Hydrate once.
    with_mount(&rt, &endpoint, &dir, true, |m| {
        assert_eq!(read_all(&m.join("file.bin")), size);
    });
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, passthrough) in [true, false].into_iter().enumerate() {
            let secs = with_mount(&rt, &endpoint, &dir, passthrough, |m| {
                let t = Instant::now();
                assert_eq!(read_all(&m.join("file.bin")), size);
                t.elapsed().as_secs_f64()
            });
            times[i].push(secs);
        }
    }
    let gets = emu.totals().get_requests;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (p, d) = (med(&mut times[0]), med(&mut times[1]));
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "\nfirst read of a hydrated {} file after mounting, median of {rounds}\n",
        human_bytes(size)
    );
    println!("| path | median | MiB/s | vs served by ossmount |");
    println!("|---|---:|---:|---:|");
    println!(
        "| kernel passthrough | {p:.3} s | {:.0} | {:.1}x |",
        mib / p,
        d / p
    );
    println!("| served by ossmount | {d:.3} s | {:.0} | 1.0x |", mib / d);
    println!("\n{gets} GET requests in all (the first hydration only)");
    rt.block_on(emu.shutdown());
}

/// Each FUSE setting changed alone from the defaults; reads served by ossmount (no
/// passthrough) from hydrated files, so the request path is what is measured.
fn fuse_sweep(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    dir: &Path,
    root: &Path,
    size: u64,
    rounds: usize,
) {
    let quarters: Vec<String> = (0..4).map(|i| format!("q{i}.bin")).collect();
    for (i, q) in quarters.iter().enumerate() {
        let p = root.join("bench").join(q);
        if std::fs::metadata(&p).map(|m| m.len()).ok() != Some(size / 4) {
            ossmount::sample::write_file(&p, 20 + i as u64, size / 4).unwrap();
        }
    }
    with_mount(rt, endpoint, dir, true, |m| {
        assert_eq!(read_all(&m.join("file.bin")), size);
        for q in &quarters {
            assert_eq!(read_all(&m.join(q)), size / 4);
        }
    });
    let d = FuseTuning::default();
    let configs = [
        ("defaults", d),
        (
            "readahead 128 KiB",
            FuseTuning {
                max_readahead: 128 << 10,
                ..d
            },
        ),
        (
            "readahead 4 MiB",
            FuseTuning {
                max_readahead: 4 << 20,
                ..d
            },
        ),
        (
            "max_background 12",
            FuseTuning {
                max_background: 12,
                ..d
            },
        ),
        ("1 thread", FuseTuning { threads: 1, ..d }),
        ("4 threads", FuseTuning { threads: 4, ..d }),
    ];
    let mut one = vec![Vec::new(); configs.len()];
    let mut four = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for (i, (_, tuning)) in configs.iter().enumerate() {
            let (a, b) = with_tuned_mount(rt, endpoint, dir, false, *tuning, |m| {
                let t = Instant::now();
                assert_eq!(read_all(&m.join("file.bin")), size);
                let a = t.elapsed().as_secs_f64();
                let t = Instant::now();
                std::thread::scope(|s| {
                    for q in &quarters {
                        let p = m.join(q);
                        s.spawn(move || assert_eq!(read_all(&p), size / 4));
                    }
                });
                (a, t.elapsed().as_secs_f64())
            });
            one[i].push(a);
            four[i].push(b);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mib = size as f64 / (1 << 20) as f64;
    let (base_one, base_four) = (med(&mut one[0].clone()), med(&mut four[0].clone()));
    println!(
        "\nreads served by ossmount from hydrated files ({} and 4 × {}), median of {rounds}\n",
        human_bytes(size),
        human_bytes(size / 4)
    );
    println!(
        "| FUSE setting | one reader MiB/s | vs defaults | four readers MiB/s | vs defaults |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _)) in configs.iter().enumerate() {
        let (a, b) = (med(&mut one[i]), med(&mut four[i]));
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} | {:.2} |",
            mib / a,
            base_one / a,
            mib / b,
            base_four / b
        );
    }
}
