//! Model loads at link speed: several processes read one large, cold object through a real
//! kernel mount at once, on one emulated WAN link (added latency per request, a cap per
//! connection, optionally a cap for the whole link). Cases, interleaved round by round, each
//! on a fresh mount with an empty cache:
//!
//! - (a) a cold `cp` of the object (to `/dev/null`): the baseline;
//! - (b) `--readers` processes `mmap` the whole file and each copies its own slice out (a
//!   tensor-parallel safetensors load): real child processes (this program re-executed), each
//!   mapping the file, waiting at a barrier, then copying its slice with `memcpy` into a
//!   buffer and checking its CRC-64 against the object's;
//! - (c) `--readers` processes each `cat` the whole file from the start at once (several
//!   jobs of one node loading one model);
//! - (d) `--width` parallel range GETs with curl over the same bytes: what the link allows.
//!
//! For each: wall time (median, min–max), the bytes the emulator sent for the object and
//! its GETs, and the ratios to (a) and (d).
//!
//! `cargo build --release --bin ossmount && cargo run --release --example bench_mmap`
//! (as root). Defaults: 1 GiB, 3 rounds, 4 readers, width 8, +20 ms per request, 24 MB/s per
//! connection, no link-wide cap. `--size 256MiB --rounds 1` is a short run; `--link 125MB`
//! adds a link-wide cap; `--cases abcd` picks cases; `--mount-args "--threads 16"` passes
//! flags to every mount; `--keep-logs DIR` keeps each mount's log; `--timeline` prints when
//! each case's requests arrived; `--madvise random|sequential` is the mmap readers' advice
//! (random: one page per fault).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::arg;
use common::mount::Mount;
use common::{CommandWithin, Server, BUCKET};
use ossmount::size::{human_bytes, parse_size};

/// Set in a re-executed child: `PATH OFFSET LEN` of the slice it copies.
const CHILD_ENV: &str = "BENCH_MMAP_CHILD";
/// No case may take longer than this (a hang is a failed run, not a stuck one).
const CASE_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        mmap_child(&spec);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

/// The child: maps the whole file, says `ready`, waits for a line on stdin (the barrier),
/// copies its slice out in 16 MiB pieces, and prints the slice's CRC-64.
fn mmap_child(spec: &str) {
    let mut it = spec.split(' ');
    let path = it.next().unwrap();
    let offset: usize = it.next().unwrap().parse().unwrap();
    let len: usize = it.next().unwrap().parse().unwrap();
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file we keep open; unmapped below.
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
    assert!(base != libc::MAP_FAILED, "mmap failed");
    // `--madvise random` in the parent: every fault reads one page (no read-around), the
    // page-sized requests some loaders cause; `sequential`: the kernel's largest readahead.
    let advice = match std::env::var("BENCH_MMAP_ADVICE").as_deref() {
        Ok("random") => libc::MADV_RANDOM,
        Ok("sequential") => libc::MADV_SEQUENTIAL,
        _ => libc::MADV_NORMAL,
    };
    // SAFETY: advice on the mapping made above.
    unsafe { libc::madvise(base, size, advice) };
    // SAFETY: the mapping is `size` bytes long and lives until the munmap below.
    let mapped = unsafe { std::slice::from_raw_parts(base as *const u8, size) };
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    let mut crc = ossmount::crc64::Digest::default();
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(buf.len());
        buf[..n].copy_from_slice(&mapped[at..at + n]);
        crc.update(&buf[..n]);
        at += n;
    }
    println!("{:016x}", crc.value());
    // SAFETY: unmapping the mapping made above, no longer used.
    unsafe { libc::munmap(base, size) };
}

