//! Defects of the engine and the namespace that issue 16's line-by-line review found and that
//! were fixed without a test shown to fail on the code before the fix: one named test each,
//! on the in-memory store, each asserting what a user would see (GETs in flight beyond
//! `--threads`, a record a power cut loses, a reader never told its part failed, a directory
//! stuck behind a dead listing). Each interleaving that matters is forced, not hoped for, and
//! every wait is bounded, so a regression fails with its message instead of hanging. Each
//! test was run against its defect's old code, reintroduced alone, and failed (and only it):
//! the commit messages record how.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use fixedbitset::FixedBitSet;
use ossmount::cache::{Cache, Capacity};
use ossmount::fs::{FsConfig, FsError, OssFs, ROOT_INO};
use ossmount::hydrate::storage::PowerCut;
use ossmount::hydrate::{
    Checkpoint, ConnectionLimiter, DurabilityProbe, FetchMode, Hydration, HydrationConfig,
    HydrationFiles, ObjectIdentity, PartLayout, Prefetched,
};
use ossmount::store::memory::{MemoryFaults, MemoryStore};
use ossmount::store::StoreError;
use ossmount::store::{BoxFut, ByteStream, ListPage, ListRequest, ObjectMeta, ObjectStore};

/// Starts a hydration of `b/k` into `dir`; returns it with its checkpoint's path.
async fn start(
    store: &Arc<MemoryStore>,
    dir: &Path,
    cfg: HydrationConfig,
    limiter: Arc<ConnectionLimiter>,
) -> (Hydration, PathBuf) {
    let meta = store.head("b", "k").await.unwrap();
    let ckpt = dir.join("obj.ckpt");
    let files = HydrationFiles {
        data: dir.join("obj.data"),
        checkpoint: Some(ckpt.clone()),
        data_mode: 0o600,
    };
    let id = ObjectIdentity::from_meta("b", "k", &meta);
    let h = Hydration::start(store.clone(), id, files, cfg, limiter, None).unwrap();
    (h, ckpt)
}

/// Polls `done` every few milliseconds until it holds; panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Before: a worker was counted only once it first ran, so a restart right after the start
/// (a sequential read in `--hydrate auto` switching to the whole object, before the first
/// workers ran) saw none and started `threads` more: twice the GETs `--threads` allows.
#[tokio::test(flavor = "current_thread")]
async fn restarting_the_workers_never_runs_more_gets_than_threads() {
    let dir = tempfile::tempdir().unwrap();
    let part = 16u64 << 10;
    let store = MemoryStore::new("mem://workers");
    let want = ossmount::sample::bytes(7, 12 * part as usize);
    store.put("b", "k", want.clone());
    // Slow bodies, so the GETs of every worker overlap.
    store.set_faults(MemoryFaults {
        chunk: 4096,
        chunk_delay: Duration::from_millis(2),
        ..Default::default()
    });
    let threads = 2;
    let cfg = HydrationConfig {
        part_size: part,
        threads,
        mode: FetchMode::Auto,
        ..Default::default()
    };
    // Far more connections than threads: only the workers' count may hold them back.
    let (h, _) = start(&store, dir.path(), cfg, ConnectionLimiter::new(16, 1)).await;
    // Past the readahead window at once: the workers are restarted before any of them ran.
    h.note_read(0..3 * part);
    tokio::time::timeout(Duration::from_secs(30), h.wait_complete())
        .await
        .expect("the object was not fetched within 30 s")
        .unwrap();
    let peak = store.counters.gets_open_peak.load(Ordering::SeqCst);
    assert!(
        peak <= threads as u64,
        "{peak} GETs were in flight at once with {threads} threads"
    );
    assert_eq!(h.read_at(0, want.len()).unwrap(), want);
    h.shutdown().await;
}

