//! Speed to the link's limit: one emulated WAN link (added latency per request, a cap per
//! connection and a cap for the whole link) and one cold object, fetched every way a user
//! would, each case a separate process, cases interleaved, medians of `--rounds`:
//!
//! - one `curl` stream, and `--width` parallel range GETs with curl (what the link allows);
//! - `ossmount download` with its defaults;
//! - a cold `cat` through a fresh mount with the defaults, and with `--threads 3`;
//! - the first 4 KiB at a cold, unaligned offset in the middle of a part (fresh mount, the
//!   file's attributes already looked up), beside the first byte of a curl range GET.
//!
//! `cargo build --release --bin ossmount && cargo run --release --example bench_link`
//! (defaults: 1 GiB, 20 ms, 200 Mbit/s per connection, 1 Gbit/s in all, width 8, 3 rounds).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use bench::arg;
use common::mount::Mount;
use common::{Server, BUCKET};
use ossmount::size::{human_bytes, parse_size};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> f64 {
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
    t.elapsed().as_secs_f64()
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

fn mount(s: &Server, name: &str, extra: &[&str]) -> Mount {
    let base = s.scratch.path().join(name);
    let _ = std::fs::remove_dir_all(&base);
    Mount::start(
        s,
        &format!("oss://{BUCKET}/"),
        &base.join("mnt"),
        &base.join("cache"),
        extra,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size = parse_size(&arg("--size", "1GiB")).unwrap();
    let latency: u64 = arg("--latency-ms", "20").parse().unwrap();
    let per_conn = parse_size(&arg("--per-connection", "25MB")).unwrap();
    let link = parse_size(&arg("--link", "125MB")).unwrap();
    let width: u64 = arg("--width", "8").parse().unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    // `--cases mount`: only the link's width, the mount's defaults and the first bytes.
    let all = arg("--cases", "all") == "all";
    let bin = common::bin();
    assert!(
        bin.exists(),
        "build it first: cargo build --release --bin ossmount"
    );
    let s = Server::start_with(|c| c.allow_anonymous = true).await;
    s.put_sample("big.bin", 11, size);
    s.emu.update_faults(|f| {
        f.latency_ms = latency;
        f.bandwidth_per_connection = per_conn;
        f.bandwidth_total = link;
    });
    let url = format!("{}/{BUCKET}/big.bin", s.emu.endpoint());
    // Mid-part (8 MiB parts), unaligned, past the middle of the object.
    let offset = (size * 7 / 10) / (8 << 20) * (8 << 20) + (3 << 20) + 123;
    let names = [
        "one curl stream",
        "curl, parallel range GETs",
        "`ossmount download`, defaults",
        "mount, cold `cat`, defaults",
        "mount, cold `cat`, `--threads 3`",
        "`ossmount download --threads auto`",
    ];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // GETs each case sent for the object (a part split by a far read would show here).
    let mut gets: Vec<u64> = vec![0; names.len()];
    let get_count = |s: &Server| s.emu.object_counters(BUCKET, "big.bin").get_requests;
    let mut first_4k = Vec::new();
    let mut curl_first_byte = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        if all {
            secs[0].push(run(Command::new("curl").args([
                "-sf",
                "-o",
                "/dev/null",
                &url,
            ])));
        }
        let before = get_count(&s);
        secs[1].push(parallel_curl(&url, size, width));
        gets[1] = get_count(&s) - before;
        if all {
            let out = s.scratch.path().join("download.out");
            let before = get_count(&s);
            secs[2].push(run(Command::new(&bin)
                .args(["download", "-q", &format!("oss://{BUCKET}/big.bin")])
                .arg(&out)
                .envs(s.env())));
            gets[2] = get_count(&s) - before;
            let _ = std::fs::remove_file(&out);
            let before = get_count(&s);
            secs[5].push(run(Command::new(&bin)
                .args(["download", "-q", "--threads", "auto"])
                .arg(format!("oss://{BUCKET}/big.bin"))
                .arg(&out)
                .envs(s.env())));
            gets[5] = get_count(&s) - before;
            let _ = std::fs::remove_file(&out);
        }
        let mounts: &[(usize, &[&str])] = if all {
            &[(3, &[]), (4, &["--threads", "3"])]
        } else {
            &[(3, &[])]
        };
        for &(i, extra) in mounts {
            let m = mount(&s, "cat", extra);
            let p = m.path("big.bin");
            let before = get_count(&s);
            secs[i].push(run(Command::new("sh")
                .arg("-c")
                .arg(format!("cat '{}' > /dev/null", p.display()))));
            gets[i] = get_count(&s) - before;
            drop(m);
        }
        let m = mount(&s, "first", &[]);
        let p = m.path("big.bin");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), size);
        first_4k.push(run(Command::new("dd")
            .arg(format!("if={}", p.display()))
            .args(["of=/dev/null", "bs=4096", "count=1", "iflag=skip_bytes"])
            .arg(format!("skip={offset}"))));
        drop(m);
        let out = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-w", "%{time_starttransfer}"])
            .args(["-r", &format!("{offset}-{}", offset + 4095), &url])
            .output()
            .unwrap();
        curl_first_byte.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .unwrap(),
        );
    }
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "\n{} cold, {latency} ms per request, {}/s per connection, {}/s in all; median of {rounds}\n",
        human_bytes(size),
        human_bytes(per_conn),
        human_bytes(link)
    );
    println!("| case | MiB/s | time | vs parallel range GETs | GETs (last round) |");
    println!("|---|---:|---:|---:|---:|");
    let width_rate = mib / median(&mut secs[1].clone());
    for (i, name) in names.iter().enumerate() {
        if secs[i].is_empty() {
            continue;
        }
        let t = median(&mut secs[i]);
        let label = if i == 1 {
            format!("{name} ({width})")
        } else {
            name.to_string()
        };
        let requests = if i == 0 { 1 } else { gets[i] };
        println!(
            "| {label} | {:.1} | {t:.2} s | {:.2} | {requests} |",
            mib / t,
            (mib / t) / width_rate
        );
    }
    let (f, c) = (median(&mut first_4k), median(&mut curl_first_byte));
    println!("\n| first bytes at offset {offset} (cold, mid-part) | time | vs curl |");
    println!("|---|---:|---:|");
    println!("| curl range GET, first byte | {:.0} ms | 1.00 |", c * 1e3);
    println!(
        "| mount: open + read of 4 KiB (`dd`, process included) | {:.0} ms | {:.2} |",
        f * 1e3,
        f / c
    );
    s.emu.update_faults(|f| {
        f.latency_ms = 0;
        f.bandwidth_per_connection = 0;
        f.bandwidth_total = 0;
    });
}
