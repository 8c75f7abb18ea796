//! CPU per byte on the fetch path: a cold `cat` of one object through a fresh mount, the
//! emulator on loopback with no added latency and no bandwidth cap, so the 2 cores are the
//! limit. Reported per round, then medians (min–max):
//!
//! - wall time and MiB/s;
//! - the node server's CPU time (user + system, all its threads, from `/proc/<pid>/stat`),
//!   as nanoseconds per byte and as cycles per byte at the CPU's nominal clock (this VM
//!   exposes no cycle counter to `perf`, so cycles are CPU time × the clock in
//!   `/proc/cpuinfo`);
//! - the server's read- and write-like system calls per MiB (`/proc/<pid>/io` syscr, syscw);
//! - the reader's (`cat`'s) CPU, where the kernel's FUSE work is charged.
//!
//! `cargo build --bin ossmount && cargo run --example bench_cpu [-- --size 1GiB --rounds 5]`
//! (`--compare PATH`: another build's executable, its rounds interleaved with this one's)
//! (as root; the profile the binary was built with is the one measured).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bench::arg;
use common::mount::Mount;
use common::Server;
use ossmount::size::{human_bytes, parse_size};

/// User + system CPU seconds of the process `pid` and its threads, living and ended.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server runs");
    // Fields after the command name (which may hold spaces) start at index 2 (state).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<f64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Read- and write-like system calls of `pid` so far.
fn syscalls(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("the server runs");
    io.lines()
        .filter(|l| l.starts_with("syscr:") || l.starts_with("syscw:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

fn nominal_hz() -> f64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let mhz = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("cpu MHz in /proc/cpuinfo");
    mhz * 1e6
}

struct Round {
    seconds: f64,
    server_cpu: f64,
    syscalls: u64,
    reader_cpu: f64,
}

/// CPU seconds of every child reaped so far.
fn children_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `cat` of the file to /dev/null, with its wall time and CPU (no other child is reaped
/// while it runs: the mount command is reaped at unmount).
fn cat(path: &Path) -> (f64, f64) {
    let before = children_cpu();
    let t = Instant::now();
    let status = Command::new("cat")
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    assert!(status.success(), "cat failed");
    (seconds, children_cpu() - before)
}

fn round(s: &Server, program: &Path, i: usize, extra: &[&str]) -> Round {
    let base = std::env::temp_dir().join(format!("ossmount-bench-cpu-{}", std::process::id()));
    let (mnt, cache) = (base.join(format!("mnt{i}")), base.join(format!("cache{i}")));
    let _ = std::fs::remove_dir_all(&cache);
    let mut args = vec!["--metadata-ttl", "60s"];
    args.extend_from_slice(extra);
    let mut m = Mount::start_by(program, s, &common::mount::url(), &mnt, &cache, &args);
    let pid = m.node_pid().expect("the node serving the mount");
    let (cpu0, sys0) = (cpu_seconds(pid), syscalls(pid));
    let (seconds, reader_cpu) = cat(&m.path("big.bin"));
    let (cpu1, sys1) = (cpu_seconds(pid), syscalls(pid));
    m.unmount();
    let _ = std::fs::remove_dir_all(&base);
    Round {
        seconds,
        server_cpu: cpu1 - cpu0,
        syscalls: sys1 - sys0,
        reader_cpu,
    }
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let size = parse_size(&arg("--size", "1GiB")).unwrap();
    let rounds: usize = arg("--rounds", "5").parse().unwrap();
    let threads = arg("--threads", "");
    let compare = arg("--compare", "");
    let s = Server::start().await;
    s.put_sample("big.bin", 17, size);
    let hz = nominal_hz();
    let extra: Vec<&str> = if threads.is_empty() {
        vec![]
    } else {
        vec!["--threads", &threads]
    };
    let mut builds = vec![("this build".to_string(), common::bin())];
    if !compare.is_empty() {
        builds.push((compare.clone(), std::path::PathBuf::from(&compare)));
    }
    println!(
        "cold cat of {} through a fresh mount, loopback, no caps; {rounds} rounds, builds \
         interleaved; clock {:.0} MHz",
        human_bytes(size),
        hz / 1e6
    );
    println!(
        "| build | round | s | MiB/s | server CPU s | ns/byte | cycles/byte | syscalls/MiB | cat CPU s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mib = size as f64 / (1 << 20) as f64;
    let mut all: Vec<Vec<Round>> = builds.iter().map(|_| Vec::new()).collect();
    for i in 0..rounds {
        for (b, (label, program)) in builds.iter().enumerate() {
            let r = tokio::task::block_in_place(|| round(&s, program, i, &extra));
            println!(
                "| {label} | {i} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} |",
                r.seconds,
                mib / r.seconds,
                r.server_cpu,
                r.server_cpu * 1e9 / size as f64,
                r.server_cpu * hz / size as f64,
                r.syscalls as f64 / mib,
                r.reader_cpu
            );
            all[b].push(r);
        }
    }
    println!();
    println!(
        "| build | s | MiB/s | server CPU s | ns/byte | cycles/byte | syscalls/MiB | cat CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let show = |(m, lo, hi): (f64, f64, f64), p: usize| format!("{m:.p$} ({lo:.p$}–{hi:.p$})");
    let mut cycles = Vec::new();
    for ((label, _), runs) in builds.iter().zip(&all) {
        let col = |f: &dyn Fn(&Round) -> f64| median_min_max(runs.iter().map(f).collect());
        cycles.push(col(&|r| r.server_cpu * hz / size as f64).0);
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            show(col(&|r| r.seconds), 2),
            show(col(&|r| mib / r.seconds), 0),
            show(col(&|r| r.server_cpu), 2),
            show(col(&|r| r.server_cpu * 1e9 / size as f64), 2),
            show(col(&|r| r.server_cpu * hz / size as f64), 2),
            show(col(&|r| r.syscalls as f64 / mib), 0),
            show(col(&|r| r.reader_cpu), 2),
        );
    }
    if cycles.len() == 2 {
        println!(
            "server cycles per byte, this build / {compare}: {:.2}",
            cycles[0] / cycles[1]
        );
    }
}
