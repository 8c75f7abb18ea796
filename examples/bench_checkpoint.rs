//! What recording parts costs: a `--size` object (default 10 GiB) in `--part-size` parts
//! (default 1 MiB: 10,240 parts, as many as an 80 GiB object has at 8 MiB), every part
//! recorded durably, one after another (the worst case: the engine syncs records a second
//! apart) — in format 1 (the whole
//! JSON record rewritten each time: temp file, fsync, rename, fsync of the directory) and in
//! format 2 (the part's 16-byte record written in place, then fdatasync). Prints bytes
//! written, time per part (median and max) and the total, side by side. No object bytes
//! are involved: this is the record's cost alone.
//!
//! Then the engine's whole run on such an object (`--engine-rounds`, default 1; 0 skips it):
//! a sparse object of `--size` from the emulator on loopback, downloaded in `--part-size`
//! parts with 8 threads, with a checkpoint and without, in turn: wall time, and the bytes
//! the process sent to storage (`write_bytes` of /proc/self/io, whole pages, as the disk
//! sees them) — the difference is what recording costs in a real run.
//!
//! `cargo run --release --example bench_checkpoint [-- --size 10GiB --part-size 1MiB
//! --engine-rounds 1]`

mod common;
use common::arg;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ossmount::hydrate::checkpoint::{sync_dir, RecordFile};
use ossmount::hydrate::{Checkpoint, ObjectIdentity};
use ossmount::size::{human_bytes, parse_size};

struct Run {
    bytes: u64,
    per_part: Vec<f64>,
    total: f64,
}

fn identity(size: u64) -> ObjectIdentity {
    ObjectIdentity {
        bucket: "bench".into(),
        key: "big/object.bin".into(),
        size,
        etag: "\"0123456789ABCDEF0123456789ABCDEF\"".into(),
        last_modified: "Mon, 30 Nov 2026 00:00:00 GMT".into(),
        crc64: Some(0x1234_5678_9ABC_DEF0),
        digest: None,
    }
}

/// Format 1, as the engine wrote it before: the whole record, atomically, per part.
fn format_1(dir: &Path, mut c: Checkpoint) -> Run {
    let path = dir.join("v1.ckpt");
    let tmp = dir.join("v1.ckpt.tmp");
    let started = Instant::now();
    let mut bytes = 0;
    let mut per_part = Vec::with_capacity(c.part_crc64.len());
    for p in 0..c.part_crc64.len() {
        let t = Instant::now();
        c.present.insert(p);
        c.part_crc64[p] = 0x9E37_79B9_7F4A_7C15 ^ p as u64;
        let json = c.to_json();
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&json).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        sync_dir(&path).unwrap();
        bytes += json.len() as u64;
        per_part.push(t.elapsed().as_secs_f64());
    }
    Run {
        bytes,
        per_part,
        total: started.elapsed().as_secs_f64(),
    }
}

/// Format 2: one whole write when the hydration starts, then one record per part.
fn format_2(dir: &Path, c: Checkpoint) -> Run {
    let path = dir.join("v2.ckpt");
    let started = Instant::now();
    let mut file = RecordFile::create(&c, &path, true, &ossmount::hydrate::storage::Local).unwrap();
    let mut bytes = std::fs::metadata(&path).unwrap().len();
    let mut per_part = Vec::with_capacity(c.part_crc64.len());
    for p in 0..c.part_crc64.len() {
        let t = Instant::now();
        file.set(p, Some(0x9E37_79B9_7F4A_7C15 ^ p as u64)).unwrap();
        file.sync().unwrap();
        bytes += 16;
        per_part.push(t.elapsed().as_secs_f64());
    }
    let total = started.elapsed().as_secs_f64();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(
        back.parts_present(),
        c.part_crc64.len(),
        "every part recorded"
    );
    Run {
        bytes,
        per_part,
        total,
    }
}

