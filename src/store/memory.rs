//! An in-memory `ObjectStore` with fault hooks, so the engine, the cache and the filesystem can
//! be tested without a kernel or HTTP: fail the Nth GET, cut a body short, change an object
//! (new ETag) between requests, stall GETs until released, lie about (or omit) the CRC-64.
//! Deterministic: faults are chosen by request number, not by dice. Must not touch the disk.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    BoxFut, ByteStream, ListPage, ListRequest, ListedObject, ObjectMeta, ObjectStore, StoreError,
    StoreErrorKind,
};

/// One stored version.
#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    etag: String,
    modified: SystemTime,
    /// What HEAD announces (the true CRC unless a test made it lie or hide it).
    announced_crc64: Option<u64>,
}

/// Faults by request number: the Nth GET (1-based, counted over the whole store).
#[derive(Debug, Clone, Default)]
pub struct MemoryFaults {
    /// GETs answered with a transient error before any byte.
    pub fail_gets: HashSet<u64>,
    /// GETs whose body ends with a transient error after this many bytes.
    pub truncate_gets: Vec<(u64, u64)>,
    /// GETs after which the object is replaced by a new version whose every byte is
    /// inverted (the GET itself is served from the version it found).
    pub change_after_gets: HashSet<u64>,
    /// Each body chunk (of `chunk` bytes; 0: the store's default) arrives this long after
    /// the one before: a stream slow enough for readers to land inside parts still arriving.
    pub chunk_delay: std::time::Duration,
    pub chunk: usize,
}

/// Counters of what was asked.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub lists: AtomicU64,
    pub body_bytes: AtomicU64,
    /// GET bodies open now (asked for and not yet dropped), and the most open at once: what
    /// a test of a concurrency limit can hold the engine to.
    pub gets_open: AtomicU64,
    pub gets_open_peak: AtomicU64,
}

/// Counts one GET body open until its stream is dropped, however it ends.
struct OpenGet(Arc<MemoryCounters>);

impl OpenGet {
    fn new(counters: Arc<MemoryCounters>) -> OpenGet {
        let now = counters.gets_open.fetch_add(1, Ordering::SeqCst) + 1;
        counters.gets_open_peak.fetch_max(now, Ordering::SeqCst);
        OpenGet(counters)
    }
}

impl Drop for OpenGet {
    fn drop(&mut self) {
        self.0.gets_open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct MemoryStore {
    location: String,
    objects: Mutex<BTreeMap<(String, String), Stored>>,
    faults: Mutex<MemoryFaults>,
    stalled: tokio::sync::watch::Sender<bool>,
    versions: AtomicU64,
    pub counters: Arc<MemoryCounters>,
    /// Body chunk size: small chunks make more await points for tests that cancel.
    chunk: usize,
}

impl MemoryStore {
    pub fn new(location: &str) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            location: location.to_string(),
            objects: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(MemoryFaults::default()),
            stalled: tokio::sync::watch::channel(false).0,
            versions: AtomicU64::new(0),
            counters: Arc::default(),
            chunk: 64 << 10,
        })
    }

    /// Stores `data` as a new version (new ETag) with its true CRC-64.
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        let data = data.into();
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let crc = crate::crc64::update(0, &data);
        let stored = Stored {
            etag: format!("\"{crc:016X}-{version}\""),
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + version),
            announced_crc64: Some(crc),
            data,
        };
        self.objects
            .lock()
            .unwrap()
            .insert((bucket.to_string(), key.to_string()), stored);
    }

    /// Makes HEAD announce `crc` (a lie, or `None` for a server that sends no CRC).
    pub fn announce_crc64(&self, bucket: &str, key: &str, crc: Option<u64>) {
        if let Some(o) = self
            .objects
            .lock()
            .unwrap()
            .get_mut(&(bucket.to_string(), key.to_string()))
        {
            o.announced_crc64 = crc;
        }
    }

    pub fn remove(&self, bucket: &str, key: &str) {
        self.objects
            .lock()
            .unwrap()
            .remove(&(bucket.to_string(), key.to_string()));
    }

    pub fn set_faults(&self, f: MemoryFaults) {
        *self.faults.lock().unwrap() = f;
    }

    /// While stalled, GETs wait before their first byte.
    pub fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    fn get(&self, bucket: &str, key: &str) -> Option<Stored> {
        self.objects
            .lock()
            .unwrap()
            .get(&(bucket.to_string(), key.to_string()))
            .cloned()
    }

    fn not_found(&self, bucket: &str, key: &str) -> StoreError {
        StoreError {
            kind: StoreErrorKind::NotFound,
            message: format!("memory://{bucket}/{key}: no such object"),
            code: Some("NoSuchKey".into()),
            request_id: None,
        }
    }
}

