//! The resumable download engine. An object is split into parts of `part_size` bytes; parts are
//! fetched with ranged GETs pinned by `If-Match` to one ETag, written at their offsets in a data
//! file, made durable (fdatasync), and only then recorded in the checkpoint. `threads`
//! background workers fetch in order; parts a reader waits for (`want`, `wait_range`) are fetched
//! at once on a connection reserved for demand, then a readahead window after them.
//! When every part is present the combined CRC-64 is checked against the server's.
//! This module knows nothing of FUSE, inodes or the cache directory's layout.

pub mod checkpoint;
pub mod download;
pub mod limiter;

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

pub use checkpoint::Checkpoint;
pub use limiter::ConnectionLimiter;

use crate::store::{ObjectMeta, ObjectStore, StoreError, StoreErrorKind};

/// The largest part size accepted (the object-store limit for one part).
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Refuses a PartSize the store cannot serve, with the flag to change.
pub fn validate_part_size(part_size: u64) -> Result<(), String> {
    if part_size == 0 || part_size > MAX_PART_SIZE {
        return Err(format!(
            "part size {part_size} is out of range: use 1 byte to 5 GiB (e.g. --part-size 8MiB)"
        ));
    }
    Ok(())
}

/// Refuses a ParallelThreadCount that cannot work, with the flag to change.
pub fn validate_threads(threads: usize) -> Result<(), String> {
    if threads == 0 || threads > 256 {
        return Err(format!(
            "thread count {threads} is out of range: use 1 to 256 (e.g. --threads 3)"
        ));
    }
    Ok(())
}

/// Bytes buffered per part before they are written: memory grows with parts in flight only.
const WRITE_CHUNK: usize = 1 << 20;

/// One version of one object: what a checkpoint and every part request are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIdentity {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: String,
    pub crc64: Option<u64>,
}

impl ObjectIdentity {
    pub fn from_meta(bucket: &str, key: &str, meta: &ObjectMeta) -> ObjectIdentity {
        ObjectIdentity {
            bucket: bucket.into(),
            key: key.into(),
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified: meta.last_modified.clone(),
            crc64: meta.crc64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLayout {
    pub size: u64,
    pub part_size: u64,
}

impl PartLayout {
    pub fn new(size: u64, part_size: u64) -> PartLayout {
        PartLayout {
            size,
            part_size: part_size.max(1),
        }
    }

    pub fn count(&self) -> usize {
        self.size.div_ceil(self.part_size) as usize
    }

    pub fn range(&self, part: usize) -> Range<u64> {
        let start = part as u64 * self.part_size;
        start..(start + self.part_size).min(self.size)
    }

    /// The parts that hold any byte of `range` (clamped to the object).
    pub fn parts_for(&self, range: Range<u64>) -> Range<usize> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return 0..0;
        }
        (range.start / self.part_size) as usize..end.div_ceil(self.part_size) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchMode {
    /// Fetch every part, in order after demand and readahead (`--hydrate open`, downloads).
    All,
    /// Fetch only parts that readers want, plus the readahead window (`--hydrate read`).
    OnDemand,
}

/// Room on local disk for parts: asked before each part is fetched, so a cache can evict
/// other entries first. The engine never decides what to evict.
pub trait SpaceBudget: Send + Sync {
    /// Reserve `bytes` for a part of `id`; false when no room can be made.
    fn reserve(&self, id: &ObjectIdentity, bytes: u64) -> bool;
    /// Give back a reservation whose part was not written.
    fn release(&self, id: &ObjectIdentity, bytes: u64);
}

/// Counters shared by every hydration of a mount (or one download).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub part_requests: AtomicU64,
    pub part_retries: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub parts_completed: AtomicU64,
}

#[derive(Clone)]
pub struct HydrationConfig {
    pub part_size: u64,
    /// Background fetches in flight for this object (the SDKs' ParallelThreadCount).
    pub threads: usize,
    pub mode: FetchMode,
    /// Parts after a reader's position fetched before the rest.
    pub readahead_parts: usize,
    /// Attempts per part (each attempt already retries inside the client).
    pub part_attempts: u32,
    pub retry_delay: Duration,
    pub budget: Option<Arc<dyn SpaceBudget>>,
    pub stats: Arc<EngineStats>,
}

impl std::fmt::Debug for HydrationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HydrationConfig")
            .field("part_size", &self.part_size)
            .field("threads", &self.threads)
            .field("mode", &self.mode)
            .field("readahead_parts", &self.readahead_parts)
            .field("budget", &self.budget.is_some())
            .finish()
    }
}