/// Found by the streaming model: a restart of the workers whose spawned worker was dropped
/// at once (its runtime shutting down, as when a process exits with a hydration running) gave
/// the worker's count back and took it again, forever: the thread spun and the runtime's
/// shutdown never ended.
#[test]
fn restarting_the_workers_as_their_runtime_shuts_down_returns() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let part = 16u64 << 10;
    let (h, handle) = rt.block_on(async {
        let store = MemoryStore::new("mem://exit");
        store.put("b", "k", ossmount::sample::bytes(11, 12 * part as usize));
        // Nothing arrives: the hydration is mid-way when its runtime goes.
        store.stall(true);
        let cfg = HydrationConfig {
            part_size: part,
            threads: 2,
            mode: FetchMode::Auto,
            ..Default::default()
        };
        let (h, _) = start(&store, dir.path(), cfg, ConnectionLimiter::new(8, 1)).await;
        (h, tokio::runtime::Handle::current())
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _runtime = handle.enter();
        // A sequential read switches to the whole object: the workers are restarted.
        h.note_read(0..3 * part);
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("restarting the workers on a runtime that shut down never returned");
}

/// Found by the streaming model (a fetch still recording after its case had ended): a
/// reader's `want` that saw no stop yet started its fetch after the stop had aborted every
/// task, so a GET ran, and held a connection, after the stop (an unmount, an eviction, a
/// version replaced). The race is narrow (a fraction of a percent of the rounds here), so it
/// is run many times: before the fix, 39 to 46 of the 2000 rounds left a GET open.
#[test]
fn no_fetch_outlives_a_stop_that_races_a_reader() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let part = 16u64 << 10;
    let store = MemoryStore::new("mem://race");
    store.put("b", "k", ossmount::sample::bytes(12, 4 * part as usize));
    // GETs wait before their first byte: a fetch that was not aborted keeps its GET open.
    store.stall(true);
    let open = || store.counters.gets_open.load(Ordering::SeqCst);
    let wait_closed = |limit: Duration| {
        let t0 = Instant::now();
        while open() > 0 && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
        open() == 0
    };
    let mut slow_aborts = 0;
    for round in 0..2000 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HydrationConfig {
            part_size: part,
            threads: 1,
            mode: FetchMode::OnDemand,
            readahead_parts: 0,
            ..Default::default()
        };
        let (h, _) = rt.block_on(start(&store, dir.path(), cfg, ConnectionLimiter::new(8, 1)));
        let both = Arc::new(std::sync::Barrier::new(2));
        let (reader, go, runtime) = (h.clone(), both.clone(), rt.handle().clone());
        let reading = std::thread::spawn(move || {
            let _runtime = runtime.enter();
            go.wait();
            reader.want(0..10);
        });
        both.wait();
        h.stop();
        reading.join().unwrap();
        // An aborted fetch drops its GET as soon as its runtime gets to the abort, which on
        // a loaded machine (CI: 1 round in 2000 past 200 ms) can take a while. The store
        // stays stalled, so a fetch that was never aborted holds its GET for good: only a
        // GET still open after seconds outlived its stop.
        if !wait_closed(Duration::from_millis(200)) {
            slow_aborts += 1;
            assert!(
                wait_closed(Duration::from_secs(5)),
                "round {round}: a fetch outlived its stop (its GET still open 5 s later)"
            );
        }
    }
    eprintln!("rounds whose aborted GET took over 200 ms to close: {slow_aborts}");
}

/// Before: "records are synced at most a second apart" had no timer behind it: a part's
/// record was made durable by the next record or the stop, so with no part after it, a power
/// cut lost it however long ago it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_becomes_durable_within_a_second_when_no_part_follows() {
    let dir = tempfile::tempdir().unwrap();
    let part = 16u64 << 10;
    let store = MemoryStore::new("mem://timer");
    store.put("b", "k", ossmount::sample::bytes(8, 4 * part as usize));
    let power = PowerCut::new(u64::MAX, 0.0, 1);
    let cfg = HydrationConfig {
        part_size: part,
        threads: 1,
        mode: FetchMode::OnDemand,
        // Only the parts read are fetched: nothing arrives after the second.
        readahead_parts: 0,
        storage: Arc::new(power.clone()),
        ..Default::default()
    };
    let (h, ckpt) = start(&store, dir.path(), cfg, ConnectionLimiter::new(4, 1)).await;
    let recorded = |p: usize| Checkpoint::load(&ckpt).is_ok_and(|c| c.is_present(p));
    let bound = Duration::from_secs(10);
    // The first record creates the checkpoint (durable at once); the second is written in
    // place, less than a second after the last sync, so it is not due yet.
    tokio::time::timeout(bound, h.wait_range(0..1))
        .await
        .expect("part 0 never arrived")
        .unwrap();
    until(bound, "part 0 was never recorded", || recorded(0)).await;
    tokio::time::timeout(bound, h.wait_range(part..part + 1))
        .await
        .expect("part 1 never arrived")
        .unwrap();
    until(bound, "part 1 was never recorded", || recorded(1)).await;
    // A second is the promise; the rest is slack for a loaded machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    power.cut_now();
    let after = Checkpoint::load(&ckpt).expect("the checkpoint survives the cut");
    assert!(
        after.is_present(0) && after.is_present(1),
        "2 s after part 1 was recorded, a power cut left {} of 2 records",
        after.parts_present()
    );
    h.stop();
}

