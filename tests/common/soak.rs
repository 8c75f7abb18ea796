//! The soak run shared by `tests/soak.rs` (one minute in CI) and `examples/soak.rs`
//! (`--minutes N`): a seeded dataset (small files under one part, multi-part files of
//! 10–56 MiB with 1 MiB parts, one of them larger than the cache so it is read directly)
//! served by the emulator with about 10% of requests failing (503s, resets, cut bodies),
//! read through the real kernel mount by many reader threads (`soak_reader`), while the run
//! remounts it round after round with `--max-connections` between 1 and 16, replaces objects
//! now and then, and ends rounds with SIGKILL or SIGTERM. No read may return a wrong byte or
//! wait past the hang bound; at the end, with the faults gone, every file reads back as its
//! newest version.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::mount::*;
use super::soak_reader::{reader_loop, Shared, SoakFile, Tally, Version, MAX_VERSIONS};
use super::*;

/// How long listings and attributes are trusted: replacements show within it.
const METADATA_TTL: &str = "2s";
/// A read of an old version is stale on a handle opened this long after the new one was
/// published: the TTL, plus slack for the kernel's own caches and a slow machine.
const STALE_AFTER: Duration = Duration::from_secs(4);
const CACHE_SIZE: u64 = 48 * MIB;
const SMALL_FILES: usize = 8;

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub seed: u64,
    pub readers: usize,
    /// An open or read waiting longer than this is hung and fails the run.
    pub hang_bound: Duration,
    /// Replace objects now and then (off, the rest of the run can be checked on its own).
    pub replace_objects: bool,
    /// Print a line per round.
    pub verbose: bool,
}