fn transient(what: String) -> StoreError {
    StoreError::new(StoreErrorKind::Transient, what)
}

impl ObjectStore for MemoryStore {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, StoreError>> {
        Box::pin(async move {
            self.counters.heads.fetch_add(1, Ordering::Relaxed);
            let o = self
                .get(bucket, key)
                .ok_or_else(|| self.not_found(bucket, key))?;
            Ok(ObjectMeta {
                size: o.data.len() as u64,
                etag: o.etag,
                last_modified: httpdate::fmt_http_date(o.modified),
                crc64: o.announced_crc64,
                digest: None,
                content_type: None,
                request_id: String::new(),
            })
        })
    }

    fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<String>,
    ) -> ByteStream {
        let n = self.counters.gets.fetch_add(1, Ordering::Relaxed) + 1;
        let faults = self.faults.lock().unwrap().clone();
        let found = self.get(bucket, key);
        let not_found = self.not_found(bucket, key);
        if faults.change_after_gets.contains(&n) {
            if let Some(o) = &found {
                let inverted: Vec<u8> = o.data.iter().map(|b| !b).collect();
                self.put(bucket, key, inverted);
            }
        }
        let mut stalled = self.stalled.subscribe();
        let open = OpenGet::new(self.counters.clone());
        let chunk = if faults.chunk > 0 {
            faults.chunk
        } else {
            self.chunk
        };
        let delay = faults.chunk_delay;
        let cut = faults
            .truncate_gets
            .iter()
            .find(|(g, _)| *g == n)
            .map(|(_, at)| *at);
        let fail = faults.fail_gets.contains(&n);
        let stream = body(
            found,
            not_found,
            range,
            if_match,
            fail,
            cut,
            chunk,
            n,
            self.counters.clone(),
        );
        Box::pin(
            futures_util::stream::once(async move {
                while *stalled.borrow_and_update() {
                    if stalled.changed().await.is_err() {
                        break;
                    }
                }
            })
            .filter_map(|_| async { None })
            .chain(stream.then(move |chunk| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                chunk
            }))
            // Moved into the stream: the GET stays open until its body is dropped.
            .map(move |chunk| {
                let _open = &open;
                chunk
            }),
        )
    }

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, StoreError>> {
        Box::pin(async move {
            self.counters.lists.fetch_add(1, Ordering::Relaxed);
            let objects = self.objects.lock().unwrap();
            let max = req.max_keys.unwrap_or(1000).max(1) as usize;
            let after = req
                .continuation_token
                .clone()
                .or(req.start_after.clone())
                .unwrap_or_default();
            let mut page = ListPage::default();
            let mut seen_prefixes: Vec<String> = Vec::new();
            let mut last = String::new();
            for ((b, k), o) in objects.iter() {
                if b != bucket || !k.starts_with(&req.prefix) || k.as_str() <= after.as_str() {
                    continue;
                }
                if page.objects.len() + page.common_prefixes.len() >= max {
                    page.is_truncated = true;
                    page.next_continuation_token = Some(last.clone());
                    break;
                }
                let rest = &k[req.prefix.len()..];
                match req
                    .delimiter
                    .as_deref()
                    .and_then(|d| rest.find(d).map(|i| (i, d)))
                {
                    Some((i, d)) => {
                        let p = format!("{}{}{d}", req.prefix, &rest[..i]);
                        if seen_prefixes.last() != Some(&p) {
                            seen_prefixes.push(p.clone());
                            page.common_prefixes.push(p.clone());
                        }
                        // Skip the whole prefix in one step, as the service does.
                        last = format!("{p}\u{10FFFF}");
                    }
                    None => {
                        page.objects.push(ListedObject {
                            key: k.clone(),
                            size: o.data.len() as u64,
                            etag: o.etag.clone(),
                            last_modified: o.modified,
                            storage_class: "Standard".into(),
                        });
                        last = k.clone();
                    }
                }
            }
            Ok(page)
        })
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}