impl Default for HydrationConfig {
    fn default() -> Self {
        HydrationConfig {
            part_size: 8 << 20,
            threads: 3,
            mode: FetchMode::All,
            readahead_parts: 2,
            part_attempts: 3,
            retry_delay: Duration::from_millis(500),
            budget: None,
            stats: Arc::new(EngineStats::default()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HydrateError {
    #[error("oss://{bucket}/{key} changed on the server while it was being fetched (it was ETag {etag}); its old bytes were not mixed with new ones")]
    ObjectChanged {
        bucket: String,
        key: String,
        etag: String,
    },
    #[error("CRC-64 mismatch for oss://{bucket}/{key}: the server says {expected}, the fetched bytes give {actual}; the data was not used")]
    ChecksumMismatch {
        bucket: String,
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("part {part} (bytes {start}-{end}) of oss://{bucket}/{key} failed after {attempts} attempts: {source}")]
    Part {
        bucket: String,
        key: String,
        part: usize,
        start: u64,
        end: u64,
        attempts: u32,
        #[source]
        source: Box<StoreError>,
    },
    #[error("local file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hydration of oss://{bucket}/{key} was stopped")]
    Stopped { bucket: String, key: String },
    #[error("no room in the cache for part {part} of oss://{bucket}/{key}: every other entry is open or the disk is full; raise --cache-size or free disk space")]
    NoSpace {
        bucket: String,
        key: String,
        part: usize,
    },
}

impl HydrateError {
    /// The store's error behind a part failure, for logs (code and request id).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            HydrateError::Part { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A snapshot of a hydration's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub parts_total: usize,
    pub parts_present: usize,
    pub parts_in_flight: usize,
    pub bytes_total: u64,
    pub bytes_present: u64,
    /// Body bytes received in this run (including parts that were later retried).
    pub bytes_fetched: u64,
    /// Bytes that were already present when this run started.
    pub bytes_resumed: u64,
    pub part_requests: u64,
    pub complete: bool,
}

struct State {
    present: Vec<bool>,
    in_flight: Vec<bool>,
    part_crc: Vec<u64>,
    /// The last failure of a part, kept until new demand asks again.
    failed: Vec<Option<Arc<HydrateError>>>,
    /// Background fetching pauses after a failure until a reader wants something.
    paused: Option<Arc<HydrateError>>,
    fatal: Option<Arc<HydrateError>>,
    readahead: Range<usize>,
    /// The window to open once a demand fetch has its first bytes, so demand always reaches
    /// the server before readahead.
    pending_readahead: Option<Range<usize>>,
    stopped: bool,
    complete: bool,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    id: ObjectIdentity,
    layout: PartLayout,
    cfg: HydrationConfig,
    file: Arc<std::fs::File>,
    data_path: PathBuf,
    checkpoint_path: Option<PathBuf>,
    store_location: String,
    limiter: Arc<ConnectionLimiter>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Held for each whole checkpoint write (snapshot to rename), in blocking code, so an
    /// aborted task can never leave a write running unlocked.
    checkpoint_lock: Mutex<()>,
    /// Set by `shutdown`; checked under `checkpoint_lock` before every write.
    writes_closed: std::sync::atomic::AtomicBool,
    bytes_fetched: AtomicU64,
    bytes_resumed: u64,
    part_requests: AtomicU64,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A running hydration of one object version into one data file. Clones share it.
#[derive(Clone)]
pub struct Hydration {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hydration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Hydration(oss://{}/{})",
            self.inner.id.bucket, self.inner.id.key
        )
    }
}

/// Where a hydration keeps its bytes and its record.
#[derive(Debug, Clone)]
pub struct HydrationFiles {
    pub data: PathBuf,
    pub checkpoint: Option<PathBuf>,
}

impl Hydration {
    /// Opens (creating or resuming) the data file and starts the background workers.
    /// `resume` is a checkpoint already validated against `id` for these files; parts it
    /// marks present are never fetched again.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        id: ObjectIdentity,
        files: HydrationFiles,
        cfg: HydrationConfig,
        limiter: Arc<ConnectionLimiter>,
        resume: Option<&Checkpoint>,
    ) -> Result<Hydration, HydrateError> {
        let io_err = |source| HydrateError::Io {
            path: files.data.clone(),
            source,
        };
        let part_size = resume.map(|c| c.part_size).unwrap_or(cfg.part_size);
        let layout = PartLayout::new(id.size, part_size);
        let n = layout.count();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&files.data)
            .map_err(io_err)?;
        if file.metadata().map_err(io_err)?.len() != id.size {
            file.set_len(id.size).map_err(io_err)?;
        }
        let (present, part_crc) = match resume {
            Some(c) => (
                (0..n).map(|p| c.is_present(p)).collect::<Vec<_>>(),
                c.part_crc64.clone(),
            ),
            None => (vec![false; n], vec![0; n]),
        };
        let bytes_resumed = (0..n)
            .filter(|&p| present[p])
            .map(|p| layout.range(p).end - layout.range(p).start)
            .sum();
        let complete = present.iter().all(|&p| p);
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            store_location: store.location(),
            store,
            layout,
            cfg: HydrationConfig { part_size, ..cfg },
            file: Arc::new(file),
            data_path: files.data,
            checkpoint_path: files.checkpoint,
            limiter,
            state: Mutex::new(State {
                present,
                in_flight: vec![false; n],
                part_crc,
                failed: vec![None; n],
                paused: None,
                fatal: None,
                readahead: 0..0,
                pending_readahead: None,
                stopped: false,
                complete: false,
            }),
            changed,
            checkpoint_lock: Mutex::new(()),
            writes_closed: std::sync::atomic::AtomicBool::new(false),
            bytes_fetched: AtomicU64::new(0),
            bytes_resumed,
            part_requests: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            id,
        });
        let h = Hydration { inner };
        if complete {
            h.inner.finish_if_complete();
        } else {
            if let (Some(path), None) = (&h.inner.checkpoint_path, resume) {
                // Record the identity before any part, so a crash leaves a usable record.
                h.inner
                    .snapshot()
                    .save(path)
                    .map_err(|source| HydrateError::Io {
                        path: path.clone(),
                        source,
                    })?;
            }
            for _ in 0..h.inner.cfg.threads.max(1) {
                let inner = h.inner.clone();
                let handle = tokio::spawn(async move { inner.background_worker().await });
                h.inner.tasks.lock().unwrap().push(handle.abort_handle());
            }
        }
        Ok(h)
    }

