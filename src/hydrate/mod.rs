//! The resumable download engine. An object is split into parts of `part_size` bytes; parts are
//! fetched with ranged GETs pinned by `If-Match` to one ETag, written at their offsets in a data
//! file, made durable (fdatasync), and only then recorded in the checkpoint. `threads`
//! background workers fetch in order; parts a reader waits for (`want`, `wait_range`) are fetched
//! at once on a connection reserved for demand, then a readahead window after them.
//! When every part is present the combined CRC-64 is checked against the server's.
//! This module knows nothing of FUSE, inodes or the cache directory's layout.
//!
//! Rooms: `layout` (parts and object identity), `state` (what is present, in flight, failed,
//! and the checkpoint it is recorded in), `scheduler` (what is fetched next: demand, then
//! readahead, then the rest), `streams` (where each sequential reader is, so each gets its
//! own readahead), `worker` (one part: GET, write, sync, record), `checkpoint`,
//! `limiter` (connections for the whole mount), `download` (the SDK-style command).

pub mod checkpoint;
mod digest;
pub mod download;
mod error;
#[cfg(test)]
mod interleavings;
mod layout;
pub mod limiter;
mod parts;
mod scheduler;
mod segments;
mod state;
pub mod storage;
mod streams;
mod verify;
mod worker;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fixedbitset::FixedBitSet;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use checkpoint::Checkpoint;
pub use error::HydrateError;
pub use layout::{validate_part_size, validate_threads, ObjectIdentity, PartLayout, MAX_PART_SIZE};
pub use limiter::{ConnectionLimiter, ConnectionPermit};
pub use state::Progress;
pub use verify::Checked;

use crate::store::ObjectStore;
use parts::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FetchMode {
    /// Fetch every part, in order after demand and readahead (`--hydrate open`, downloads).
    All,
    /// Fetch only parts that readers want, plus the readahead window (`--hydrate read`).
    OnDemand,
    /// Like `OnDemand` until the object is being consumed (read sequentially past
    /// `CONSUMED_AFTER` or one readahead window, whichever is less) or is small (at most `SMALL_OBJECT_PARTS` parts); then like `All`
    /// (`--hydrate auto`).
    Auto,
}

/// Bytes of the object already asked for when its identity was learned, handed to the
/// hydration so no part is asked for twice.
pub enum Prefetched {
    /// The whole object (a small object's one GET).
    Whole(bytes::Bytes),
    /// A GET of `range` (one part's, from its start) whose headers told the identity and
    /// whose body is not read yet: the first fetch of that part reads it instead of sending
    /// its own GET. Pinned to the identity's ETag like every part GET.
    Part {
        range: Range<u64>,
        stream: crate::store::ByteStream,
        /// The connection the GET was counted on (a demand one: someone opened the file to
        /// read it). It stays counted until the GET is read or dropped, so an answered GET
        /// waiting for its reader is never a connection outside the limiter's budget.
        connection: ConnectionPermit,
    },
}

/// How long an answered first-part GET waits for the fetch of its part before it is dropped
/// (its connection closed and given back): long enough for the workers that start with the
/// hydration, short enough that a file opened for its footer does not hold a connection.
const OPENED_PART_GRACE: Duration = Duration::from_secs(2);

/// An answered GET of one part (`Prefetched::Part`), kept for the first fetch of that part.
struct OpenedPart {
    range: Range<u64>,
    stream: crate::store::ByteStream,
    /// Taken by the fetch that will read `stream` (it needs no other connection), else
    /// given back with the rest.
    connection: Option<ConnectionPermit>,
}

/// A sequential run longer than this (or than the readahead window, if smaller) means the
/// object is being consumed: `FetchMode::Auto` then fetches it whole. Two of the kernel's
/// 1 MiB readahead windows: a reader that stops after one (`head`, a header) is not.
const CONSUMED_AFTER: u64 = 2 << 20;

