//! Speed to the link's limit: emulated WAN links and cold objects, fetched every way a user
//! would, each case a separate process, cases interleaved within each round, and for each
//! case the median with the minimum and maximum over `--rounds`, against what `--width`
//! parallel range GETs with curl reach on the same link in the same rounds.
//!
//! Link shapes (`--shapes`, comma-separated):
//! - `per-connection`: every connection capped (`--per-connection`, 24 MB/s), no link-wide cap,
//!   so more connections always carry more until the machine is the limit;
//! - `link`: a cap per connection (`--link-per-connection`, 25 MB/s: 200 Mbit/s) and one for
//!   the whole link (`--link`, 125 MB/s: 1 Gbit/s), which 5 connections fill.
//!
//! Both add `--latency-ms` (20) before each answer. Objects: `--sizes` (256MiB,1GiB).
//! Cases (`--cases`, comma-separated; default `curl,mount,mount3,mount16,download-auto`):
//! - `curl`: `--width` (8) parallel range GETs with curl, each a share (the reference);
//! - `curl1`: one curl stream;
//! - `mount`: a cold `cat` through a fresh mount with the defaults (adaptive);
//! - `mount3`, `mount16`: the same with `--threads 3` and `--threads 16`;
//! - `mount-open`: the defaults but `--hydrate open` (the whole object from the open on, not
//!   once the reader has gone sequentially past the readahead window);
//! - `download`, `download-auto`: `ossmount download` with its defaults (3 threads) and
//!   with `--threads auto`;
//! - `first`: the first 4 KiB at a cold, unaligned offset in the middle of a part (fresh
//!   mount, attributes already looked up) beside the first byte of a curl range GET.
//!
//! The mounts log the adaptive ramp at debug; for each adaptive case the windows it went
//! through are printed (`3→6→12`), with the most GET bodies the server streamed at once.
//!
//! `cargo build --release --bin ossmount && cargo run --release --example bench_link`;
//! a short run: `-- --shapes per-connection --sizes 256MiB --rounds 2 --cases curl,mount`.

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use bench::{arg, list};
use common::mount::Mount;
use common::{Server, BUCKET};
use ossmount::size::{human_bytes, parse_size};

/// One way of reading the object.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    Curl,
    Curl1,
    Mount,
    Mount3,
    Mount16,
    MountOpen,
    Download,
    DownloadAuto,
}