    pub fn identity(&self) -> &ObjectIdentity {
        &self.inner.id
    }

    pub fn layout(&self) -> PartLayout {
        self.inner.layout
    }

    pub fn data_path(&self) -> &Path {
        &self.inner.data_path
    }

    pub fn progress(&self) -> Progress {
        let st = self.inner.state.lock().unwrap();
        let layout = self.inner.layout;
        Progress {
            parts_total: layout.count(),
            parts_present: st.present.iter().filter(|&&p| p).count(),
            parts_in_flight: st.in_flight.iter().filter(|&&p| p).count(),
            bytes_total: layout.size,
            bytes_present: (0..layout.count())
                .filter(|&p| st.present[p])
                .map(|p| layout.range(p).end - layout.range(p).start)
                .sum(),
            bytes_fetched: self.inner.bytes_fetched.load(Ordering::Relaxed),
            bytes_resumed: self.inner.bytes_resumed,
            part_requests: self.inner.part_requests.load(Ordering::Relaxed),
            complete: st.complete,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.inner.state.lock().unwrap().complete
    }

    /// Whether every byte of `range` is already present.
    pub fn is_present(&self, range: Range<u64>) -> bool {
        let st = self.inner.state.lock().unwrap();
        self.inner.layout.parts_for(range).all(|p| st.present[p])
    }

    /// Asks for the parts covering `range` ahead of everything else: missing parts that are
    /// not in flight are fetched at once on demand connections, and the readahead window moves
    /// to just after the range. Clears earlier part failures, so a new read retries.
    pub fn want(&self, range: Range<u64>) {
        let parts = self.inner.layout.parts_for(range);
        let mut spawn = Vec::new();
        {
            let mut st = self.inner.state.lock().unwrap();
            if st.stopped || st.fatal.is_some() || st.complete {
                return;
            }
            st.paused = None;
            for f in st.failed.iter_mut() {
                *f = None;
            }
            for p in parts.clone() {
                if !st.present[p] && !st.in_flight[p] {
                    st.in_flight[p] = true;
                    spawn.push(p);
                }
            }
            if !parts.is_empty() {
                let n = self.inner.layout.count();
                let window = parts.end..(parts.end + self.inner.cfg.readahead_parts).min(n);
                if spawn.is_empty() {
                    st.readahead = window;
                } else {
                    st.pending_readahead = Some(window);
                }
            }
        }
        self.inner.notify();
        for p in spawn {
            let inner = self.inner.clone();
            let handle = tokio::spawn(async move {
                // Waiters learn the outcome from the shared state.
                let _ = inner.fetch_and_record(p, true).await;
            });
            self.inner.tasks.lock().unwrap().push(handle.abort_handle());
        }
    }

    /// Waits until every byte of `range` is present, fetching those parts first. Fails with
    /// the part's error when it fails after retries, or when the hydration as a whole failed.
    pub async fn wait_range(&self, range: Range<u64>) -> Result<(), Arc<HydrateError>> {
        let parts = self.inner.layout.parts_for(range.clone());
        let mut rx = self.inner.changed.subscribe();
        if self.is_present(range.clone()) {
            return Ok(());
        }
        self.want(range);
        loop {
            if self.check_parts(parts.clone())?.is_some() {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(self.inner.stopped_error()));
            }
        }
    }

