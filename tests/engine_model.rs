//! The resumable engine against a reference model, on the in-memory store: random object
//! sizes (0, 1, PartSize−1, PartSize, PartSize+1, many parts), part sizes, thread counts,
//! fault schedules (failed GETs, cut bodies, an object replaced mid-way, a lying CRC) and
//! kill points (the engine is stopped at whatever await point it reached, then reopened from
//! its checkpoint). The outcome is always the object's exact bytes or a clean error, never a
//! wrong byte; after every kill, every part the checkpoint records holds exactly its bytes;
//! and a durability probe fails the case if a part is ever recorded before its range was
//! synced. A second property cuts the power (`hydrate::storage::PowerCut`) at a random I/O
//! operation: every write no completed sync covered is lost (some kept at random, as a disk
//! may), and the engine restarts from what survived; no record may name bytes that are not
//! there, and the object must then read back exact.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ossmount::hydrate::storage::PowerCut;
use ossmount::hydrate::{
    ConnectionLimiter, HydrateError, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
};
use ossmount::store::memory::{MemoryFaults, MemoryStore};
use ossmount::store::ObjectStore;
use proptest::prelude::*;

mod common;
use common::model::{recorded_parts_are_exact, resume_or_clear, run_bounded, Probe};

#[derive(Debug, Clone)]
struct Case {
    size: u64,
    part_size: u64,
    threads: usize,
    fail_gets: Vec<u64>,
    truncate_gets: Vec<(u64, u64)>,
    change_after_get: Option<u64>,
    lie_about_crc: bool,
    /// Kill the engine once the store has answered this many more GETs.
    kills: Vec<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (1u64..=8, 1usize..=4)
        .prop_flat_map(|(part_kib, threads)| {
            let ps = part_kib * 1024 + 13;
            let size = prop_oneof![
                Just(0u64),
                Just(1u64),
                Just(ps - 1),
                Just(ps),
                Just(ps + 1),
                (2u64..40).prop_map(move |n| n * ps + n * 7 % ps),
            ];
            (
                size,
                Just(ps),
                Just(threads),
                proptest::collection::vec(1u64..40, 0..6),
                proptest::collection::vec((1u64..40, 0u64..4000), 0..4),
                proptest::option::weighted(0.15, 1u64..30),
                proptest::bool::weighted(0.1),
                proptest::collection::vec(1u64..12, 0..3),
            )
        })
        .prop_map(
            |(size, part_size, threads, fail_gets, truncate_gets, change_after_get, lie, kills)| {
                Case {
                    size,
                    part_size,
                    threads,
                    fail_gets,
                    truncate_gets,
                    // A new version resets the announced CRC: the two are tested apart.
                    change_after_get: if lie { None } else { change_after_get },
                    lie_about_crc: lie,
                    kills,
                }
            },
        )
}

fn object_bytes(seed: u64, len: u64) -> Vec<u8> {
    ossmount::sample::bytes(seed, len as usize)
}