impl SoakOptions {
    pub fn new(duration: Duration, seed: u64) -> SoakOptions {
        SoakOptions {
            duration,
            seed,
            readers: 8,
            hang_bound: Duration::from_secs(90),
            replace_objects: true,
            verbose: false,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub rounds: usize,
    pub kills: usize,
    /// Rounds ended with SIGTERM (a clean unmount while files are open).
    pub stops: usize,
    pub replacements: usize,
    pub faults_injected: u64,
    pub readers: Tally,
    /// Files that read back whole as their newest version at the end, of `files`.
    pub files_exact_at_end: usize,
    pub files: usize,
    /// Files whose final read-back did not finish within the hang bound.
    pub final_reads_hung: usize,
}

impl SoakReport {
    /// No wrong byte, no mixed or stale read, nothing hung, and every file right at the end.
    pub fn passed(&self) -> bool {
        self.readers.wrong_bytes == 0
            && self.readers.wrong_reads == 0
            && self.readers.stale_reads == 0
            && self.readers.hung == 0
            && self.final_reads_hung == 0
            && self.files_exact_at_end == self.files
    }

    /// A Markdown table of the run, then what went wrong, if anything.
    pub fn table(&self) -> String {
        let t = &self.readers;
        let errors = if t.errors.is_empty() {
            "none".to_string()
        } else {
            let kinds: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            kinds.join(", ")
        };
        let mut out = String::new();
        out.push_str("| minutes | rounds | reads | bytes read | whole-file reads | faults injected | replacements | kills | clean stops | read errors | wrong bytes | stale reads | hung reads | longest read wait | files exact at end |\n");
        out.push_str(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
        );
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | {:.2} GiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {}/{} |",
            self.elapsed.as_secs_f64() / 60.0,
            self.rounds,
            t.reads,
            t.bytes as f64 / (1u64 << 30) as f64,
            t.whole_file_reads,
            self.faults_injected,
            self.replacements,
            self.kills,
            self.stops,
            errors,
            t.wrong_bytes,
            t.stale_reads,
            t.hung + self.final_reads_hung as u64,
            t.longest_read.as_secs_f64(),
            self.files_exact_at_end,
            self.files,
        );
        let _ = writeln!(out, "(seed {}, wrong reads {})", self.seed, t.wrong_reads);
        for f in &t.findings {
            let _ = writeln!(out, "- {f}");
        }
        out
    }
}

/// The dataset: small files (one of exactly one part, one of one part and a byte), and
/// multi-part files, the last larger than the cache.
fn dataset(rng: &mut StdRng) -> Vec<SoakFile> {
    let mut files = Vec::new();
    for i in 0..SMALL_FILES {
        let len = match i {
            0 => MIB,
            1 => MIB + 1,
            _ => rng.gen_range(1..MIB),
        };
        files.push((format!("small/s{i}.bin"), len));
    }
    for (i, mib) in [(10, 18), (14, 24), (20, 30), (49, 56)].iter().enumerate() {
        files.push((
            format!("big/b{i}.bin"),
            rng.gen_range(mib.0 * MIB..mib.1 * MIB),
        ));
    }
    let now = Instant::now();
    files
        .into_iter()
        .map(|(key, len)| SoakFile {
            key,
            versions: std::sync::RwLock::new(vec![Version {
                seed: rng.gen(),
                len,
                published: Some(now),
            }]),
        })
        .collect()
}

/// A new version of `file` on the server, of a length in the same class (under a part, a
/// few parts, larger than the cache), written aside and renamed into place.
fn replace(s: &Server, staging: &Path, file: &SoakFile, rng: &mut StdRng) {
    let old_len = file.versions.read().unwrap().last().unwrap().len;
    let len = if old_len <= MIB + 1 {
        rng.gen_range(0..=MIB + 1)
    } else if old_len <= CACHE_SIZE {
        rng.gen_range(
            old_len.saturating_sub(2 * MIB).max(2 * MIB + 1)..=(old_len + 2 * MIB).min(CACHE_SIZE),
        )
    } else {
        rng.gen_range(CACHE_SIZE + 1..=(old_len + 2 * MIB).min(60 * MIB))
    };
    let seed = rng.gen();
    // Listed before the rename: a read may see the new bytes the moment it lands.
    file.versions.write().unwrap().push(Version {
        seed,
        len,
        published: None,
    });
    let tmp = staging.join(file.key.replace('/', "_"));
    ossmount::sample::write_file(&tmp, seed, len).unwrap();
    std::fs::rename(&tmp, s.object_path(&file.key)).unwrap();
    file.versions.write().unwrap().last_mut().unwrap().published = Some(Instant::now());
}

/// Sets `stop` when dropped, so reader threads end even when the run panics.
struct StopReaders(Arc<Shared>);

impl Drop for StopReaders {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

pub async fn run_soak(o: &SoakOptions) -> SoakReport {
    require_fuse();
    let started = Instant::now();
    let s = Server::start().await;
    let mut rng = StdRng::seed_from_u64(o.seed);
    let files = dataset(&mut rng);
    for f in &files {
        let v = f.versions.read().unwrap()[0].clone();
        s.put_sample(&f.key, v.seed, v.len);
    }
    let staging = s.scratch.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let (mnt, cache) = dirs(&s, "soak");
    let mut report = SoakReport {
        seed: o.seed,
        files: files.len(),
        ..Default::default()
    };
    let shared = Arc::new(Shared::new(
        files,
        mnt.clone(),
        o.readers,
        STALE_AFTER,
        o.hang_bound,
    ));
    let _stop_guard = StopReaders(shared.clone());
    let readers: Vec<_> = (0..o.readers)
        .map(|i| {
            let (sh, seed) = (shared.clone(), rng.gen());
            std::thread::spawn(move || reader_loop(&sh, i, seed))
        })
        .collect();
    s.emu.update_faults(|f| {
        f.error_rate = 0.04;
        f.reset_rate = 0.03;
        f.truncate_rate = 0.03;
    });
    let cache_size = format!("{CACHE_SIZE}");
    let deadline = started + o.duration;
    let mut next_replacement = Instant::now() + Duration::from_secs(rng.gen_range(2..=5));
    loop {
        let connections = rng.gen_range(1..=16usize).to_string();
        let args = [
            "--part-size",
            "1MiB",
            "--cache-size",
            &cache_size,
            "--metadata-ttl",
            METADATA_TTL,
            "--max-connections",
            &connections,
        ];
        let m = tokio::task::block_in_place(|| Mount::start(&s, &url(), &mnt, &cache, &args));
        shared.mount_epoch.fetch_add(1, Ordering::AcqRel);
        let round_end =
            (Instant::now() + Duration::from_millis(rng.gen_range(3000..=10_000))).min(deadline);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let long_wait = shared.watchdog();
            if o.replace_objects && Instant::now() >= next_replacement {
                let candidates: Vec<usize> = (0..shared.files.len())
                    .filter(|&i| shared.files[i].versions.read().unwrap().len() < MAX_VERSIONS)
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[rng.gen_range(0..candidates.len())];
                    let mut file_rng = StdRng::seed_from_u64(rng.gen());
                    tokio::task::block_in_place(|| {
                        replace(&s, &staging, &shared.files[i], &mut file_rng)
                    });
                    report.replacements += 1;
                    if o.verbose {
                        let f = &shared.files[i];
                        let versions = f.versions.read().unwrap();
                        let v = versions.last().unwrap();
                        eprintln!(
                            "{:6.1} s: replaced {} with version {} (seed {:#x}, {} bytes)",
                            shared.started.elapsed().as_secs_f64(),
                            f.key,
                            versions.len() - 1,
                            v.seed,
                            v.len
                        );
                    }
                }
                next_replacement = Instant::now() + Duration::from_secs(rng.gen_range(2..=6));
            }
            let hung = shared.tally.lock().unwrap().hung > 0;
            // A read waiting long keeps the mount up until it ends or is declared hung: a
            // kill would end it with an error and hide the hang.
            if hung || (Instant::now() >= round_end && !long_wait) {
                break;
            }
        }
        let last = Instant::now() >= deadline || shared.tally.lock().unwrap().hung > 0;
        if last {
            // Readers finish their current read on a live mount before it goes.
            shared.stop.store(true, Ordering::Release);
            while !readers.iter().all(|r| r.is_finished()) {
                shared.watchdog();
                if shared.tally.lock().unwrap().hung > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        shared.mount_epoch.fetch_add(1, Ordering::AcqRel);
        report.rounds += 1;
        // About half the rounds, and always the second, end in a SIGKILL; the others in a
        // SIGTERM (a clean unmount with files open). The last one ends cleanly: the final
        // check mounts the same cache again.
        let kill = !last && (report.rounds == 2 || rng.gen_bool(0.5));
        let mut m = m;
        if kill {
            tokio::task::block_in_place(|| m.kill9());
            report.kills += 1;
        } else {
            tokio::task::block_in_place(|| drop(m));
            report.stops += 1;
        }
        if o.verbose {
            let t = shared.tally();
            eprintln!(
                "round {:>3} ({} connections, {}): {} reads, {} errors, {} wrong bytes, {} hung; {} replacements, {} faults so far",
                report.rounds,
                connections,
                if kill { "SIGKILL" } else { "SIGTERM" },
                t.reads,
                t.errors.values().sum::<u64>(),
                t.wrong_bytes,
                t.hung,
                report.replacements,
                {
                    let c = s.emu.totals();
                    c.injected_errors + c.injected_cuts
                }
            );
        }
        if last {
            break;
        }
    }
    // With the mount gone every read has ended; a reader still running is stuck elsewhere.
    let joined = wait_until(Duration::from_secs(30), || {
        readers.iter().all(|r| r.is_finished())
    });
    if joined {
        for r in readers {
            r.join().expect("a reader does not panic");
        }
    } else {
        let mut t = shared.tally.lock().unwrap();
        t.hung += 1;
        t.findings
            .push("a reader thread did not end within 30 s of the last unmount".into());
    }
    let totals = s.emu.totals();
    report.faults_injected = totals.injected_errors + totals.injected_cuts;
    s.emu.update_faults(|f| {
        f.error_rate = 0.0;
        f.reset_rate = 0.0;
        f.truncate_rate = 0.0;
    });
    check_newest_versions(&s, &shared, &cache, o.hang_bound, &mut report).await;
    report.readers = shared.tally();
    report.elapsed = started.elapsed();
    report
}

/// A fresh mount on the same cache, no faults: every file reads back whole as its newest
/// version.
async fn check_newest_versions(
    s: &Server,
    shared: &Shared,
    cache: &Path,
    bound: Duration,
    report: &mut SoakReport,
) {
    let cache_size = format!("{CACHE_SIZE}");
    let args = ["--part-size", "1MiB", "--cache-size", &cache_size];
    let m = tokio::task::block_in_place(|| Mount::start(s, &url(), &shared.mnt, cache, &args));
    for f in &shared.files {
        let newest = f.versions.read().unwrap().last().unwrap().clone();
        let path = m.path(&f.key);
        let read = tokio::time::timeout(
            bound,
            tokio::task::spawn_blocking(move || std::fs::read(path)),
        )
        .await;
        let mut t = shared.tally.lock().unwrap();
        match read {
            Ok(Ok(Ok(data))) => {
                if data.len() as u64 == newest.len
                    && data == ossmount::sample::bytes(newest.seed, newest.len as usize)
                {
                    report.files_exact_at_end += 1;
                } else {
                    t.findings.push(format!(
                        "{}: the final read-back returned {} bytes, not the newest version (seed {:#x}, {} bytes)",
                        f.key,
                        data.len(),
                        newest.seed,
                        newest.len
                    ));
                }
            }
            Ok(Ok(Err(e))) => t
                .findings
                .push(format!("{}: the final read-back failed: {e}", f.key)),
            Ok(Err(e)) => panic!("the final read-back panicked: {e}"),
            Err(_) => {
                report.final_reads_hung += 1;
                t.findings.push(format!(
                    "{}: the final read-back did not finish within {bound:?}",
                    f.key
                ));
            }
        }
    }
    drop(m);
}