    fn check_parts(&self, parts: Range<usize>) -> Result<Option<()>, Arc<HydrateError>> {
        let st = self.inner.state.lock().unwrap();
        if parts.clone().all(|p| st.present[p]) {
            return Ok(Some(()));
        }
        if let Some(f) = &st.fatal {
            return Err(f.clone());
        }
        if st.stopped {
            return Err(Arc::new(self.inner.stopped_error()));
        }
        for p in parts {
            if let Some(e) = &st.failed[p] {
                return Err(e.clone());
            }
        }
        Ok(None)
    }

    /// Waits until every part is present and the whole-object CRC checked (mode `All`), or
    /// returns the first failure.
    pub async fn wait_complete(&self) -> Result<(), Arc<HydrateError>> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            {
                let st = self.inner.state.lock().unwrap();
                if let Some(f) = &st.fatal {
                    return Err(f.clone());
                }
                if st.complete {
                    return Ok(());
                }
                if let Some(p) = &st.paused {
                    return Err(p.clone());
                }
                if st.stopped {
                    return Err(Arc::new(self.inner.stopped_error()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(self.inner.stopped_error()));
            }
        }
    }

    /// Stops every fetch now. The checkpoint stays consistent: it only ever names parts that
    /// were durable before it was written.
    pub fn stop(&self) {
        self.inner.state.lock().unwrap().stopped = true;
        for t in self.inner.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.inner.notify();
    }

    /// Stops, then waits until no checkpoint write is running; none starts afterwards. After
    /// this the caller owns the checkpoint file (to delete it, say).
    pub async fn shutdown(&self) {
        self.stop();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = inner.checkpoint_lock.lock().unwrap();
            inner.writes_closed.store(true, Ordering::SeqCst);
        })
        .await
        .expect("shutdown does not panic");
    }

    /// Reads bytes that are present (the caller waited for them) from the data file.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = (offset + len as u64).min(self.inner.layout.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        self.inner.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// The data file, for serving reads without copying through the engine.
    pub fn file(&self) -> Arc<std::fs::File> {
        self.inner.file.clone()
    }
}

impl Inner {
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn stopped_error(&self) -> HydrateError {
        HydrateError::Stopped {
            bucket: self.id.bucket.clone(),
            key: self.id.key.clone(),
        }
    }

    /// The next part for a background worker: readahead window first, then (mode All) the
    /// lowest missing part. Marks it in flight.
    fn pick_background(&self, st: &mut State) -> Option<usize> {
        let free =
            |st: &State, p: usize| !st.present[p] && !st.in_flight[p] && st.failed[p].is_none();
        let mut pick = st.readahead.clone().find(|&p| free(st, p));
        if pick.is_none() && self.cfg.mode == FetchMode::All {
            pick = (0..self.layout.count()).find(|&p| free(st, p));
        }
        if let Some(p) = pick {
            st.in_flight[p] = true;
        }
        pick
    }

