//! The engine's read path against a reference model, on the in-memory store, driven the way
//! the filesystem drives it: rounds of concurrent readers at random offsets and sizes, each
//! starting after a random delay (demand reads that start a part at the reader's page, reads
//! inside a part still arriving, footers), in every fetch mode. Parts are either small or
//! larger than the 3 MiB a read must lie ahead of a slow stream to split it, so far reads
//! split parts in flight. A small object's bytes may be supplied with its identity
//! (`supply`). GETs fail or are cut short; the object is replaced while reads are in flight.
//! Runs end in one of three ways, then the next run resumes from the checkpoint: a kill at a
//! random point while reads are in flight (a stop, or a crash: a `PowerCut` drops every write
//! no sync covered, then the stop; the cut falls at once or at a chosen one of the engine's
//! next I/O operations, so between two of its steps: a write and its sync, a sync and the
//! record it allows), a reap (the hydration stopped once idle, as the cache does
//! after the last close), or a final whole read.
//!
//! Asserted for every run: every read ends within its bound with the exact bytes of the
//! version its hydration was started for (never a byte of another) or an error; a fresh
//! durability probe sees no part recorded before it was synced; every part the checkpoint
//! records holds its bytes; a reap keeps every part that was present; every connection permit
//! returns to the limiter. And at the end of each case, a reader gets the whole latest object
//! exact. Over all cases, each of splits, supplies, kills, crashes, reaps and replacements
//! must have happened. `MODEL_CASES=N` runs more cases than the CI's 64.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ossmount::hydrate::storage::PowerCut;
use ossmount::hydrate::{
    Checkpoint, ConnectionLimiter, EngineStats, FetchMode, Hydration, HydrationConfig,
    HydrationFiles, ObjectIdentity,
};
use ossmount::store::memory::{MemoryFaults, MemoryStore};
use ossmount::store::{ObjectMeta, ObjectStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

mod common;
use common::model::{recorded_parts_are_exact, resume_or_clear, run_bounded, Probe};

/// Starts of the engine per case at most (faults end before the last few).
const RUNS: usize = 8;
const CALM_FROM_RUN: usize = 5;
/// The longest one read may take: its own parts' GETs with retries, on a slow stream.
const READ_BOUND: Duration = Duration::from_secs(20);
/// The longest permits may take to come back once a hydration is stopped.
const PERMITS_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Read {
    /// Offset as a fraction of the size, in 1/1000.
    at: u64,
    /// (Large parts) the read lands more than 3 MiB into a part instead: far enough ahead of
    /// a stream from the part's start to split it.
    deep: bool,
    len: u64,
    delay_ms: u64,
}

#[derive(Debug, Clone)]
struct Kill {
    after_round: usize,
    /// After the round's readers start: 0 = at their first await, else this long.
    after_us: u64,
    /// A crash: the power is cut (unsynced writes lost) before the stop.
    crash: bool,
    /// For a crash: the cut falls at the engine's `at_op`th I/O operation (write, read or
    /// sync) from the kill's moment, between two chosen steps of the engine; 0 = at once.
    at_op: u64,
    /// How likely an unsynced write is to survive the crash anyway.
    survive: f64,
}

#[derive(Debug, Clone)]
struct Case {
    size: u64,
    part_size: u64,
    /// Parts of more than 4 MiB streamed in 64 KiB chunks (else small parts, 4 KiB chunks).
    large: bool,
    threads: usize,
    mode: FetchMode,
    reads: Vec<Vec<Read>>,
    fail_gets: Vec<u64>,
    truncate_gets: Vec<(u64, u64)>,
    change_after_get: Option<u64>,
    /// One per run, from the back: the run is killed after that round.
    kills: Vec<Kill>,
    /// One per run, from the back: the run is reaped after that round (once idle).
    reaps: Vec<usize>,
    /// The object is replaced by a new version after this round's readers start (a GET in
    /// flight then finishes on the old version; the next ones fail their If-Match).
    replace_in_round: Option<usize>,
    supply: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::bool::weighted(0.35),
        16u64..=64,
        1usize..=4,
        0usize..3,
    )
        .prop_flat_map(|(large, pages, threads, mode)| {
            // Small parts are larger than the engine's first writes (64 KiB), so a part is
            // readable piece by piece while it arrives.
            let ps = if large {
                (4 << 20) + pages * 4096 + 13
            } else {
                pages * 4096 + 13
            };
            let size = if large {
                prop_oneof![
                    Just(ps),
                    Just(ps + 1),
                    (2u64..4).prop_map(move |n| n * ps - (n * 7919) % ps),
                ]
                .boxed()
            } else {
                prop_oneof![
                    Just(1u64),
                    Just(ps),
                    Just(ps + 1),
                    (2u64..10).prop_map(move |n| n * ps + (n * 7919) % ps),
                ]
                .boxed()
            };
            let max_len = if large { 1 << 20 } else { 3 * ps };
            let read = (
                0u64..1000,
                proptest::bool::weighted(if large { 0.4 } else { 0.0 }),
                1u64..max_len,
                0u64..8,
            )
                .prop_map(|(at, deep, len, delay_ms)| Read {
                    at,
                    deep,
                    len,
                    delay_ms,
                });
            let kill = (0usize..3, 0u64..4000, any::<bool>(), 0usize..3, 0u64..12).prop_map(
                |(after_round, after_us, crash, s, at_op)| Kill {
                    after_round,
                    after_us: if after_us < 1000 { 0 } else { after_us },
                    crash,
                    survive: [0.0, 0.5, 1.0][s],
                    at_op: if at_op < 4 { 0 } else { at_op - 3 },
                },
            );
            (
                (size, Just(ps), Just(large), Just(threads)),
                Just([FetchMode::All, FetchMode::OnDemand, FetchMode::Auto][mode]),
                proptest::collection::vec(proptest::collection::vec(read, 1..6), 1..7),
                (
                    proptest::collection::vec(1u64..30, 0..4),
                    proptest::collection::vec((1u64..30, 0u64..8000), 0..3),
                    proptest::option::weighted(0.2, 1u64..20),
                ),
                (
                    proptest::collection::vec(kill, 0..3),
                    proptest::collection::vec(0usize..4, 0..3),
                    proptest::option::weighted(0.3, 0usize..3),
                ),
                any::<bool>(),
            )
        })
        .prop_map(
            |(
                (size, part_size, large, threads),
                mode,
                reads,
                (fail_gets, truncate_gets, change_after_get),
                (kills, reaps, replace_in_round),
                supply,
            )| Case {
                size,
                part_size,
                large,
                threads,
                mode,
                reads,
                fail_gets,
                truncate_gets,
                change_after_get,
                kills,
                reaps,
                replace_in_round,
                supply,
            },
        )
}

