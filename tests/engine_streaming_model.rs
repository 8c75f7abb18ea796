//! The engine's read path against a reference model, on the in-memory store: readers at
//! random offsets and sizes (demand reads that start a part at the reader's page, reads
//! inside a part still arriving, footers), in every fetch mode, with a small object's bytes
//! supplied with its identity (`supply`), failed GETs and cut bodies, the object replaced
//! mid-way, and kills (the engine stopped while reads are in flight, then started again from
//! its checkpoint). Every read ends within its bound with either the exact bytes of the
//! version the hydration was started for, or an error; after each kill every recorded part
//! holds its bytes; and a final reader gets the whole latest object exact.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ossmount::hydrate::{
    ConnectionLimiter, FetchMode, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
};
use ossmount::store::memory::{MemoryFaults, MemoryStore};
use ossmount::store::ObjectStore;
use proptest::prelude::*;

mod common;
use common::model::{recorded_parts_are_exact, resume_or_clear, run_bounded};

#[derive(Debug, Clone)]
struct Case {
    size: u64,
    part_size: u64,
    threads: usize,
    mode: FetchMode,
    /// (offset as a fraction of the size in 1/1000, length) of each read, in rounds of
    /// concurrent readers.
    reads: Vec<Vec<(u64, u64)>>,
    fail_gets: Vec<u64>,
    truncate_gets: Vec<(u64, u64)>,
    change_after_get: Option<u64>,
    /// Kill the engine after this many rounds of reads (then start it again).
    kill_after_rounds: Vec<usize>,
    supply: bool,
}

fn case() -> impl Strategy<Value = Case> {
    // Parts larger than the engine's first writes (64 KiB), so a part is readable piece by
    // piece while it arrives.
    (16u64..=64, 1usize..=4, 0usize..3)
        .prop_flat_map(|(pages, threads, mode)| {
            let ps = pages * 4096 + 13;
            let size = prop_oneof![
                Just(1u64),
                Just(ps),
                Just(ps + 1),
                (2u64..10).prop_map(move |n| n * ps + (n * 7919) % ps),
            ];
            let read = (0u64..1000, 1u64..(3 * ps));
            (
                size,
                Just(ps),
                Just(threads),
                Just([FetchMode::All, FetchMode::OnDemand, FetchMode::Auto][mode]),
                proptest::collection::vec(proptest::collection::vec(read, 1..5), 1..6),
                proptest::collection::vec(1u64..30, 0..4),
                proptest::collection::vec((1u64..30, 0u64..8000), 0..3),
                proptest::option::weighted(0.2, 1u64..20),
                proptest::collection::vec(0usize..6, 0..3),
                proptest::bool::ANY,
            )
        })
        .prop_map(
            |(
                size,
                part_size,
                threads,
                mode,
                reads,
                fail_gets,
                truncate_gets,
                change_after_get,
                kill_after_rounds,
                supply,
            )| Case {
                size,
                part_size,
                threads,
                mode,
                reads,
                fail_gets,
                truncate_gets,
                change_after_get,
                kill_after_rounds,
                supply,
            },
        )
}