    async fn background_worker(self: Arc<Self>) {
        let mut rx = self.changed.subscribe();
        loop {
            let next = {
                let mut st = self.state.lock().unwrap();
                if st.stopped || st.fatal.is_some() || st.complete {
                    return;
                }
                if st.paused.is_some() {
                    None
                } else {
                    self.pick_background(&mut st)
                }
            };
            match next {
                Some(p) => {
                    if let Err(e) = self.fetch_and_record(p, false).await {
                        let mut st = self.state.lock().unwrap();
                        if st.paused.is_none() {
                            st.paused = Some(e);
                        }
                        drop(st);
                        self.notify();
                    }
                }
                None => {
                    rx.borrow_and_update();
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Fetches one part (retrying), records it, and publishes the outcome to waiters.
    async fn fetch_and_record(
        self: &Arc<Self>,
        part: usize,
        demand: bool,
    ) -> Result<(), Arc<HydrateError>> {
        let result = self.fetch_part(part, demand).await;
        let outcome = match result {
            Ok(crc) => {
                {
                    let mut st = self.state.lock().unwrap();
                    st.present[part] = true;
                    st.in_flight[part] = false;
                    st.part_crc[part] = crc;
                    st.failed[part] = None;
                }
                match self.save_checkpoint().await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.set_fatal(e)),
                }
            }
            Err(e) => {
                if demand {
                    self.open_pending_readahead();
                }
                let fatal = matches!(
                    e,
                    HydrateError::ObjectChanged { .. } | HydrateError::Io { .. }
                );
                let e = Arc::new(e);
                let mut st = self.state.lock().unwrap();
                st.in_flight[part] = false;
                if fatal {
                    st.fatal.get_or_insert_with(|| e.clone());
                } else {
                    st.failed[part] = Some(e.clone());
                }
                drop(st);
                if let Some(se) = e.store_error() {
                    tracing::warn!(bucket = %self.id.bucket, key = %self.id.key, part, code = se.code().unwrap_or(""), request_id = se.request_id().unwrap_or(""), "part failed: {e}");
                } else {
                    tracing::warn!(bucket = %self.id.bucket, key = %self.id.key, part, "part failed: {e}");
                }
                Err(e)
            }
        };
        if outcome.is_ok() {
            self.finish_if_complete();
        }
        self.notify();
        outcome
    }

    fn set_fatal(&self, e: HydrateError) -> Arc<HydrateError> {
        let e = Arc::new(e);
        self.state
            .lock()
            .unwrap()
            .fatal
            .get_or_insert_with(|| e.clone());
        e
    }

    /// When every part is present: checks the combined CRC-64 against the server's.
    fn finish_if_complete(&self) {
        let mut st = self.state.lock().unwrap();
        if st.complete || st.fatal.is_some() || !st.present.iter().all(|&p| p) {
            return;
        }
        let combined = (0..self.layout.count()).fold(0u64, |acc, p| {
            let r = self.layout.range(p);
            crate::crc64::combine(acc, st.part_crc[p], r.end - r.start)
        });
        match self.id.crc64 {
            Some(expected) if expected != combined => {
                st.fatal = Some(Arc::new(HydrateError::ChecksumMismatch {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    expected,
                    actual: combined,
                }));
            }
            _ => st.complete = true,
        }
        drop(st);
        self.notify();
    }

    fn snapshot(&self) -> Checkpoint {
        let st = self.state.lock().unwrap();
        let mut c = Checkpoint::new(
            &self.store_location,
            &self.id,
            self.layout.part_size,
            &self.data_path,
        );
        c.present = st
            .present
            .iter()
            .map(|&p| if p { '1' } else { '0' })
            .collect();
        c.part_crc64 = st.part_crc.clone();
        c
    }

    async fn save_checkpoint(self: &Arc<Self>) -> Result<(), HydrateError> {
        let Some(path) = self.checkpoint_path.clone() else {
            return Ok(());
        };
        let inner = self.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            // Serialised, and the snapshot taken under the lock, so an older record can never
            // overwrite a newer one; nothing is written once the hydration was shut down.
            let _guard = inner.checkpoint_lock.lock().unwrap();
            if inner.writes_closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            inner.snapshot().save(&p)
        })
        .await
        .expect("checkpoint writer does not panic")
        .map_err(|source| HydrateError::Io { path, source })
    }

