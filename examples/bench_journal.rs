//! What the survival journal costs: `find` over a bucket of `--keys` keys (in directories of
//! 1,000) through a real kernel mount (root and /dev/fuse), with and without the journal.
//! The mount runs in a child process of its own (this program, `--mount-child`), so its peak
//! RSS is the mount's alone; the emulator runs here. Per variant, a cold `find` gives the
//! wall time and the mount's peak RSS, and a second mount, cold too, under `strace -c -f`,
//! the mount's system calls (its writes among them). Prints the journal's size.
//!
//! `cargo build --release --example bench_journal && target/release/examples/bench_journal`
//! (default `--keys 100000`).

#[path = "common/mod.rs"]
mod bench;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ossmount::cache::{Cache, Capacity};
use ossmount::emulator::{Emulator, EmulatorConfig};
use ossmount::fs::fuse::{mount, FuseTuning, KernelMount, Target};
use ossmount::fs::{FsConfig, JournalConfig, OssFs};
use ossmount::hydrate::{ConnectionLimiter, HydrationConfig};
use ossmount::oss::OssClient;
use ossmount::store::ObjectStore;

const BUCKET: &str = "bench";

/// One variant's round: find's seconds, the mount's peak RSS (MiB), paths found, journal
/// bytes, and the mount's (system calls, writes, reads).
type Measured = (f64, f64, usize, u64, (u64, u64, u64));

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mount-child") {
        return mount_child(&args[2], Path::new(&args[3]), &args[4]);
    }
    let keys = bench::arg_number("--keys", 100_000);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    for i in 0..keys {
        let dir = root.join(BUCKET).join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{:05}", i % 1000)), b"x").unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt.block_on(async {
        let cfg = EmulatorConfig::new(&root, bench::BENCH_AK, bench::BENCH_SK);
        Emulator::start(cfg, "127.0.0.1:0").await.unwrap()
    });
    let rounds = bench::arg_number("--rounds", 3) as usize;
    println!("find over {keys} keys, a cold mount each time, {rounds} rounds (median, min-max)");
    let mut results: Vec<(&str, Vec<Measured>)> = vec![("off", Vec::new()), ("on", Vec::new())];
    for _ in 0..rounds {
        for (journal, runs) in results.iter_mut() {
            let (secs, rss, found, bytes) = run(&emu.endpoint(), work.path(), journal);
            let calls = run_traced(&emu.endpoint(), work.path(), journal);
            runs.push((secs, rss, found, bytes, calls));
        }
    }
    for (journal, runs) in &results {
        let stat = |f: &dyn Fn(&Measured) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!("{:.2} ({:.2}-{:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        println!(
            "journal {journal:>3}: find {} s; mount's peak RSS {} MiB; {} paths; journal {} MiB; mount's syscalls {} (write/pwrite {}, read/pread {})",
            stat(&|r| r.0),
            stat(&|r| r.1),
            runs[0].2,
            stat(&|r| r.3 as f64 / (1 << 20) as f64),
            stat(&|r| r.4 .0 as f64),
            stat(&|r| r.4 .1 as f64),
            stat(&|r| r.4 .2 as f64),
        );
    }
}

/// One cold mount, one `find`: (seconds, the mount's peak RSS in MiB, paths, journal bytes).
fn run(endpoint: &str, work: &Path, journal: &str) -> (f64, f64, usize, u64) {
    let (mut child, mnt, dir) = start_child(endpoint, work, journal);
    let started = Instant::now();
    let out = Command::new("find").arg(&mnt).output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let found = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let rss = peak_rss_mib(child.id());
    let journal_bytes = std::fs::metadata(dir.join("journal/nodes"))
        .map(|m| m.len())
        .unwrap_or(0);
    stop_child(&mut child, &dir);
    (secs, rss, found, journal_bytes)
}

/// One cold mount, one `find` under `strace -c -f`: (calls, writes, reads) of the mount.
fn run_traced(endpoint: &str, work: &Path, journal: &str) -> (u64, u64, u64) {
    let (mut child, mnt, dir) = start_child(endpoint, work, journal);
    let summary = dir.join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&summary)
        .args(["-p", &child.id().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // attached to every thread
    Command::new("find").arg(&mnt).output().unwrap();
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let text = std::fs::read_to_string(&summary).unwrap_or_default();
    stop_child(&mut child, &dir);
    let calls = |names: &[&str]| -> u64 {
        text.lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let name = *cols.last()?;
                names
                    .contains(&name)
                    .then(|| cols.get(3).and_then(|c| c.parse::<u64>().ok()))
                    .flatten()
            })
            .sum()
    };
    (
        calls(&["total"]),
        calls(&["write", "pwrite64", "writev"]),
        calls(&["read", "pread64"]),
    )
}

fn start_child(
    endpoint: &str,
    work: &Path,
    journal: &str,
) -> (std::process::Child, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::Builder::new().tempdir_in(work).unwrap().keep();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--mount-child", endpoint])
        .arg(&dir)
        .arg(journal)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the mount did not start");
    (child, mnt, dir)
}

fn stop_child(child: &mut std::process::Child, dir: &Path) {
    let _ = child.stdin.take().unwrap().write_all(b"stop\n");
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The mount: serves `dir/mnt` until a line (or EOF) arrives on stdin.
fn mount_child(endpoint: &str, dir: &Path, journal: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let store: Arc<dyn ObjectStore> =
        Arc::new(OssClient::new(bench::bench_client_config(endpoint)).unwrap());
    let cache = Cache::open(
        &dir.join("cache"),
        store.clone(),
        HydrationConfig::default(),
        ConnectionLimiter::new(16, 4),
        Capacity::unlimited(),
    )
    .unwrap();
    let cfg = FsConfig {
        bucket: BUCKET.into(),
        prefix: String::new(),
        metadata_ttl: Duration::from_secs(60),
        uid: 0,
        gid: 0,
        file_mode: 0o444,
        dir_mode: 0o555,
        require_crc: false,
        read_deadline: Duration::from_secs(60),
        direct_memory: ossmount::fs::DEFAULT_DIRECT_MEMORY,
        journal: (journal == "on").then(|| JournalConfig {
            dir: dir.join("journal"),
            resume: false,
        }),
    };
    let fs = Arc::new(OssFs::try_new(cfg, store, Arc::new(cache)).unwrap());
    let kernel = KernelMount {
        fs_name: "ossmount:bench".into(),
        allow_other: false,
        passthrough: false,
        tuning: FuseTuning::default(),
    };
    let mut session = mount(
        fs,
        rt.handle().clone(),
        Target::Path(&dir.join("mnt")),
        &kernel,
    )
    .unwrap();
    let mut unmounter = session.unmounter();
    let serving = std::thread::spawn(move || session.run());
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    unmounter.unmount().unwrap();
    serving.join().unwrap().unwrap();
}