/// A read as the filesystem does it: wait for the bytes, check cached ones, serve.
async fn read(h: &Hydration, range: Range<u64>) -> Result<Vec<u8>, String> {
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

async fn run_case(c: Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (data, ckpt) = (dir.path().join("obj.data"), dir.path().join("obj.ckpt"));
    let store = MemoryStore::new("mem://stream");
    let original = ossmount::sample::bytes(c.size ^ 0x5a, c.size as usize);
    store.put("b", "k", original.clone());
    store.set_faults(MemoryFaults {
        fail_gets: c.fail_gets.iter().copied().collect(),
        truncate_gets: c.truncate_gets.clone(),
        change_after_gets: c.change_after_get.into_iter().collect(),
        // Streams of 4 KiB chunks, slow enough that readers land inside parts still
        // arriving.
        chunk: 4096,
        chunk_delay: Duration::from_micros(300),
    });
    // Each version's bytes by ETag (a change inverts every byte).
    let mut versions: HashMap<String, Vec<u8>> = HashMap::new();
    let first = store.head("b", "k").await.map_err(|e| e.to_string())?;
    versions.insert(first.etag, original.clone());
    let mut latest = original;
    let store_dyn: Arc<dyn ObjectStore> = store.clone();
    let cfg = HydrationConfig {
        part_size: c.part_size,
        threads: c.threads,
        mode: c.mode,
        part_attempts: 3,
        retry_delay: Duration::from_millis(1),
        ..Default::default()
    };
    let files = HydrationFiles {
        data: data.clone(),
        checkpoint: Some(ckpt.clone()),
        data_mode: 0o600,
    };
    let mut rounds = c.reads.iter();
    let mut kills = c.kill_after_rounds.clone();
    for run in 0..8 {
        if run == 5 {
            // The flaky network calms down (still slow).
            store.set_faults(MemoryFaults {
                chunk: 4096,
                chunk_delay: Duration::from_micros(300),
                ..Default::default()
            });
        }
        let meta = store.head("b", "k").await.map_err(|e| e.to_string())?;
        let want = versions
            .entry(meta.etag.clone())
            .or_insert_with(|| latest.iter().map(|b| !b).collect())
            .clone();
        latest = want.clone();
        let id = ObjectIdentity::from_meta("b", "k", &meta);
        let resume = resume_or_clear("mem://stream", &id, &ckpt, &data);
        let body = (c.supply && c.size <= c.part_size).then(|| bytes::Bytes::from(want.clone()));
        let h = Hydration::start_with(
            store_dyn.clone(),
            id.clone(),
            files.clone(),
            cfg.clone(),
            ConnectionLimiter::new(c.threads + 2, 1),
            resume.as_ref(),
            body,
        )
        .map_err(|e| e.to_string())?;
        let kill_at = kills.pop();
        let mut killed = false;
        for (round, readers) in rounds.by_ref().enumerate() {
            let mut tasks = Vec::new();
            for &(at, len) in readers {
                let start = (c.size * at / 1000).min(c.size.saturating_sub(1));
                let range = start..(start + len).min(c.size);
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    (range.clone(), read(&h, range).await)
                }));
            }
            if kill_at == Some(round) {
                tokio::task::yield_now().await;
                killed = true;
                let stopping = h.clone();
                tokio::task::spawn_blocking(move || stopping.stop())
                    .await
                    .unwrap();
            }
            for t in tasks {
                let (range, got) = tokio::time::timeout(Duration::from_secs(20), t)
                    .await
                    .map_err(|_| "a read never ended".to_string())?
                    .unwrap();
                if let Ok(got) = got {
                    let (s, e) = (range.start as usize, range.end as usize);
                    if got != want[s..e] {
                        return Err(format!("a read of {range:?} got wrong bytes (run {run})"));
                    }
                }
            }
            if killed {
                break;
            }
        }
        if !killed {
            // The last reader reads everything (the whole latest version or an error).
            let whole = read(&h, 0..c.size).await;
            h.shutdown().await;
            match whole {
                Ok(got) if got == want => return recorded_parts_are_exact(&ckpt, &data, &want),
                Ok(_) => return Err(format!("the whole read got wrong bytes (run {run})")),
                Err(_) => {} // a changed object or failed parts: start again
            }
        }
        recorded_parts_are_exact(&ckpt, &data, &want)?;
    }
    // Faults ended at run 5: by now the object must read whole.
    Err("no run read the whole object".into())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reads_at_random_offsets_get_exact_bytes_or_an_error(c in case()) {
        if let Err(e) = run_bounded(Duration::from_secs(90), run_case(c.clone())) {
            prop_assert!(false, "{e} in {c:?}");
        }
    }
}