/// Occupies the runtime's only blocking thread from the moment the first part is synced
/// until the gate opens: the part's record, spawned next, waits in the queue behind it, as it
/// may behind a slow thread pool; a stop then comes before the record is written.
struct HoldRecords {
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl DurabilityProbe for HoldRecords {
    fn synced(&self, _: Range<u64>) {
        if let Some(gate) = self.gate.lock().unwrap().take() {
            tokio::task::spawn_blocking(move || {
                // Bounded: a test that fails still lets the runtime shut down.
                let _ = gate.recv_timeout(Duration::from_secs(20));
            });
        }
    }

    fn recording(&self, _: &FixedBitSet, _: PartLayout) {}
}

/// Before: a stop (unmount, eviction, the reap of an idle hydration) only synced the records
/// already written; a part synced and marked present whose record task had not yet run was
/// lost with it, and fetched again at the next open. With a power cut after the stop, the
/// checkpoint must still name every part that was present when the stop came.
#[test]
fn a_stop_records_every_part_whose_bytes_were_synced() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let part = 16u64 << 10;
        let store = MemoryStore::new("mem://stop");
        store.put("b", "k", ossmount::sample::bytes(9, 3 * part as usize));
        let power = PowerCut::new(u64::MAX, 0.0, 1);
        let (open, gate) = std::sync::mpsc::channel();
        let cfg = HydrationConfig {
            part_size: part,
            threads: 1,
            mode: FetchMode::All,
            probe: Some(Arc::new(HoldRecords {
                gate: Mutex::new(Some(gate)),
            })),
            storage: Arc::new(power.clone()),
            ..Default::default()
        };
        let (h, ckpt) = start(&store, dir.path(), cfg, ConnectionLimiter::new(4, 1)).await;
        let bound = Duration::from_secs(10);
        until(bound, "part 0 never became present", || {
            h.progress().parts_present == 1
        })
        .await;
        let present = h.progress().parts_present;
        h.stop();
        // The held record task runs now, after the stop.
        open.send(()).unwrap();
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        power.cut_now();
        let after = Checkpoint::load(&ckpt).map_err(|e| format!("{e:?}"));
        assert_eq!(
            after.map(|c| c.parts_present()),
            Ok(present),
            "after the stop and a power cut, the checkpoint must record the {present} part(s) present at the stop"
        );
    });
}

/// Before: any reader's `want` cleared the failures of every part, so a reader waiting for a
/// part whose fetch had just failed could find the failure gone before it looked, and (in
/// `--hydrate read`, where nothing else fetches that part) wait forever.
#[tokio::test(flavor = "current_thread")]
async fn a_reader_of_a_failed_part_is_told_while_another_reader_asks_for_other_parts() {
    let dir = tempfile::tempdir().unwrap();
    let part = 16u64 << 10;
    let store = MemoryStore::new("mem://want");
    store.put("b", "k", ossmount::sample::bytes(10, 4 * part as usize));
    store.set_faults(MemoryFaults {
        fail_gets: [1].into(),
        ..Default::default()
    });
    let cfg = HydrationConfig {
        part_size: part,
        threads: 1,
        mode: FetchMode::OnDemand,
        readahead_parts: 0,
        part_attempts: 1,
        ..Default::default()
    };
    let (h, _) = start(&store, dir.path(), cfg, ConnectionLimiter::new(4, 1)).await;
    let waiting = h.wait_range(0..10);
    tokio::pin!(waiting);
    // Polled once: it asks for part 0 (whose only GET fails) and waits.
    let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "part 0 cannot be there yet");
    until(Duration::from_secs(10), "part 0's GET never failed", || {
        store.counters.gets.load(Ordering::SeqCst) >= 1 && h.progress().parts_in_flight == 0
    })
    .await;
    // Another reader asks for part 2 before the first one looks again.
    h.want(2 * part..2 * part + 10);
    let told = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the reader of a failed part was never told it failed");
    assert!(told.is_err(), "part 0 failed, yet its read succeeded");
}

/// Lists through a memory store, but the first listing request panics.
struct PanicsOnce {
    inner: Arc<MemoryStore>,
    panicked: AtomicBool,
}

impl ObjectStore for PanicsOnce {
    fn head<'a>(&'a self, b: &'a str, k: &'a str) -> BoxFut<'a, Result<ObjectMeta, StoreError>> {
        self.inner.head(b, k)
    }

    fn get_range(&self, b: &str, k: &str, r: Range<u64>, m: Option<String>) -> ByteStream {
        self.inner.get_range(b, k, r, m)
    }

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, StoreError>> {
        Box::pin(async move {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("a listing task panics (on purpose, in a test)");
            }
            self.inner.list_page(bucket, req).await
        })
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