fn main() {
    let size = parse_size(&arg("--size", "10GiB")).unwrap();
    let part_size = parse_size(&arg("--part-size", "1MiB")).unwrap();
    let dir = std::path::PathBuf::from(arg("--dir", "target/bench-checkpoint"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c = Checkpoint::new(
        "http://127.0.0.1:9000",
        &identity(size),
        part_size,
        &dir.join("object.data"),
    );
    let parts = c.part_crc64.len();
    eprintln!("recording {parts} parts in format 2, then in format 1…");
    let runs = [
        ("2 (records in place)", format_2(&dir, c.clone())),
        ("1 (whole JSON per part)", format_1(&dir, c)),
    ];
    println!(
        "\ncheckpoint cost for a {} object in {} parts of {} (durable records, one after another)\n",
        human_bytes(size),
        parts,
        human_bytes(part_size)
    );
    println!("| format | bytes written | of the data | per part, median | per part, max | total |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, mut run) in runs {
        run.per_part.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {name} | {} | {:.4}% | {:.3} ms | {:.3} ms | {:.2} s |",
            human_bytes(run.bytes),
            run.bytes as f64 * 100.0 / size as f64,
            run.per_part[parts / 2] * 1e3,
            run.per_part[parts - 1] * 1e3,
            run.total
        );
    }
    let rounds = common::arg_number("--engine-rounds", 1) as usize;
    if rounds > 0 {
        engine_runs(&dir, size, part_size, rounds);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes this process has sent to storage so far (page-granular, as dirtied).
fn storage_bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("/proc/self/io has write_bytes")
}

fn engine_runs(dir: &Path, size: u64, part_size: u64, rounds: usize) {
    use ossmount::emulator::{Emulator, EmulatorConfig};
    use ossmount::hydrate::download::{resumable_download, DownloadRequest};
    use std::sync::Arc;

    let root = dir.join("server");
    let object = root.join("bench").join("sparse.bin");
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::File::create(&object)
        .unwrap()
        .set_len(size)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = EmulatorConfig::new(&root, common::BENCH_AK, common::BENCH_SK);
    let emu = rt.block_on(Emulator::start(cfg, "127.0.0.1:0")).unwrap();
    let client = Arc::new(
        ossmount::oss::OssClient::new(common::bench_client_config(&emu.endpoint())).unwrap(),
    );
    let local = dir.join("sparse.out");
    let download = |checkpoint: bool| -> (f64, u64) {
        let mut req = DownloadRequest::new("bench", "sparse.bin", &local);
        req.part_size = part_size;
        req.threads = 8;
        if !checkpoint {
            req.checkpoint = None;
        }
        let written = storage_bytes_written();
        let started = Instant::now();
        let r = rt
            .block_on(resumable_download(client.clone(), &req, |_| {}))
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(r.size, size);
        let written = storage_bytes_written() - written;
        std::fs::remove_file(&local).unwrap();
        (secs, written)
    };
    eprintln!("warming the emulator's CRC-64 of the object…");
    let _ = rt.block_on(async {
        use ossmount::store::ObjectStore;
        client.head("bench", "sparse.bin").await
    });
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("engine round {}/{rounds}", round + 1);
        with.push(download(true));
        without.push(download(false));
    }
    let median = |v: &mut Vec<(f64, u64)>| {
        v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        v[v.len() / 2]
    };
    let (w, wo) = (median(&mut with), median(&mut without));
    println!(
        "
the engine's whole run: {} sparse object from the emulator (loopback), {} parts, 8 threads; median of {rounds}
",
        human_bytes(size),
        human_bytes(part_size)
    );
    println!("| run | wall | bytes to storage | of the data |");
    println!("|---|---:|---:|---:|");
    for (name, (secs, bytes)) in [
        ("with checkpoint (format 2)", w),
        ("without checkpoint", wo),
    ] {
        println!(
            "| {name} | {secs:.2} s | {} | {:.2}% |",
            human_bytes(bytes),
            bytes as f64 * 100.0 / size as f64
        );
    }
    println!(
        "
recording costs {} to storage ({:.3}% of the data) and {:.2}x the wall time",
        human_bytes(w.1.saturating_sub(wo.1)),
        w.1.saturating_sub(wo.1) as f64 * 100.0 / size as f64,
        w.0 / wo.0
    );
    rt.block_on(emu.shutdown());
}