impl Case {
    const ALL: [(&'static str, Case); 8] = [
        ("curl", Case::Curl),
        ("curl1", Case::Curl1),
        ("mount", Case::Mount),
        ("mount3", Case::Mount3),
        ("mount16", Case::Mount16),
        ("mount-open", Case::MountOpen),
        ("download", Case::Download),
        ("download-auto", Case::DownloadAuto),
    ];

    fn label(self, width: u64) -> String {
        match self {
            Case::Curl => format!("curl, {width} parallel range GETs"),
            Case::Curl1 => "curl, one stream".into(),
            Case::Mount => "**mount, cold `cat`, defaults (adaptive)**".into(),
            Case::Mount3 => "mount, cold `cat`, `--threads 3`".into(),
            Case::Mount16 => "mount, cold `cat`, `--threads 16`".into(),
            Case::MountOpen => "mount, cold `cat`, `--hydrate open` (adaptive)".into(),
            Case::Download => "`ossmount download`, defaults (3 threads)".into(),
            Case::DownloadAuto => "`ossmount download --threads auto`".into(),
        }
    }

    /// The adaptive cases, whose ramp is worth printing.
    fn adaptive(self) -> bool {
        matches!(self, Case::Mount | Case::MountOpen | Case::DownloadAuto)
    }
}

/// What one case measured over the rounds.
#[derive(Default, Clone)]
struct Measured {
    secs: Vec<f64>,
    /// GETs and the most bodies streamed at once, per round.
    gets: Vec<u64>,
    peak_bodies: Vec<u64>,
    /// Body bytes the server sent, per round (more than the object: bytes fetched twice, or
    /// sent past the cut of a split stream).
    fetched: Vec<u64>,
    /// The ramp's windows, per round (adaptive mounts only).
    ramps: Vec<String>,
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn run(cmd: &mut Command) -> f64 {
    run_logged(cmd).0
}

/// Seconds `cmd` took, and its stderr.
fn run_logged(cmd: &mut Command) -> (f64, String) {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `width` curl processes, each fetching its share of the object at once.
fn parallel_curl(url: &str, size: u64, width: u64) -> f64 {
    let t = Instant::now();
    let share = size.div_ceil(width);
    let children: Vec<_> = (0..width)
        .map(|i| {
            let (a, b) = (i * share, ((i + 1) * share).min(size) - 1);
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-r", &format!("{a}-{b}"), url])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    t.elapsed().as_secs_f64()
}

/// The mounts log the ramp's moves (`adapt` logs at debug under the limiter's module).
/// `--ramp-log trace` adds every measurement interval; `ossmount::hydrate` at debug says when
/// a mount's sequential reader made it fetch the whole object (shown as `whole`).
fn ramp_log() -> String {
    let level = arg("--ramp-log", "debug");
    format!("info,ossmount::hydrate=debug,ossmount::hydrate::limiter={level}")
}

fn mount(s: &Server, name: &str, extra: &[&str]) -> Mount {
    let base = s.scratch.path().join(name);
    let _ = std::fs::remove_dir_all(&base);
    // RUST_LOG, which wins over the harness's `--log-level`, reaches the node it starts.
    let mut env = s.env();
    env.push(("RUST_LOG", ramp_log()));
    Mount::start_with_env(
        &format!("oss://{BUCKET}/"),
        &base.join("mnt"),
        &base.join("cache"),
        extra,
        env,
    )
}

/// With `--keep-logs DIR`, each case's log is appended to `DIR/<key>-<flags>.log`.
fn keep_log(log: &str, key: &str, extra: &[&str]) {
    let dir = arg("--keep-logs", "");
    if dir.is_empty() {
        return;
    }
    use std::io::Write;
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("{dir}/{key}{}.log", extra.join(""));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(name)
        .unwrap();
    writeln!(f, "---- {:.3}", seconds_of_day_now()).unwrap();
    f.write_all(log.as_bytes()).unwrap();
}

/// Seconds since midnight (UTC) now, and of a log line's leading RFC 3339 timestamp.
fn seconds_of_day_now() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_secs_f64() % 86400.0
}

fn seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let time = time.trim_end_matches('Z');
    let mut hms = time.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// The windows the ramp went through, from a log of `adapt`'s moves, each with when it was
/// taken (seconds after `began`, of the day): `3→whole@0.40→6@0.52→12@0.90`.
fn ramp_of(log: &str, start: usize, began: f64) -> String {
    let mut windows = vec![start.to_string()];
    for line in log.lines() {
        let to = if line.contains("fetching the whole object") {
            Some("whole".to_string())
        } else if line.contains("hydrate::limiter") {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("to="))
                .map(str::to_string)
        } else {
            None
        };
        if let Some(to) = to {
            match seconds_of_day(line) {
                Some(at) => windows.push(format!("{to}@{:.2}", at - began)),
                None => windows.push(to),
            }
        }
    }
    windows.join("→")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let latency: u64 = arg("--latency-ms", "20").parse().unwrap();
    let width: u64 = arg("--width", "8").parse().unwrap();
    let rounds: usize = arg("--rounds", "5").parse().unwrap();
    let all_shapes = bench::shapes();
    let shapes: Vec<&bench::Shape> = all_shapes.iter().collect();
    let sizes: Vec<u64> = list("--sizes", "256MiB,1GiB")
        .iter()
        .map(|s| parse_size(s).unwrap_or_else(|e| panic!("--sizes: {s}: {e}")))
        .collect();
    let case_names = list("--cases", "curl,mount,mount3,mount16,download-auto");
    let first_bytes = case_names.iter().any(|c| c == "first");
    let mut cases: Vec<Case> = case_names
        .iter()
        .filter(|c| *c != "first")
        .map(|n| {
            Case::ALL
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, c)| *c)
                .unwrap_or_else(|| panic!("--cases: {n} is unknown"))
        })
        .collect();
    // The reference is measured in every round: ratios are to it.
    if !cases.contains(&Case::Curl) {
        cases.insert(0, Case::Curl);
    }
    let bin = common::bin();
    assert!(
        bin.exists(),
        "build it first: cargo build [--release] --bin ossmount"
    );
    let s = Server::start_with(|c| c.allow_anonymous = true).await;
    for (i, &size) in sizes.iter().enumerate() {
        s.put_sample(&key_of(size), 11 + i as u64, size);
    }
    println!(
        "bench_link: {} rounds, width {width}, +{latency} ms per request, {} ({} build)",
        rounds,
        bin.display(),
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
    );
    for shape in &shapes {
        s.emu.update_faults(|f| {
            f.latency_ms = latency;
            f.bandwidth_per_connection = shape.per_connection;
            f.bandwidth_total = shape.link;
        });
        for &size in &sizes {
            let key = key_of(size);
            let url = format!("{}/{BUCKET}/{key}", s.emu.endpoint());
            let mut measured = vec![Measured::default(); cases.len()];
            let mut first_4k = Vec::new();
            let mut curl_first_byte = Vec::new();
            for round in 0..rounds {
                eprintln!(
                    "{} {}: round {}/{rounds}",
                    shape.name,
                    human_bytes(size),
                    round + 1
                );
                for (i, &case) in cases.iter().enumerate() {
                    s.emu.reset_counters();
                    let (secs, ramp) = run_case(&s, case, &key, &url, size, width);
                    let counters = s.emu.object_counters(BUCKET, &key);
                    let m = &mut measured[i];
                    m.secs.push(secs);
                    m.gets.push(counters.get_requests);
                    m.peak_bodies.push(counters.peak_concurrent_bodies);
                    m.fetched.push(counters.body_bytes);
                    if let Some(ramp) = ramp {
                        m.ramps.push(ramp);
                    }
                    eprintln!(
                        "  {:<14} {:6.2} s {:6.1} MiB/s, {} GETs, at most {} at once, {:.1} MiB sent{}",
                        Case::ALL.iter().find(|c| c.1 == case).unwrap().0,
                        secs,
                        size as f64 / (1 << 20) as f64 / secs,
                        counters.get_requests,
                        counters.peak_concurrent_bodies,
                        counters.body_bytes as f64 / (1 << 20) as f64,
                        m.ramps
                            .last()
                            .filter(|_| case.adaptive())
                            .map(|r| format!(", ramp {r}"))
                            .unwrap_or_default()
                    );
                }
                if first_bytes {
                    let (f, c) = first_bytes_at(&s, &key, &url, size);
                    first_4k.push(f);
                    curl_first_byte.push(c);
                }
            }
            print_table(shape, size, latency, width, &cases, &measured);
            if first_bytes {
                let offset = mid_part_offset(size);
                let (f, ..) = median_min_max(&first_4k);
                let (c, ..) = median_min_max(&curl_first_byte);
                println!("\n| first bytes at offset {offset} (cold, mid-part) | time | vs curl |");
                println!("|---|---:|---:|");
                println!("| curl range GET, first byte | {:.0} ms | 1.00 |", c * 1e3);
                println!(
                    "| mount: open + read of 4 KiB (`dd`, process included) | {:.0} ms | {:.2} |",
                    f * 1e3,
                    f / c
                );
            }
        }
    }
    s.emu.update_faults(|f| {
        f.latency_ms = 0;
        f.bandwidth_per_connection = 0;
        f.bandwidth_total = 0;
    });
}

fn key_of(size: u64) -> String {
    format!("big-{}.bin", human_bytes(size).replace(' ', ""))
}

/// Runs one case once; its seconds, and for an adaptive mount the ramp it went through.
fn run_case(
    s: &Server,
    case: Case,
    key: &str,
    url: &str,
    size: u64,
    width: u64,
) -> (f64, Option<String>) {
    let bin = common::bin();
    let download = |extra: &[&str]| {
        let out = s.scratch.path().join("download.out");
        let began = seconds_of_day_now();
        let (secs, log) = run_logged(
            Command::new(&bin)
                .args(["download", "-q", "--log-level", &ramp_log()])
                .args(extra)
                .arg(format!("oss://{BUCKET}/{key}"))
                .arg(&out)
                .envs(s.env()),
        );
        let _ = std::fs::remove_file(&out);
        keep_log(&log, key, extra);
        (
            secs,
            Some(ramp_of(&log, ossmount::hydrate::limiter::FLOOR, began)),
        )
    };
    let cat = |extra: &[&str]| {
        let m = mount(s, "cat", extra);
        let p = m.path(key);
        let began = seconds_of_day_now();
        let secs = run(Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}' > /dev/null", p.display())));
        let cache = m.cache.clone();
        drop(m);
        let log = std::fs::read_to_string(cache.join("ossmount.log")).unwrap_or_default();
        keep_log(&log, key, extra);
        (
            secs,
            Some(ramp_of(&log, ossmount::hydrate::limiter::FLOOR, began)),
        )
    };
    match case {
        Case::Curl => (parallel_curl(url, size, width), None),
        Case::Curl1 => (
            run(Command::new("curl").args(["-sf", "-o", "/dev/null", url])),
            None,
        ),
        Case::Mount => cat(&[]),
        Case::Mount3 => (cat(&["--threads", "3"]).0, None),
        Case::Mount16 => (cat(&["--threads", "16"]).0, None),
        Case::MountOpen => cat(&["--hydrate", "open"]),
        Case::Download => (download(&[]).0, None),
        Case::DownloadAuto => download(&["--threads", "auto"]),
    }
}

/// Mid-part (8 MiB parts), unaligned, past the middle of the object.
fn mid_part_offset(size: u64) -> u64 {
    (size * 7 / 10) / (8 << 20) * (8 << 20) + (3 << 20) + 123
}

/// Seconds for a cold open and 4 KiB read through a fresh mount at `mid_part_offset`, and
/// for the first byte of a curl range GET there.
fn first_bytes_at(s: &Server, key: &str, url: &str, size: u64) -> (f64, f64) {
    let offset = mid_part_offset(size);
    let m = mount(s, "first", &[]);
    let p = m.path(key);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), size);
    let first_4k = run(Command::new("dd")
        .arg(format!("if={}", p.display()))
        .args(["of=/dev/null", "bs=4096", "count=1", "iflag=skip_bytes"])
        .arg(format!("skip={offset}")));
    drop(m);
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{time_starttransfer}"])
        .args(["-r", &format!("{offset}-{}", offset + 4095), url])
        .output()
        .unwrap();
    let curl = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .unwrap();
    (first_4k, curl)
}