/// Objects of at most this many parts are fetched whole at once in `FetchMode::Auto`.
pub const SMALL_OBJECT_PARTS: usize = 4;

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
    /// GETs started inside a part already streaming, for a read far ahead of its stream.
    pub part_splits: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Objects whose bytes did not match the server's whole-object CRC-64 (discarded).
    pub crc_mismatches: AtomicU64,
    /// Cached parts whose bytes no longer matched their CRC-64 (refetched).
    pub parts_failed_check: AtomicU64,
    /// Cached parts read back and checked against their recorded CRC-64 (once per entry
    /// and mount life).
    pub parts_checked: AtomicU64,
    /// Hydrations that became complete (whole object present and checked).
    pub hydrations_completed: AtomicU64,
    /// Hydrations that failed for good (the object changed, or failed its CRC-64).
    pub hydrations_failed: AtomicU64,
}

/// Watches the durability order, for tests: `synced` is called once a part's bytes are
/// fdatasync'ed, `recording` just before a checkpoint naming `present` is written. A test can
/// fail the moment a part is recorded that was never synced.
pub trait DurabilityProbe: Send + Sync {
    fn synced(&self, range: Range<u64>);
    fn recording(&self, present: &FixedBitSet, layout: PartLayout);
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
    pub probe: Option<Arc<dyn DurabilityProbe>>,
    /// Where the data files and records are written (local files; a power-cut simulation
    /// in tests).
    pub storage: Arc<dyn storage::Storage>,
    /// At the end of a whole-object fetch, fetch background parts in halves and let idle
    /// connections claim the halves not yet asked for (`scheduler::claim_a_tail`). No byte
    /// is fetched twice: a claim never cuts a GET already asked for.
    pub split_tails: bool,
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
            probe: None,
            storage: Arc::new(storage::Local),
            split_tails: true,
        }
    }
}

struct Inner {
    /// This hydration itself, for work it starts from code that holds only `&Inner` (the
    /// whole-object digest check).
    me: std::sync::Weak<Inner>,
    store: Arc<dyn ObjectStore>,
    id: ObjectIdentity,
    layout: PartLayout,
    cfg: HydrationConfig,
    file: Arc<dyn storage::EngineFile>,
    data_path: PathBuf,
    checkpoint_path: Option<PathBuf>,
    store_location: String,
    limiter: Arc<ConnectionLimiter>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// The checkpoint open for records (once the first whole write made it format 2); held
    /// for each write, in blocking code, so an aborted task can never leave a write running
    /// unlocked.
    checkpoint_lock: Mutex<Option<checkpoint::RecordFile>>,
    /// Set by `shutdown`; checked under `checkpoint_lock` before every write.
    writes_closed: std::sync::atomic::AtomicBool,
    /// A delayed sync of the records is scheduled (`sync_records_later`).
    sync_timer: std::sync::atomic::AtomicBool,
    bytes_fetched: AtomicU64,
    bytes_resumed: u64,
    part_requests: AtomicU64,
    /// A part's GET already answered (`Prefetched::Part`), taken by the first fetch of
    /// exactly that range; dropped (its connection closed) with the hydration otherwise.
    opened_part: Mutex<Option<OpenedPart>>,
    /// Background workers and demand fetches; aborted together by `stop`.
    tasks: Mutex<JoinSet<()>>,
    /// Background workers running now.
    workers: std::sync::atomic::AtomicUsize,
    /// Whether background work covers the whole object (mode `All`, or `Auto` once the
    /// object is being consumed or is small).
    fetch_all: std::sync::atomic::AtomicBool,
    /// The whole-object digest's follower runs (`digest`).
    digest_follower: std::sync::atomic::AtomicBool,
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
            "Hydration({}/{})",
            self.inner.id.bucket, self.inner.id.key
        )
    }
}