    async fn fetch_part(&self, part: usize, demand: bool) -> Result<u64, HydrateError> {
        let range = self.layout.range(part);
        let len = range.end - range.start;
        if let Some(b) = &self.cfg.budget {
            if !b.reserve(&self.id, len) {
                return Err(HydrateError::NoSpace {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    part,
                });
            }
        }
        let result = self.fetch_part_reserved(part, range, demand).await;
        if result.is_err() {
            if let Some(b) = &self.cfg.budget {
                b.release(&self.id, len);
            }
        } else {
            self.cfg
                .stats
                .parts_completed
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn fetch_part_reserved(
        &self,
        part: usize,
        range: Range<u64>,
        demand: bool,
    ) -> Result<u64, HydrateError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = {
                let _permit = self.limiter.acquire(demand).await;
                self.part_requests.fetch_add(1, Ordering::Relaxed);
                self.cfg.stats.part_requests.fetch_add(1, Ordering::Relaxed);
                if attempt > 1 {
                    self.cfg.stats.part_retries.fetch_add(1, Ordering::Relaxed);
                }
                match self.fetch_part_once(range.clone(), demand).await {
                    Ok(crc) => return Ok(crc),
                    Err(e) => e,
                }
            };
            let err = match err {
                PartFailure::Io(e) => return Err(e),
                PartFailure::Store(e) if e.is_precondition_failed() => {
                    return Err(HydrateError::ObjectChanged {
                        bucket: self.id.bucket.clone(),
                        key: self.id.key.clone(),
                        etag: self.id.etag.clone(),
                    })
                }
                PartFailure::Store(e) => e,
            };
            if !err.is_retryable() || attempt >= self.cfg.part_attempts {
                return Err(HydrateError::Part {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    part,
                    start: range.start,
                    end: range.end,
                    attempts: attempt,
                    source: Box::new(err),
                });
            }
            tracing::debug!(key = %self.id.key, part, attempt, "part attempt failed, retrying: {err}");
            tokio::time::sleep(self.cfg.retry_delay * attempt).await;
        }
    }

    /// One GET of the part, streamed to the data file in chunks; returns the part's CRC-64
    /// after its bytes are durable.
    fn open_pending_readahead(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(w) = st.pending_readahead.take() {
            st.readahead = w;
            drop(st);
            self.notify();
        }
    }

    async fn fetch_part_once(&self, range: Range<u64>, demand: bool) -> Result<u64, PartFailure> {
        let mut stream = self.store.get_range(
            &self.id.bucket,
            &self.id.key,
            range.clone(),
            Some(self.id.etag.clone()),
        );
        let mut crc = 0u64;
        let mut offset = range.start;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
        let mut buf_start = offset;
        loop {
            let chunk = stream.next().await;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk = chunk.map_err(PartFailure::Store)?;
                if demand && offset == range.start {
                    self.open_pending_readahead();
                }
                self.bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.cfg
                    .stats
                    .bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                crc = crate::crc64::update(crc, &chunk);
                buf.extend_from_slice(&chunk);
                offset += chunk.len() as u64;
                if offset > range.end {
                    return Err(PartFailure::Store(
                        self.protocol_error(format!("part body ran past byte {}", range.end)),
                    ));
                }
            }
            if buf.len() >= WRITE_CHUNK || (done && !buf.is_empty()) {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK));
                let file = self.file.clone();
                let at = buf_start;
                tokio::task::spawn_blocking(move || file.write_all_at(&data, at))
                    .await
                    .expect("writer does not panic")
                    .map_err(|source| self.io_failure(source))?;
                buf_start = offset;
            }
            if done {
                break;
            }
        }
        if offset != range.end {
            return Err(PartFailure::Store(self.protocol_error(format!(
                "part body ended at byte {offset}, expected {}",
                range.end
            ))));
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .expect("fsync does not panic")
            .map_err(|source| self.io_failure(source))?;
        Ok(crc)
    }

    /// A body that does not match its range: worth another attempt, like any broken answer.
    fn protocol_error(&self, detail: String) -> StoreError {
        StoreError::new(
            StoreErrorKind::Transient,
            format!("unexpected answer from {}: {detail}", self.store_location),
        )
    }

    fn io_failure(&self, source: std::io::Error) -> PartFailure {
        PartFailure::Io(HydrateError::Io {
            path: self.data_path.clone(),
            source,
        })
    }
}

enum PartFailure {
    Store(StoreError),
    Io(HydrateError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_every_byte_once() {
        let l = PartLayout::new(25, 10);
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(2), 20..25);
        assert_eq!(l.parts_for(0..1), 0..1);
        assert_eq!(l.parts_for(9..11), 0..2);
        assert_eq!(l.parts_for(20..100), 2..3);
        assert_eq!(l.parts_for(25..30), 0..0);
        assert_eq!(PartLayout::new(0, 10).count(), 0);
        assert_eq!(PartLayout::new(30, 10).count(), 3);
    }
}