/// Before: a listing task that panicked (or was aborted) never ended its listing nor left
/// the in-flight map, so every later `ls` of that directory joined the dead listing and
/// waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_task_panics_fails_once_and_the_next_one_lists() {
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryStore::new("mem://listing");
    for k in ["a.txt", "sub/b.txt"] {
        memory.put("b", k, vec![1u8; 10]);
    }
    let store: Arc<dyn ObjectStore> = Arc::new(PanicsOnce {
        inner: memory,
        panicked: AtomicBool::new(false),
    });
    let cache = Cache::open(
        &dir.path().join("cache"),
        store.clone(),
        HydrationConfig::default(),
        ConnectionLimiter::new(4, 1),
        Capacity::unlimited(),
    )
    .unwrap();
    let cfg = FsConfig {
        bucket: "b".into(),
        prefix: String::new(),
        metadata_ttl: Duration::from_secs(60),
        uid: 0,
        gid: 0,
        file_mode: 0o444,
        dir_mode: 0o555,
        require_crc: false,
        read_deadline: Duration::from_secs(10),
        direct_memory: ossmount::fs::DEFAULT_DIRECT_MEMORY,
        journal: None,
    };
    let fs = Arc::new(OssFs::new(cfg, store, Arc::new(cache)));
    let bound = Duration::from_secs(5);
    let first = tokio::time::timeout(bound, fs.opendir(ROOT_INO))
        .await
        .expect("a listing whose task panicked never ended");
    assert!(
        matches!(first, Err(FsError::Store { .. })),
        "the panicked listing must fail, got {first:?}"
    );
    let fh = tokio::time::timeout(bound, fs.opendir(ROOT_INO))
        .await
        .expect("the directory stayed stuck behind the dead listing")
        .unwrap();
    let listed = tokio::time::timeout(bound, fs.readdir(fh, 0, 100))
        .await
        .expect("readdir never ended")
        .unwrap();
    let mut names: Vec<String> = listed.into_iter().map(|(_, e)| e.name).collect();
    names.sort();
    assert_eq!(names, vec![".", "..", "a.txt", "sub"]);
}

/// Found by the review of the no-HEAD open (issue 21): an answered first-part GET that no
/// fetch reads (the first read is a footer) kept its connection until its 2 s grace ran out,
/// so with every connection taken a footer read waited the grace out; and a stopped
/// hydration (the object replaced, an eviction) aborted that grace's timer, keeping the
/// connection for the handle's life. Both without timing luck: one connection in all, the
/// GET holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_first_part_get_yields_its_connection_to_a_footer_read_and_to_a_stop() {
    let part = 16u64 << 10;
    let store = MemoryStore::new("mem://opened");
    let want = ossmount::sample::bytes(13, 4 * part as usize + 100);
    store.put("b", "k", want.clone());
    let start = |dir: &Path, limiter: &Arc<ConnectionLimiter>| {
        let (store, limiter, dir) = (store.clone(), limiter.clone(), dir.to_path_buf());
        async move {
            let listed = store.head("b", "k").await.unwrap();
            let connection = limiter.try_acquire(true).expect("a free connection");
            let (meta, stream) = store
                .get_range_with_meta("b", "k", 0..part, listed.etag.clone())
                .await
                .unwrap();
            let files = HydrationFiles {
                data: dir.join("obj.data"),
                checkpoint: Some(dir.join("obj.ckpt")),
                data_mode: 0o600,
            };
            let cfg = HydrationConfig {
                part_size: part,
                threads: 1,
                mode: FetchMode::OnDemand,
                ..Default::default()
            };
            Hydration::start_prefetched(
                store.clone(),
                ObjectIdentity::from_meta("b", "k", &meta),
                files,
                cfg,
                limiter,
                None,
                None,
                Some(Prefetched::Part {
                    range: 0..part,
                    stream,
                    connection,
                }),
            )
            .unwrap()
        }
    };

    // A footer read with the only connection held by the unread GET.
    let dir = tempfile::tempdir().unwrap();
    let limiter = ConnectionLimiter::new(1, 0);
    let h = start(dir.path(), &limiter).await;
    let footer = want.len() as u64 - 100..want.len() as u64;
    let t0 = Instant::now();
    h.want(footer.clone());
    tokio::time::timeout(Duration::from_secs(10), h.wait_range(footer.clone()))
        .await
        .expect("the footer read ended")
        .unwrap();
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the footer read waited {waited:?}: the unread GET's 2 s grace, not a connection"
    );
    assert_eq!(
        h.read_at(footer.start, 100).unwrap(),
        want[footer.start as usize..]
    );
    h.shutdown().await;

    // A stop within the grace gives the connection back at once.
    let dir = tempfile::tempdir().unwrap();
    let limiter = ConnectionLimiter::new(1, 0);
    let h = start(dir.path(), &limiter).await;
    assert_eq!(
        limiter.in_flight(),
        1,
        "the unread GET holds the connection"
    );
    h.stop();
    assert_eq!(
        limiter.in_flight(),
        0,
        "a stopped hydration still holds its unread GET's connection"
    );
    drop(h);
}
