//! The chaos run shared by `tests/chaos.rs` (a short one in CI) and `examples/chaos.rs`
//! (`--rounds 200`): files of several sizes read through the real kernel mount while the
//! emulator injects 503s, resets and cut bodies, the mount SIGKILLed at a random moment each
//! round and remounted on the same cache. Whatever a read returns in full must be exact;
//! after every kill, every part a checkpoint records must hold exactly its bytes; after the
//! last round, with the faults gone, every file must read back byte-exact.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::mount::*;
use super::*;

#[derive(Debug, Default, Clone)]
pub struct ChaosReport {
    pub rounds: usize,
    pub kills: usize,
    pub faults_injected: u64,
    pub full_reads: u64,
    pub failed_reads: u64,
    pub wrong_bytes: u64,
    pub bad_records: u64,
    pub files_exact_at_end: usize,
    pub files: usize,
}

struct File {
    key: String,
    seed: u64,
    len: u64,
}

fn expected(f: &File) -> Vec<u8> {
    ossmount::sample::bytes(f.seed, f.len as usize)
}

/// Parts recorded by any checkpoint in `cache` whose bytes differ from the object's.
fn bad_records(cache: &Path, files: &[File]) -> u64 {
    let mut bad = 0;
    for c in entry_checkpoints(cache) {
        let Some(f) = files.iter().find(|f| f.key == c.key) else {
            continue;
        };
        let data = PathBuf::from(&c.data_file);
        let Ok(on_disk) = std::fs::read(&data) else {
            continue;
        };
        let want = expected(f);
        let layout = c.layout();
        for p in c.present.ones() {
            let r = layout.range(p);
            if on_disk.get(r.start as usize..r.end as usize)
                != want.get(r.start as usize..r.end as usize)
            {
                bad += 1;
            }
        }
    }
    bad
}

pub async fn run_chaos(rounds: usize, seed: u64, verbose: bool) -> ChaosReport {
    require_fuse();
    let s = Server::start().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files = Vec::new();
    for i in 0..10 {
        files.push(File {
            key: format!("small/f{i}.bin"),
            seed: 1000 + i,
            len: rng.gen_range(1..300_000),
        });
    }
    for i in 0..3 {
        files.push(File {
            key: format!("big/b{i}.bin"),
            seed: 2000 + i,
            len: rng.gen_range(3 * MIB..7 * MIB) + i,
        });
    }
    for f in &files {
        s.put_sample(&f.key, f.seed, f.len);
    }
    let (mnt, cache) = dirs(&s, "chaos");
    // A cache smaller than the data: entries are evicted and fetched again every round.
    let args = [
        "--part-size",
        "1MiB",
        "--threads",
        "3",
        "--cache-size",
        "10MiB",
    ];
    let mut report = ChaosReport {
        files: files.len(),
        ..Default::default()
    };
    let files = Arc::new(files);
    s.emu.update_faults(|f| {
        f.error_rate = 0.1;
        f.reset_rate = 0.1;
        f.truncate_rate = 0.1;
    });
    for round in 0..rounds {
        let mut m = Mount::start(&s, &url(), &mnt, &cache, &args);
        let full = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(AtomicU64::new(0));
        let mut order: Vec<usize> = (0..files.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let reader = {
            let (files, mnt) = (files.clone(), mnt.clone());
            let (full, failed, wrong) = (full.clone(), failed.clone(), wrong.clone());
            std::thread::spawn(move || {
                for i in order {
                    let f = &files[i];
                    match std::fs::read(mnt.join(&f.key)) {
                        Ok(data) => {
                            full.fetch_add(1, Ordering::Relaxed);
                            if data != expected(f) {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..700))).await;
        m.kill9();
        report.kills += 1;
        let joined = tokio::task::spawn_blocking(move || reader.join());
        tokio::time::timeout(Duration::from_secs(30), joined)
            .await
            .expect("the reader ends once the mount is gone")
            .unwrap()
            .expect("the reader does not panic");
        report.full_reads += full.load(Ordering::Relaxed);
        report.failed_reads += failed.load(Ordering::Relaxed);
        report.wrong_bytes += wrong.load(Ordering::Relaxed);
        report.bad_records += bad_records(&cache, &files);
        report.rounds = round + 1;
        if verbose {
            let t = s.emu.totals();
            eprintln!(
                "round {:>3}: {} full reads, {} failed, {} wrong; {} faults injected so far",
                round + 1,
                full.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                wrong.load(Ordering::Relaxed),
                t.injected_errors + t.injected_cuts
            );
        }
    }
    let t = s.emu.totals();
    report.faults_injected = t.injected_errors + t.injected_cuts;
    s.emu.update_faults(|f| {
        f.error_rate = 0.0;
        f.reset_rate = 0.0;
        f.truncate_rate = 0.0;
    });
    let m = Mount::start(&s, &url(), &mnt, &cache, &args);
    for f in files.iter() {
        let p = m.path(&f.key);
        let data = fs_op(Duration::from_secs(60), move || std::fs::read(p)).await;
        if data.is_ok_and(|d| d == expected(f)) {
            report.files_exact_at_end += 1;
        }
    }
    drop(m);
    report
}
