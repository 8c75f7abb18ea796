//! `ossmount prefetch`: hydrate the objects under a prefix into a mount's cache ahead of use,
//! with the same engine and cache entries the mount uses (so it is resumable, and a later
//! mount serves them without requests). Objects that cannot fit the cache's capacity are
//! reported and skipped, never half-fetched in a loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use crate::cache::{Cache, OpenEntry};
use crate::hydrate::{ObjectIdentity, Progress};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrefetchReport {
    pub fetched: Vec<(String, u64)>,
    /// Keys that do not fit the capacity (alone, or with what was planned before them).
    pub skipped: Vec<(String, u64)>,
    pub failed: Vec<(String, String)>,
    pub bytes_fetched: u64,
}

/// Lists `prefix` recursively and hydrates each object into `cache`, `concurrency` objects
/// at a time. `on_progress` sees the bytes present of all planned objects.
pub async fn prefetch(
    store: Arc<dyn ObjectStore>,
    cache: &Cache,
    bucket: &str,
    prefix: &str,
    concurrency: usize,
    mut on_progress: impl FnMut(&Progress),
) -> Result<PrefetchReport, StoreError> {
    let objects: Vec<_> = crate::store::list_all(&*store, bucket, prefix, None)
        .await?
        .objects
        .into_iter()
        .filter(|o| !o.key.ends_with('/'))
        .collect();
    let capacity = cache.capacity().max_bytes;
    let mut report = PrefetchReport::default();
    let mut planned = Vec::new();
    let mut planned_bytes = 0u64;
    for o in objects {
        // Charge a little for block rounding and the checkpoint, as the cache does.
        let charge = o.size.div_ceil(4096) * 4096 + 4096;
        if planned_bytes + charge > capacity {
            tracing::warn!(key = %o.key, size = o.size, "does not fit the cache capacity; not prefetched");
            report.skipped.push((o.key, o.size));
            continue;
        }
        planned_bytes += charge;
        planned.push(o);
    }
    let total: u64 = planned.iter().map(|o| o.size).sum();
    let running: Arc<Mutex<HashMap<String, OpenEntry>>> = Arc::default();
    let done_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fetched_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks = futures_util::stream::iter(planned.into_iter().map(|o| {
        let store = store.clone();
        let running = running.clone();
        let done_bytes = done_bytes.clone();
        let fetched_bytes = fetched_bytes.clone();
        async move {
            let result: Result<(), String> = async {
                let meta = store
                    .head(bucket, &o.key)
                    .await
                    .map_err(|e| e.to_string())?;
                let id = ObjectIdentity::from_meta(bucket, &o.key, &meta);
                let h = cache.open_entry(&id).map_err(|e| e.to_string())?;
                running.lock().unwrap().insert(o.key.clone(), h.clone());
                let r = h.wait_complete().await.map_err(|e| e.to_string());
                running.lock().unwrap().remove(&o.key);
                cache.close_entry(h.identity());
                fetched_bytes.fetch_add(
                    h.progress().bytes_fetched,
                    std::sync::atomic::Ordering::Relaxed,
                );
                r
            }
            .await;
            done_bytes.fetch_add(o.size, std::sync::atomic::Ordering::Relaxed);
            (o.key, o.size, result)
        }
    }))
    .buffer_unordered(concurrency.max(1));
    tokio::pin!(tasks);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let snapshot = |running: &Mutex<HashMap<String, OpenEntry>>| {
        let partial: u64 = running
            .lock()
            .unwrap()
            .values()
            .map(|h| h.progress().bytes_present)
            .sum();
        Progress {
            bytes_total: total,
            bytes_present: done_bytes.load(std::sync::atomic::Ordering::Relaxed) + partial,
            ..Progress::default()
        }
    };
    loop {
        tokio::select! {
            next = tasks.next() => match next {
                Some((key, size, Ok(()))) => report.fetched.push((key, size)),
                Some((key, _, Err(e))) => report.failed.push((key, e)),
                None => break,
            },
            _ = tick.tick() => on_progress(&snapshot(&running)),
        }
    }
    on_progress(&snapshot(&running));
    report.bytes_fetched = fetched_bytes.load(std::sync::atomic::Ordering::Relaxed);
    report.fetched.sort();
    Ok(report)
}