/// What happened over all cases, so the test can tell it exercised what it claims to.
#[derive(Debug, Default)]
struct Seen {
    splits: AtomicU64,
    supplied: AtomicU64,
    kills: AtomicU64,
    crashes: AtomicU64,
    crashes_at_an_operation: AtomicU64,
    reaps: AtomicU64,
    replaced: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The model of the object's versions: every new version is the one before with every byte
/// inverted (what `MemoryFaults::change_after_gets` stores, and the replacement below), so
/// any version holds the original bytes or their inverse, told apart by the CRC-64 its HEAD
/// announces. (Not by the order of ETags: a GET's change and a replacement can interleave.)
struct Versions {
    contents: [(u64, Vec<u8>); 2],
}

impl Versions {
    fn new(original: Vec<u8>) -> Versions {
        let inverse: Vec<u8> = original.iter().map(|b| !b).collect();
        let crc = |b: &[u8]| ossmount::crc64::update(0, b);
        Versions {
            contents: [(crc(&original), original), (crc(&inverse), inverse)],
        }
    }

    /// The bytes of the version `meta` describes, and those of the next one.
    fn of(&self, meta: &ObjectMeta) -> Result<(Vec<u8>, Vec<u8>), String> {
        let [(a, first), (b, second)] = &self.contents;
        match meta.crc64 {
            Some(crc) if crc == *a => Ok((first.clone(), second.clone())),
            Some(crc) if crc == *b => Ok((second.clone(), first.clone())),
            other => Err(format!(
                "a version the model does not know (CRC-64 {other:?})"
            )),
        }
    }
}

/// A read as the filesystem does it: note it, wait for the bytes, check cached ones, serve.
async fn read(h: &Hydration, range: Range<u64>) -> Result<Vec<u8>, String> {
    h.note_read(range.clone());
    loop {
        if h.verify_cached(range.clone())
            .await
            .map_err(|e| e.to_string())?
        {
            break;
        }
        h.wait_range(range.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    h.read_at(range.start, (range.end - range.start) as usize)
        .map_err(|e| e.to_string())
}

/// Reaps `h` as the cache does once no handle has it open: when it is finished, or idle and
/// not fetching the whole object. False when it would not be reaped within a second (it
/// still fetches the whole object). A part present at the reap must stay recorded.
async fn reap(h: &Hydration, ckpt: &Path) -> Result<bool, String> {
    let t0 = Instant::now();
    while !(h.is_complete() || h.failure().is_some() || (!h.continues_after_close() && h.is_idle()))
    {
        if t0.elapsed() > Duration::from_secs(1) {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let layout = h.layout();
    let present: Vec<usize> = (0..layout.count())
        .filter(|&p| h.is_present(layout.range(p)))
        .collect();
    let stopping = h.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    if h.failure().is_none() {
        let recorded = Checkpoint::load(ckpt).ok();
        if let Some(p) = present
            .into_iter()
            .find(|&p| !recorded.as_ref().is_some_and(|c| c.is_present(p)))
        {
            return Err(format!(
                "part {p} was present when the idle hydration was reaped, but is not recorded"
            ));
        }
    }
    Ok(true)
}

/// What every run must leave: each permit back, no record ahead of its sync, no record of
/// bytes that are not there.
async fn settle(
    limiter: &ConnectionLimiter,
    probe: &Probe,
    ckpt: &Path,
    data: &Path,
    want: &[u8],
) -> Result<(), String> {
    let t0 = Instant::now();
    while limiter.in_flight() > 0 {
        if t0.elapsed() > PERMITS_BOUND {
            return Err(format!(
                "{} connection permit(s) still held {PERMITS_BOUND:?} after the stop",
                limiter.in_flight()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Panics if the background share's book does not balance.
    let book = limiter.accounting();
    if book.in_use != 0 {
        return Err(format!("background permits still in use: {book:?}"));
    }
    let violations = probe.violations();
    if !violations.is_empty() {
        return Err(violations.join("; "));
    }
    recorded_parts_are_exact(ckpt, data, want)
}

async fn run_case(c: Case, seen: Arc<Seen>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (data, ckpt) = (dir.path().join("obj.data"), dir.path().join("obj.ckpt"));
    let store = MemoryStore::new("mem://stream");
    let original = ossmount::sample::bytes(c.size ^ 0x5a, c.size as usize);
    store.put("b", "k", original.clone());
    let versions = Versions::new(original);
    // Streams slow enough that readers land inside parts still arriving, and (large parts)
    // that a read far ahead is worth a GET of its own.
    let (chunk, chunk_delay) = if c.large {
        (64 << 10, Duration::from_millis(2))
    } else {
        (4096, Duration::from_micros(300))
    };
    store.set_faults(MemoryFaults {
        fail_gets: c.fail_gets.iter().copied().collect(),
        truncate_gets: c.truncate_gets.clone(),
        change_after_gets: c.change_after_get.into_iter().collect(),
        chunk,
        chunk_delay,
    });
    let store_dyn: Arc<dyn ObjectStore> = store.clone();
    let stats = Arc::new(EngineStats::default());
    let files = HydrationFiles {
        data: data.clone(),
        checkpoint: Some(ckpt.clone()),
        data_mode: 0o600,
    };
    let mut rounds = c.reads.iter();
    let (mut kills, mut reaps) = (c.kills.clone(), c.reaps.clone());
    let mut outcome = Err("no run read the whole object".to_string());
    let mut replaced = false;
    for run in 0..RUNS {
        if run == CALM_FROM_RUN {
            // The flaky network calms down (still slow).
            store.set_faults(MemoryFaults {
                chunk,
                chunk_delay,
                ..Default::default()
            });
        }
        let meta = store.head("b", "k").await.map_err(|e| e.to_string())?;
        let (want, _) = versions.of(&meta)?;
        let id = ObjectIdentity::from_meta("b", "k", &meta);
        let resume = resume_or_clear("mem://stream", &id, &ckpt, &data);
        let probe = Arc::new(Probe::resuming(resume.as_ref()));
        let (kill, reap_at) = (kills.pop(), reaps.pop());
        let power = PowerCut::new(
            u64::MAX,
            kill.as_ref().map_or(0.0, |k| k.survive),
            c.size ^ run as u64,
        );
        let limiter = ConnectionLimiter::new(c.threads + 2, 1);
        let cfg = HydrationConfig {
            part_size: c.part_size,
            threads: c.threads,
            mode: c.mode,
            part_attempts: 3,
            retry_delay: Duration::from_millis(1),
            stats: stats.clone(),
            probe: Some(probe.clone()),
            storage: Arc::new(power.clone()),
            ..Default::default()
        };
        let supplied = c.supply && c.size <= c.part_size;
        let body = supplied.then(|| bytes::Bytes::from(want.clone()));
        if supplied {
            count(&seen.supplied);
        }
        let h = Hydration::start_with(
            store_dyn.clone(),
            id.clone(),
            files.clone(),
            cfg,
            limiter.clone(),
            resume.as_ref(),
            body,
        )
        .map_err(|e| e.to_string())?;
        let mut ended = false; // killed or reaped: the next run resumes
        for (round, readers) in rounds.by_ref().enumerate() {
            let tasks: Vec<_> = readers
                .iter()
                .map(|r| {
                    let start = match (r.deep, c.size.div_ceil(c.part_size)) {
                        (true, parts) => {
                            let part = r.at % parts;
                            let deep = c.part_size - (3 << 20);
                            part * c.part_size + (3 << 20) + r.at * deep / 1000
                        }
                        _ => c.size * r.at / 1000,
                    }
                    .min(c.size - 1);
                    let range = start..(start + r.len).min(c.size);
                    let (h, delay) = (h.clone(), Duration::from_millis(r.delay_ms));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let got = read(&h, range.clone()).await;
                        (range, got)
                    })
                })
                .collect();
            if c.replace_in_round == Some(round) && !replaced {
                tokio::task::yield_now().await;
                let now = store.head("b", "k").await.map_err(|e| e.to_string())?;
                store.put("b", "k", versions.of(&now)?.1);
                replaced = true;
                count(&seen.replaced);
            }
            if let Some(k) = kill.as_ref().filter(|k| k.after_round == round) {
                if k.crash && k.at_op > 0 {
                    // The cut lands on one of the engine's own next steps, if it takes that
                    // many before the round's readers are done; else now.
                    power.cut_after(k.at_op);
                    let until = Instant::now() + Duration::from_secs(2);
                    while !power.was_cut()
                        && Instant::now() < until
                        && !tasks.iter().all(|t| t.is_finished())
                    {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                    if power.was_cut() {
                        count(&seen.crashes_at_an_operation);
                    }
                } else if k.after_us == 0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(k.after_us)).await;
                }
                if k.crash {
                    power.cut_now();
                    count(&seen.crashes);
                }
                let stopping = h.clone();
                tokio::task::spawn_blocking(move || stopping.stop())
                    .await
                    .unwrap();
                count(&seen.kills);
                ended = true;
            }
            for t in tasks {
                let (range, got) = tokio::time::timeout(READ_BOUND, t)
                    .await
                    .map_err(|_| format!("a read did not end within {READ_BOUND:?} (run {run})"))?
                    .unwrap();
                match got {
                    Ok(got) if got != want[range.start as usize..range.end as usize] => {
                        return Err(format!("a read of {range:?} got wrong bytes (run {run})"));
                    }
                    Ok(_) => count(&seen.reads_ok),
                    Err(_) => count(&seen.reads_failed),
                }
            }
            if ended {
                break;
            }
            if reap_at == Some(round) && reap(&h, &ckpt).await? {
                count(&seen.reaps);
                ended = true;
                break;
            }
        }
        if !ended {
            // The last reader reads everything, and finishes only on the verified object.
            let whole = tokio::time::timeout(READ_BOUND * 2, async {
                let got = read(&h, 0..c.size).await?;
                h.wait_verified().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(got)
            })
            .await
            .map_err(|_| format!("the whole read did not end (run {run})"))?;
            h.shutdown().await;
            match whole {
                Ok(got) if got == want => outcome = Ok(()),
                Ok(_) => return Err(format!("the whole read got wrong bytes (run {run})")),
                Err(_) => {} // a changed object or failed parts: start again
            }
        }
        settle(&limiter, &probe, &ckpt, &data, &want)
            .await
            .map_err(|e| format!("{e} (run {run})"))?;
        if outcome.is_ok() {
            break;
        }
    }
    seen.splits
        .fetch_add(stats.part_splits.load(Ordering::Relaxed), Ordering::Relaxed);
    // Faults ended at run CALM_FROM_RUN: by now the object must read whole.
    outcome
}

#[test]
fn reads_at_random_offsets_get_exact_bytes_or_an_error() {
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing case can take up to its bound: shrinking stays within minutes.
        max_shrink_iters: 64,
        ..Config::default()
    });
    let seen = Arc::new(Seen::default());
    let result = runner.run(&case(), |c| {
        run_bounded(Duration::from_secs(90), run_case(c.clone(), seen.clone()))
            .map_err(|e| TestCaseError::fail(format!("{e} in {c:?}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("over {cases} cases: {seen:?}");
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (what, c) in [
        ("splits", &seen.splits),
        ("supplied bodies", &seen.supplied),
        ("kills", &seen.kills),
        ("crashes", &seen.crashes),
        (
            "crashes at an engine operation",
            &seen.crashes_at_an_operation,
        ),
        ("reaps", &seen.reaps),
        ("replacements", &seen.replaced),
        ("reads that got bytes", &seen.reads_ok),
    ] {
        assert!(
            n(c) > 0,
            "no {what} in {cases} cases: the model did not exercise them"
        );
    }
}