/// The body of one GET, with its faults applied.
#[allow(clippy::too_many_arguments)]
fn body(
    found: Option<Stored>,
    not_found: StoreError,
    range: Range<u64>,
    if_match: Option<String>,
    fail: bool,
    cut: Option<u64>,
    chunk: usize,
    n: u64,
    counters: Arc<MemoryCounters>,
) -> ByteStream {
    let first: Result<Bytes, StoreError> = match &found {
        None => Err(not_found),
        Some(o) if if_match.as_ref().is_some_and(|m| *m != o.etag) => Err(StoreError {
            kind: StoreErrorKind::PreconditionFailed,
            message: format!("GET {n}: the object changed (If-Match {if_match:?} failed)"),
            code: Some("PreconditionFailed".into()),
            request_id: None,
        }),
        Some(o) if range.end > o.data.len() as u64 || range.start > range.end => {
            Err(StoreError::new(
                StoreErrorKind::Permanent,
                format!("GET {n}: range {range:?} is outside the object"),
            ))
        }
        Some(_) if fail => Err(transient(format!("GET {n}: injected failure"))),
        Some(_) => Ok(Bytes::new()),
    };
    let Ok(_) = first else {
        return Box::pin(futures_util::stream::iter([first]));
    };
    let data = found
        .expect("checked above")
        .data
        .slice(range.start as usize..range.end as usize);
    let stop_at = cut.map(|c| (c as usize).min(data.len()));
    let mut pieces: Vec<Result<Bytes, StoreError>> = Vec::new();
    let mut at = 0;
    let end = stop_at.unwrap_or(data.len());
    while at < end {
        let next = (at + chunk).min(end);
        pieces.push(Ok(data.slice(at..next)));
        at = next;
    }
    if stop_at.is_some() {
        pieces.push(Err(transient(format!(
            "GET {n}: the body ended early, at byte {end} of {}",
            data.len()
        ))));
    }
    Box::pin(futures_util::stream::iter(pieces).map(move |p| {
        if let Ok(b) = &p {
            counters
                .body_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        p
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(s: ByteStream) -> Result<Vec<u8>, StoreError> {
        let mut s = s;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn ranges_versions_and_faults() {
        let m = MemoryStore::new("mem");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        m.put("b", "k", data.clone());
        let meta = m.head("b", "k").await.unwrap();
        assert_eq!(meta.size, 200_000);
        assert_eq!(meta.crc64, Some(crate::crc64::update(0, &data)));
        let got = read_all(m.get_range("b", "k", 10..150_000, Some(meta.etag.clone())))
            .await
            .unwrap();
        assert_eq!(got, data[10..150_000]);
        // GET 2 fails, GET 3 is cut after 1000 bytes, GET 4 changes the object afterwards.
        m.set_faults(MemoryFaults {
            fail_gets: [2].into(),
            truncate_gets: vec![(3, 1000)],
            change_after_gets: [4].into(),
            ..Default::default()
        });
        let e = read_all(m.get_range("b", "k", 0..10, None))
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let e = read_all(m.get_range("b", "k", 0..5000, None))
            .await
            .unwrap_err();
        assert!(e.is_retryable() && e.message.contains("byte 1000"), "{e}");
        assert_eq!(
            m.counters.body_bytes.load(Ordering::Relaxed),
            149_990 + 1000
        );
        // GET 4 is served from the version it pinned; the object changes behind it.
        let got = read_all(m.get_range("b", "k", 0..10, Some(meta.etag.clone())))
            .await
            .unwrap();
        assert_eq!(got, data[..10]);
        let e = read_all(m.get_range("b", "k", 0..10, Some(meta.etag.clone())))
            .await
            .unwrap_err();
        assert!(e.is_precondition_failed(), "{e}");
        assert_ne!(m.head("b", "k").await.unwrap().etag, meta.etag);
        assert!(m.head("b", "nope").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn listing_pages_with_prefixes() {
        let m = MemoryStore::new("mem");
        for k in ["a/1", "a/2", "b", "c/x/y", "d"] {
            m.put("b", k, vec![1u8]);
        }
        let all = crate::store::list_all(&*m, "b", "", Some("/"))
            .await
            .unwrap();
        assert_eq!(all.common_prefixes, vec!["a/", "c/"]);
        let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["b", "d"]);
        let page = m
            .list_page(
                "b",
                ListRequest {
                    max_keys: Some(1),
                    delimiter: Some("/".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(page.is_truncated && page.common_prefixes == vec!["a/"]);
        let flat = crate::store::list_all(&*m, "b", "a/", None).await.unwrap();
        assert_eq!(flat.objects.len(), 2);
    }
}