async fn run_case(c: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("obj.data");
    let ckpt = dir.path().join("obj.ckpt");
    let store = MemoryStore::new("mem://model");
    let original = object_bytes(c.size ^ 0xab, c.size);
    store.put("b", "k", original.clone());
    if c.lie_about_crc {
        let real = ossmount::crc64::update(0, &original);
        store.announce_crc64("b", "k", Some(real ^ 1));
    }
    store.set_faults(MemoryFaults {
        fail_gets: c.fail_gets.iter().copied().collect(),
        truncate_gets: c.truncate_gets.clone(),
        change_after_gets: c.change_after_get.into_iter().collect(),
        ..Default::default()
    });
    // The model: each version's bytes, by ETag (a change inverts every byte).
    let mut versions: HashMap<String, Vec<u8>> = HashMap::new();
    let first = store.head("b", "k").await.map_err(|e| e.to_string())?;
    versions.insert(first.etag.clone(), original.clone());
    let mut latest = original;
    let mut violations = Vec::new();
    let store_dyn: Arc<dyn ObjectStore> = store.clone();
    let mut kills = c.kills.clone();
    let mut outcome = None;
    for run in 0..12 {
        if run == 8 {
            // Enough: the faults end, as a flaky network's do.
            store.set_faults(MemoryFaults::default());
        }
        let meta = store.head("b", "k").await.map_err(|e| e.to_string())?;
        let want = versions
            .entry(meta.etag.clone())
            .or_insert_with(|| latest.iter().map(|b| !b).collect())
            .clone();
        latest = want.clone();
        let id = ObjectIdentity::from_meta("b", "k", &meta);
        let resume = resume_or_clear("mem://model", &id, &ckpt, &data);
        let files = HydrationFiles {
            data: data.clone(),
            checkpoint: Some(ckpt.clone()),
            data_mode: 0o600,
        };
        // A fresh probe per run (see `Probe`).
        let probe = Arc::new(Probe::resuming(resume.as_ref()));
        let cfg = HydrationConfig {
            part_size: c.part_size,
            threads: c.threads,
            part_attempts: 3,
            retry_delay: Duration::from_millis(1),
            probe: Some(probe.clone()),
            ..Default::default()
        };
        let h = Hydration::start(
            store_dyn.clone(),
            id.clone(),
            files,
            cfg.clone(),
            ConnectionLimiter::new(c.threads + 2, 1),
            resume.as_ref(),
        )
        .map_err(|e| e.to_string())?;
        let kill_after = kills.pop();
        let gets_at_start = store.counters.gets.load(Ordering::SeqCst);
        let result = tokio::select! {
            r = h.wait_complete() => Some(r),
            _ = async {
                loop {
                    match kill_after {
                        Some(n) if store.counters.gets.load(Ordering::SeqCst) >= gets_at_start + n => break,
                        _ => tokio::task::yield_now().await,
                    }
                }
            } => None,
        };
        h.shutdown().await;
        violations.extend(probe.violations());
        recorded_parts_are_exact(&ckpt, &data, &want)?;
        match result {
            None => continue, // killed: reopen from the checkpoint
            Some(Ok(())) => {
                let got = std::fs::read(&data).map_err(|e| e.to_string())?;
                if got != want {
                    return Err("complete, but the bytes differ from the object".into());
                }
                outcome = Some(Ok(()));
                break;
            }
            Some(Err(e)) => match &*e {
                HydrateError::ChecksumMismatch { .. } => {
                    outcome = Some(Err("crc".to_string()));
                    break;
                }
                // A changed object or a part that failed after retries: a clean error; the
                // next run starts again (afresh for a new version).
                HydrateError::ObjectChanged { .. } | HydrateError::Part { .. } => continue,
                other => return Err(format!("unexpected error: {other}")),
            },
        }
    }
    if !violations.is_empty() {
        return Err(violations.join("; "));
    }
    match (outcome, c.lie_about_crc) {
        (Some(Ok(())), false) | (Some(Err(_)), true) => Ok(()),
        (Some(Ok(())), true) => Err("a lying CRC was accepted".into()),
        (o, _) => Err(format!("no clean outcome: {o:?}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_the_model(c in case()) {
        if let Err(e) = run_bounded(Duration::from_secs(60), run_case(c.clone())) {
            prop_assert!(false, "{e} in {c:?}");
        }
    }
}

#[derive(Debug, Clone)]
struct PowerCase {
    parts: u64,
    part_size: u64,
    threads: usize,
    /// The I/O operation (writes, reads, syncs, counted from 1) at which the power goes.
    cut_at: u64,
    /// How likely an unsynced write is to survive the cut anyway.
    survive: f64,
    seed: u64,
}

fn power_case() -> impl Strategy<Value = PowerCase> {
    (
        1u64..24,
        1u64..=8,
        1usize..=4,
        1u64..160,
        prop_oneof![Just(0.0), Just(0.5), Just(1.0)],
        any::<u64>(),
    )
        .prop_map(|(parts, kib, threads, cut_at, survive, seed)| PowerCase {
            parts,
            part_size: kib * 1024 + 13,
            threads,
            cut_at,
            survive,
            seed,
        })
}

async fn run_power_cut(c: PowerCase) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (data, ckpt) = (dir.path().join("obj.data"), dir.path().join("obj.ckpt"));
    let size = c.parts * c.part_size - c.seed % c.part_size;
    let want = object_bytes(c.seed, size);
    let store = MemoryStore::new("mem://power");
    store.put("b", "k", want.clone());
    let meta = store.head("b", "k").await.map_err(|e| e.to_string())?;
    let id = ObjectIdentity::from_meta("b", "k", &meta);
    let store_dyn: Arc<dyn ObjectStore> = store.clone();
    let files = HydrationFiles {
        data: data.clone(),
        checkpoint: Some(ckpt.clone()),
        data_mode: 0o600,
    };
    let cfg = HydrationConfig {
        part_size: c.part_size,
        threads: c.threads,
        retry_delay: Duration::from_millis(1),
        ..Default::default()
    };
    let power = PowerCut::new(c.cut_at, c.survive, c.seed);
    let h = Hydration::start(
        store_dyn.clone(),
        id.clone(),
        files.clone(),
        HydrationConfig {
            storage: Arc::new(power.clone()),
            ..cfg.clone()
        },
        ConnectionLimiter::new(c.threads + 2, 1),
        None,
    )
    .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = h.wait_complete() => {}
        _ = async { while !power.was_cut() { tokio::time::sleep(Duration::from_millis(1)).await } } => {}
    }
    // Whatever still runs writes nothing from here on: the disk holds what survived.
    power.cut_now();
    let stopping = h.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    recorded_parts_are_exact(&ckpt, &data, &want).map_err(|e| format!("after the cut: {e}"))?;

    // The next start resumes from what survived, on local files, and must end exact.
    let resume = resume_or_clear("mem://power", &id, &ckpt, &data);
    let h = Hydration::start(
        store_dyn,
        id.clone(),
        files,
        cfg,
        ConnectionLimiter::new(c.threads + 2, 1),
        resume.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    h.wait_complete().await.map_err(|e| e.to_string())?;
    if !h.verify_cached(0..size).await.map_err(|e| e.to_string())? {
        return Err("complete, yet a part is missing after its check".into());
    }
    let got = h.read_at(0, size as usize).map_err(|e| e.to_string())?;
    h.shutdown().await;
    if got != want {
        return Err("the resumed object's bytes differ".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_power_cut_at_any_write_leaves_no_record_of_missing_bytes(c in power_case()) {
        if let Err(e) = run_bounded(Duration::from_secs(60), run_power_cut(c.clone())) {
            prop_assert!(false, "{e} in {c:?}");
        }
    }
}
