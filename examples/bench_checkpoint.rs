//! What recording parts costs: a `--size` object (default 10 GiB) in `--part-size` parts
//! (default 1 MiB: 10,240 parts, as many as an 80 GiB object has at 8 MiB), every part
//! recorded as the engine records it — durably, one after another — in format 1 (the whole
//! JSON record rewritten each time: temp file, fsync, rename, fsync of the directory) and in
//! format 2 (the part's 16-byte record written in place, then fdatasync). Prints bytes
//! written, time per part (median and max) and the total, side by side. No object bytes
//! are involved: this is the record's cost alone.
//!
//! `cargo run --release --example bench_checkpoint [-- --size 10GiB --part-size 1MiB]`

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
    let file = RecordFile::create(&c, &path, true).unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}