/// Where a hydration keeps its bytes and its record.
#[derive(Debug, Clone)]
pub struct HydrationFiles {
    pub data: PathBuf,
    pub checkpoint: Option<PathBuf>,
    /// Permission bits for a new data file (0o600 in the cache; the umask applies).
    pub data_mode: u32,
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
        Hydration::start_with(store, id, files, cfg, limiter, resume, None)
    }

    /// `start`, with the whole object's bytes already in hand (`body`, from the GET that also
    /// told the identity): its parts are written from it and no worker fetches them again.
    pub fn start_with(
        store: Arc<dyn ObjectStore>,
        id: ObjectIdentity,
        files: HydrationFiles,
        cfg: HydrationConfig,
        limiter: Arc<ConnectionLimiter>,
        resume: Option<&Checkpoint>,
        body: Option<bytes::Bytes>,
    ) -> Result<Hydration, HydrateError> {
        Hydration::start_prefetched(
            store,
            id,
            files,
            cfg,
            limiter,
            resume,
            None,
            body.map(Prefetched::Whole),
        )
    }

    /// `start`, with bytes of the object already asked for (`Prefetched`): the whole object
    /// is written from them, or a part's answered GET is read by that part's first fetch.
    /// `trusted`: what an earlier hydration of the same entry checked in this mount's life,
    /// applied before anything is checked again (`trust_checked`).
    #[allow(clippy::too_many_arguments)] // each is one thing the caller decides
    pub fn start_prefetched(
        store: Arc<dyn ObjectStore>,
        id: ObjectIdentity,
        files: HydrationFiles,
        cfg: HydrationConfig,
        limiter: Arc<ConnectionLimiter>,
        resume: Option<&Checkpoint>,
        trusted: Option<&Checked>,
        prefetched: Option<Prefetched>,
    ) -> Result<Hydration, HydrateError> {
        let (body, opened_part) = match prefetched {
            Some(Prefetched::Whole(body)) => (Some(body), None),
            Some(Prefetched::Part {
                range,
                stream,
                connection,
            }) => (
                None,
                Some(OpenedPart {
                    range,
                    stream,
                    connection: Some(connection),
                }),
            ),
            None => (None, None),
        };
        let io_err = |source| HydrateError::Io {
            path: files.data.clone(),
            source,
        };
        let part_size = resume.map(|c| c.part_size).unwrap_or(cfg.part_size);
        let layout = PartLayout::new(id.size, part_size);
        let n = layout.count();
        let file = cfg
            .storage
            .open(&files.data, files.data_mode, Some(id.size))
            .map_err(io_err)?;
        let (present, part_crc) = match resume {
            Some(c) => (c.present.clone(), c.part_crc64.clone()),
            None => (FixedBitSet::with_capacity(n), vec![0; n]),
        };
        // A part already here from an earlier run needs no GET: its answered one is dropped.
        let opened_part = opened_part.filter(|o| {
            let first = layout.parts_for(o.range.clone()).start;
            first >= n || !present.contains(first)
        });
        let bytes_resumed = layout.bytes_of(&present);
        let complete = present.is_full();
        let (changed, _) = watch::channel(0);
        let has_checkpoint = files.checkpoint.is_some();
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            store_location: store.location(),
            store,
            layout,
            cfg: HydrationConfig { part_size, ..cfg },
            file,
            data_path: files.data,
            checkpoint_path: files.checkpoint,
            limiter,
            state: Mutex::new(State::new(
                n,
                present,
                part_crc,
                match (has_checkpoint, resume) {
                    (false, _) => {
                        let mut all = FixedBitSet::with_capacity(n);
                        all.insert_range(..);
                        all
                    }
                    (true, Some(c)) => c.present.clone(),
                    (true, None) => FixedBitSet::with_capacity(n),
                },
            )),
            changed,
            checkpoint_lock: Mutex::new(None),
            writes_closed: std::sync::atomic::AtomicBool::new(false),
            sync_timer: Default::default(),
            bytes_fetched: AtomicU64::new(0),
            bytes_resumed,
            part_requests: AtomicU64::new(0),
            opened_part: Mutex::new(opened_part),
            tasks: Mutex::new(JoinSet::new()),
            workers: Default::default(),
            fetch_all: std::sync::atomic::AtomicBool::new(
                cfg.mode == FetchMode::All
                    || (cfg.mode == FetchMode::Auto && n <= SMALL_OBJECT_PARTS),
            ),
            digest_follower: std::sync::atomic::AtomicBool::new(false),
            id,
        });
        let h = Hydration { inner };
        if let (Some(trusted), Some(_)) = (trusted, resume) {
            h.trust_checked(trusted);
        }
        // Hashes what arrives, in order, from the start (objects with a digest only).
        h.inner.start_digest_check();
        if complete {
            h.inner.finish_if_complete();
        } else {
            // No record is written before the first part: until then a crash leaves nothing
            // worth resuming (the data file without a record is removed at the next start),
            // and opening a file pays no fsyncs before its first byte.
            // Claimed before any worker starts, so none of them asks for these parts again.
            if let Some(body) = body {
                h.supply(body);
            }
            if h.inner.opened_part.lock().unwrap().is_some() {
                // Unread (the first read was elsewhere and no worker came to that part):
                // its connection goes back rather than waiting for the hydration's end.
                let inner = Arc::downgrade(&h.inner);
                h.inner.spawn(async move {
                    tokio::time::sleep(OPENED_PART_GRACE).await;
                    if let Some(inner) = inner.upgrade() {
                        inner.opened_part.lock().unwrap().take();
                    }
                });
            }
            h.inner.restart_workers();
        }
        Ok(h)
    }

    /// Hands over the whole object's bytes, fetched together with its metadata (a small
    /// object's one GET): the parts neither present nor in flight are written and recorded
    /// from them. Ignored when the length is not the object's size.
    pub fn supply(&self, body: bytes::Bytes) {
        if body.len() as u64 != self.inner.id.size {
            return;
        }
        let parts: Vec<usize> = {
            let mut st = self.inner.state.lock().unwrap();
            if st.stopped || st.fatal.is_some() || st.complete {
                return;
            }
            let free: Vec<usize> = (0..self.inner.layout.count())
                .filter(|&p| !st.present[p] && !st.in_flight[p])
                .collect();
            for &p in &free {
                st.in_flight[p] = true;
            }
            free
        };
        if parts.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        self.inner
            .spawn(async move { inner.supply_and_record(parts, body).await });
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
            parts_present: st.present.count_ones(..),
            parts_in_flight: st.in_flight.iter().filter(|&&p| p).count(),
            bytes_total: layout.size,
            bytes_present: layout.bytes_of(&st.present),
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

    /// Stops every fetch and waits until no checkpoint write is running; none starts
    /// afterwards, so the caller owns the checkpoint file from here on (an eviction may delete
    /// it without an old write bringing it back). The checkpoint stays consistent: it only
    /// ever names parts that were durable before it was written.
    pub fn stop(&self) {
        self.inner.state.lock().unwrap().stopped = true;
        self.inner.tasks.lock().unwrap().abort_all();
        // Its grace timer was aborted with the rest: an answered GET nobody read goes now,
        // not with the last handle.
        self.inner.opened_part.lock().unwrap().take();
        self.inner.notify();
        let mut records = self.inner.checkpoint_lock.lock().unwrap();
        // Parts that became durable but whose record no task wrote yet (it was aborted just
        // now) are recorded, and every record made durable, before the file is let go
        // (unmount, eviction): what readers already got is not fetched again.
        if !self.inner.writes_closed.swap(true, Ordering::SeqCst) {
            if let Some(path) = &self.inner.checkpoint_path {
                if let Err(e) = self.inner.write_records(&mut records, path, true) {
                    tracing::warn!(key = %self.inner.id.key, "recording the checkpoint failed: {e}");
                }
            }
        }
        *records = None; // its descriptor closes with the hydration's work
    }

    /// `stop` from async code: the wait for a running checkpoint write happens off the
    /// async workers.
    pub async fn shutdown(&self) {
        // Parts whose bytes are all written are one sync and one record away from durable:
        // let them finish (briefly), so what readers already got survives an unmount.
        let recording = self.wait_until(|st| st.crc_known.is_empty());
        let _ = tokio::time::timeout(Duration::from_secs(10), recording).await;
        let h = self.clone();
        tokio::task::spawn_blocking(move || h.stop())
            .await
            .expect("shutdown does not panic");
    }

    /// The failure that ended this hydration, if one did (the object changed, or its bytes
    /// failed the whole-object CRC-64).
    pub fn failure(&self) -> Option<Arc<HydrateError>> {
        self.inner.state.lock().unwrap().fatal.clone()
    }

    /// Whether every part is present or wholly written in this run.
    pub fn all_fetched(&self) -> bool {
        self.inner.state.lock().unwrap().all_fetched()
    }

    /// Whether this hydration fetches the whole object (so a read reaching the end may wait
    /// for every part and the CRC-64 check).
    pub fn fetches_all(&self) -> bool {
        self.inner.fetch_all.load(Ordering::SeqCst)
    }

    /// Tells the hydration what a reader read: the read continues its reader's stream (or
    /// starts one), and each sequential stream gets its own readahead. For `Auto`, a stream
    /// that goes sequentially past `CONSUMED_AFTER` is consuming the object, which is
    /// then fetched whole (whatever other readers do in between: several processes copying
    /// their slices out of one mapping each count).
    pub fn note_read(&self, range: Range<u64>) {
        tracing::trace!(key = %self.inner.id.key, at = range.start, len = range.end - range.start, "read");
        let noted = {
            let mut st = self.inner.state.lock().unwrap();
            if st.complete || st.stopped || range.is_empty() {
                return;
            }
            st.streams.note(range)
        };
        let window = self.inner.cfg.readahead_parts as u64 * self.inner.layout.part_size;
        let consumed_after = window.min(CONSUMED_AFTER);
        if self.inner.cfg.mode == FetchMode::Auto
            && !self.fetches_all()
            && noted.run > consumed_after
        {
            tracing::debug!(key = %self.inner.id.key, run = noted.run, "read sequentially past {consumed_after} bytes: fetching the whole object");
            self.inner.fetch_all.store(true, Ordering::SeqCst);
            self.inner.restart_workers();
            self.inner.notify();
            return;
        }
        // A stream that became sequential, or moved into another part, may have free parts
        // in its readahead now: the workers look again.
        let part = |at: u64| at / self.inner.layout.part_size;
        let moved = noted
            .was_at
            .is_some_and(|was| part(was) != part(noted.now_at));
        if moved || noted.became_sequential {
            self.inner.notify();
        }
    }

    /// Whether the hydration should go on once no handle has the object open: it fetches the
    /// whole object and is neither complete nor failed.
    pub fn continues_after_close(&self) -> bool {
        let st = self.inner.state.lock().unwrap();
        self.fetches_all() && !st.complete && st.fatal.is_none() && !st.stopped
    }

    /// No part is in flight.
    pub fn is_idle(&self) -> bool {
        let st = self.inner.state.lock().unwrap();
        !st.in_flight.iter().any(|&f| f)
    }

    /// Reads bytes that are present (the caller waited for them) from the data file.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = (offset + len as u64).min(self.inner.layout.size);
        self.inner
            .file
            .read_vec(offset, end.saturating_sub(offset) as usize)
    }

    /// The data file, for the kernel to read a complete entry directly (`None` when its
    /// bytes must go through the engine).
    pub fn file(&self) -> Option<Arc<std::fs::File>> {
        self.inner.file.file()
    }
}

impl Inner {
    /// Runs a task of this hydration; `stop` aborts it (and once stopped, none starts).
    /// Finished tasks are reaped here, so the set holds only what still runs.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        // Checked under the tasks lock, which `stop` takes to abort every task after it set
        // `stopped`: a task is aborted with the rest or never started. (A reader's `want`
        // that saw no stop could otherwise start its fetch after the stop's abort.)
        if self.state.lock().unwrap().stopped {
            return;
        }
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}