/// `readers` re-executed children copy their slices of `path` (of `size` bytes) out of a
/// mapping, released together; returns each slice's CRC-64.
fn mmap_load(path: &std::path::Path, size: u64, readers: u64) -> Vec<u64> {
    let slice = size.div_ceil(readers);
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = (0..readers)
        .map(|i| {
            let (a, b) = (i * slice, ((i + 1) * slice).min(size));
            Command::new(&exe)
                .env(CHILD_ENV, format!("{} {a} {}", path.display(), b - a))
                .env("BENCH_MMAP_ADVICE", arg("--madvise", "normal"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outs: Vec<BufReader<std::process::ChildStdout>> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for out in &mut outs {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "a reader failed before its barrier");
    }
    for c in &mut children {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let mut crcs = Vec::new();
    for (c, out) in children.iter_mut().zip(outs.iter_mut()) {
        let st = common::wait_within(c, CASE_LIMIT, "an mmap reader");
        assert!(st.success(), "an mmap reader failed: {st}");
        let mut line = String::new();
        out.read_to_string(&mut line).unwrap();
        crcs.push(u64::from_str_radix(line.trim(), 16).unwrap());
    }
    crcs
}

/// `readers` processes each `cat` the whole file at once.
fn cat_together(path: &std::path::Path, readers: u64) {
    let mut children: Vec<Child> = (0..readers)
        .map(|_| {
            Command::new("cat")
                .arg(path)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut children {
        assert!(common::wait_within(c, CASE_LIMIT, "cat").success());
    }
}

/// `width` curl processes, each fetching its share of the object at once.
fn parallel_curl(url: &str, size: u64, width: u64) {
    let share = size.div_ceil(width);
    let mut children: Vec<Child> = (0..width)
        .map(|i| {
            let (a, b) = (i * share, ((i + 1) * share).min(size) - 1);
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-r", &format!("{a}-{b}"), url])
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut children {
        assert!(common::wait_within(c, CASE_LIMIT, "curl").success());
    }
}

/// The CRC-64 of each `readers`-th slice of the object's file as the emulator stores it.
fn slice_crcs(path: &std::path::Path, size: u64, readers: u64) -> Vec<u64> {
    let slice = size.div_ceil(readers);
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    (0..readers)
        .map(|i| {
            let mut left = ((i + 1) * slice).min(size) - i * slice;
            let mut crc = ossmount::crc64::Digest::default();
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..n]).unwrap();
                crc.update(&buf[..n]);
                left -= n as u64;
            }
            crc.value()
        })
        .collect()
}

struct Sample {
    secs: f64,
    fetched: u64,
    gets: u64,
    /// CPU seconds the node's server used (user and system), from its start.
    node_cpu: Option<f64>,
}

/// User and system CPU seconds process `pid` has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // After the name: state is field 3, utime 14 and stime 15 (1-based, as in proc(5)).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

async fn bench() {
    let size = parse_size(&arg("--size", "1GiB")).unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let readers: u64 = arg("--readers", "4").parse().unwrap();
    let width: u64 = arg("--width", "8").parse().unwrap();
    let latency: u64 = arg("--latency-ms", "20").parse().unwrap();
    let per_conn = parse_size(&arg("--per-connection", "24MB")).unwrap();
    let link = parse_size(&arg("--link", "0")).unwrap();
    let cases = arg("--cases", "abcd");
    let mount_args = arg("--mount-args", "");
    let mount_args: Vec<&str> = mount_args.split_whitespace().collect();
    // The node's log of each mount case, kept as DIR/<case>-<round>.log (set RUST_LOG).
    // When each case's requests arrived (to see where its time went).
    let timeline = std::env::args().any(|a| a == "--timeline");
    let keep_logs = Some(arg("--keep-logs", "")).filter(|d| !d.is_empty());
    let bin = common::bin();
    assert!(
        bin.exists(),
        "build it first: cargo build --release --bin ossmount"
    );
    let s = Server::start_with(|c| c.allow_anonymous = true).await;
    s.put_sample("model.bin", 21, size);
    let want_crcs = slice_crcs(&s.object_path("model.bin"), size, readers);
    s.emu.update_faults(|f| {
        f.latency_ms = latency;
        f.bandwidth_per_connection = per_conn;
        f.bandwidth_total = link;
    });
    let url = format!("{}/{BUCKET}/model.bin", s.emu.endpoint());
    let names = [
        ('a', "(a) cold `cp`, one reader".to_string()),
        (
            'b',
            format!("(b) {readers} processes mmap it, each copies its 1/{readers}"),
        ),
        (
            'c',
            format!("(c) {readers} processes `cat` it whole from the start at once"),
        ),
        ('d', format!("(d) curl, {width} parallel range GETs")),
    ];
    let mut samples: Vec<Vec<Sample>> = (0..names.len()).map(|_| Vec::new()).collect();
    let counters = |s: &Server| s.emu.object_counters(BUCKET, "model.bin");
    for round in 0..rounds {
        for (i, (case, name)) in names.iter().enumerate() {
            if !cases.contains(*case) {
                continue;
            }
            eprintln!("round {}/{rounds}: {name}", round + 1);
            let before = counters(&s);
            let log_from = s.emu.request_log().len();
            let mut node_cpu = None;
            let secs = if *case == 'd' {
                let t = Instant::now();
                parallel_curl(&url, size, width);
                t.elapsed().as_secs_f64()
            } else {
                let base = s.scratch.path().join("case");
                let _ = std::fs::remove_dir_all(&base);
                let m = Mount::start(
                    &s,
                    &format!("oss://{BUCKET}/"),
                    &base.join("mnt"),
                    &base.join("cache"),
                    &mount_args,
                );
                let p = m.path("model.bin");
                let t = Instant::now();
                match case {
                    'a' => {
                        let st = Command::new("cp")
                            .arg(&p)
                            .arg("/dev/null")
                            .status_within(CASE_LIMIT, "cp")
                            .unwrap();
                        assert!(st.success(), "cp failed");
                    }
                    'b' => {
                        let got = mmap_load(&p, size, readers);
                        assert_eq!(got, want_crcs, "a reader copied other bytes");
                    }
                    _ => cat_together(&p, readers),
                }
                let secs = t.elapsed().as_secs_f64();
                node_cpu = m.node_pid().map(cpu_seconds);
                drop(m);
                if let Some(dir) = &keep_logs {
                    let to = format!("{dir}/{case}-{}.log", round + 1);
                    let _ = std::fs::copy(base.join("cache/ossmount.log"), to);
                }
                secs
            };
            let after = counters(&s);
            if timeline {
                // Arrival times of the case's requests for the object, from its first.
                let log: Vec<_> = s.emu.request_log()[log_from..]
                    .iter()
                    .filter(|r| r.key == "model.bin")
                    .map(|r| r.at)
                    .collect();
                if let (Some(first), Some(last)) = (log.first(), log.last()) {
                    let quarter = log.len() / 4;
                    eprintln!(
                        "  {case}: wall {secs:.2} s; requests {}: the last arrived {:.2} s after the first; \
                         quarters of them by {:.2} / {:.2} / {:.2} s",
                        log.len(),
                        (*last - *first).as_secs_f64(),
                        (log[quarter] - *first).as_secs_f64(),
                        (log[2 * quarter] - *first).as_secs_f64(),
                        (log[3 * quarter] - *first).as_secs_f64(),
                    );
                }
            }
            samples[i].push(Sample {
                secs,
                fetched: after.body_bytes - before.body_bytes,
                gets: after.get_requests - before.get_requests,
                node_cpu,
            });
        }
    }
    s.emu.update_faults(|f| {
        f.latency_ms = 0;
        f.bandwidth_per_connection = 0;
        f.bandwidth_total = 0;
    });
    let mib = |b: f64| b / (1 << 20) as f64;
    let link_text = if link == 0 {
        "no link-wide cap".to_string()
    } else {
        format!("{}/s in all", human_bytes(link))
    };
    println!(
        "\n{} cold, +{latency} ms per request, {}/s per connection, {link_text}; \
         {rounds} rounds, median (min–max){}\n",
        human_bytes(size),
        human_bytes(per_conn),
        if mount_args.is_empty() {
            String::new()
        } else {
            format!("; mounts with {}", mount_args.join(" "))
        }
    );
    println!("| case | wall s | MiB/s | vs (a) | vs (d) | MiB fetched | GETs | node CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let median_of = |i: usize| {
        (!samples[i].is_empty())
            .then(|| spread(&samples[i].iter().map(|s| s.secs).collect::<Vec<_>>()).0)
    };
    let (cp, curl) = (median_of(0), median_of(3));
    for (i, (_, name)) in names.iter().enumerate() {
        if samples[i].is_empty() {
            continue;
        }
        let (t, lo, hi) = spread(&samples[i].iter().map(|s| s.secs).collect::<Vec<_>>());
        let (f, flo, fhi) = spread(
            &samples[i]
                .iter()
                .map(|s| mib(s.fetched as f64))
                .collect::<Vec<_>>(),
        );
        let gets = spread(&samples[i].iter().map(|s| s.gets as f64).collect::<Vec<_>>()).0;
        let cpu: Vec<f64> = samples[i].iter().filter_map(|s| s.node_cpu).collect();
        let cpu = if cpu.is_empty() {
            "–".to_string()
        } else {
            format!("{:.1}", spread(&cpu).0)
        };
        let ratio = |base: Option<f64>| base.map_or("–".to_string(), |b| format!("{:.2}", t / b));
        println!(
            "| {name} | {t:.2} ({lo:.2}–{hi:.2}) | {:.1} | {} | {} | {f:.0} ({flo:.0}–{fhi:.0}) | {gets:.0} | {cpu} |",
            mib(size as f64) / t,
            ratio(cp),
            ratio(curl),
        );
    }
    println!(
        "\nTargets for (b) and (c): ≤ 1.2 × (a), ≤ 1.1 × (d), fetched ≤ {:.0} MiB (size + 64 MiB).",
        mib((size + (64 << 20)) as f64)
    );
}