fn print_table(
    shape: &bench::Shape,
    size: u64,
    latency: u64,
    width: u64,
    cases: &[Case],
    measured: &[Measured],
) {
    let mib = size as f64 / (1 << 20) as f64;
    let link = if shape.link == 0 {
        "no link-wide cap".to_string()
    } else {
        format!("{}/s in all", human_bytes(shape.link))
    };
    let rounds = measured[0].secs.len();
    println!(
        "\n{} cold; {}/s per connection, {link}, +{latency} ms per request; {rounds} rounds, cases interleaved\n",
        human_bytes(size),
        human_bytes(shape.per_connection),
    );
    println!("| case | MiB/s, median (min–max) | seconds, median | vs parallel range GETs, median (min) | GETs | most at once | MiB sent, most |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let reference = cases.iter().position(|&c| c == Case::Curl).unwrap();
    let (reference_secs, ..) = median_min_max(&measured[reference].secs);
    let reference_rate = mib / reference_secs;
    for (case, m) in cases.iter().zip(measured) {
        let (t, fastest, slowest) = median_min_max(&m.secs);
        let (rate, low, high) = (mib / t, mib / slowest, mib / fastest);
        let gets = m.gets.iter().max().unwrap();
        let peak = m.peak_bodies.iter().max().unwrap();
        let sent = *m.fetched.iter().max().unwrap() as f64 / (1 << 20) as f64;
        println!(
            "| {} | {rate:.1} ({low:.1}–{high:.1}) | {t:.2} | {:.2} ({:.2}) | {gets} | {peak} | {sent:.1} |",
            case.label(width),
            rate / reference_rate,
            low / reference_rate
        );
    }
    for (case, m) in cases.iter().zip(measured) {
        if case.adaptive() && !m.ramps.is_empty() {
            println!("\nramp of {}: {}", case.label(width), m.ramps.join("; "));
        }
    }
}
