//! What is fetched next: parts a reader waits for (`want`, `wait_range`) at once on demand
//! connections, then a readahead window after them, then each sequential reader's own
//! readahead (`streams`), then (mode `All`) the rest in order, by `threads` background
//! workers. Must not write files or the checkpoint.

use std::ops::Range;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::segments::{SegmentTask, SPLIT_ALIGN};
use super::{HydrateError, Hydration, Inner, State};

/// How far ahead of a sequential reader (in parts) the workers look for its next part when
/// the whole object is being fetched; beyond it, the lowest missing part comes next.
const STREAM_REACH: usize = 64;

/// A demanded part starts at the reader's page when that lies at least `SPLIT_MIN` into the
/// part; nearer its start, one GET from the start is as quick.
const SPLIT_MIN: u64 = 256 << 10;
/// The least either half of a part fetched in halves (and of a tail claim) may be: below
/// this a GET's round trip costs more than streaming the bytes on the connection open.
pub(super) const TAIL_SPLIT_MIN: u64 = 1 << 20;

impl Hydration {
    /// Asks for the parts covering `range` ahead of everything else: missing parts that are
    /// not in flight are fetched at once on demand connections, and the readahead window moves
    /// to just after the range. Clears the earlier failures of those parts, so a new read
    /// retries them (and only them: other parts keep their failure until asked for).
    pub fn want(&self, range: Range<u64>) {
        let parts = self.inner.layout.parts_for(range.clone());
        let mut spawn = Vec::new();
        let rerecord;
        {
            let mut st = self.inner.state.lock().unwrap();
            if st.stopped || st.fatal.is_some() || st.complete {
                return;
            }
            st.paused = None;
            for p in parts.clone() {
                st.failed[p] = None;
            }
            for p in parts.clone() {
                if !st.present[p] && !st.in_flight[p] {
                    st.in_flight[p] = true;
                    spawn.push(p);
                }
            }
            // The reader's bytes inside the first part come first (the part's head after).
            if let Some(&first) = spawn.first().filter(|&&p| p == parts.start) {
                let part_start = self.inner.layout.range(first).start;
                let at = range.start & !(SPLIT_ALIGN - 1);
                if at >= part_start + SPLIT_MIN {
                    st.start_at.insert(first, at);
                }
            }
            // A read far ahead of a stream already under way in its part gets its own GET,
            // on a connection free now: the part's fetch holds one and waits for the split,
            // so waiting here for another of the same pool could wait forever.
            let first = parts.start;
            if !parts.is_empty() && st.in_flight[first] && !spawn.contains(&first) {
                let inner = self.inner.clone();
                if let Some(segments) = st.segments.get_mut(&first) {
                    if let Some(connection) = segments
                        .may_split(range.start)
                        .then(|| inner.limiter.try_acquire(true))
                        .flatten()
                    {
                        segments.split_for(range.start, |control| {
                            SegmentTask::new(tokio::spawn(
                                inner.fetch_split_segment(first, control, connection),
                            ))
                        });
                    }
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
            // Every part is here but the record that says so was never written (a full disk):
            // write it again, so the hydration can complete once there is room.
            rerecord = st.present.is_full() && !st.recorded.is_full();
        }
        self.inner.notify();
        if rerecord {
            let inner = self.inner.clone();
            self.inner.spawn(async move {
                if inner.save_checkpoint().await.is_ok() {
                    inner.finish_if_complete();
                }
            });
        }
        for p in spawn {
            let inner = self.inner.clone();
            self.inner.spawn(async move {
                // Waiters learn the outcome from the shared state.
                let _ = inner.fetch_and_record(p, true, None).await;
            });
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
        self.want(range.clone());
        loop {
            if self.check_range(range.clone(), parts.clone())?.is_some() {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(self.inner.stopped_error()));
            }
        }
    }

    fn check_range(
        &self,
        range: Range<u64>,
        parts: Range<usize>,
    ) -> Result<Option<()>, Arc<HydrateError>> {
        let st = self.inner.state.lock().unwrap();
        // Bytes that failed the whole-object check are not served, present or not.
        if let Some(f) = st.fatal.as_ref().filter(|f| f.is_corrupt()) {
            return Err(f.clone());
        }
        if st.covers(self.inner.layout, range) {
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
        self.wait_until(|st| st.complete).await
    }

    /// Waits until the whole object's bytes are in the data file and passed the CRC-64 check
    /// (durable and recorded or not yet): what a read that finishes the file needs.
    pub async fn wait_verified(&self) -> Result<(), Arc<HydrateError>> {
        self.wait_until(|st| st.complete || st.verified).await
    }

    pub(super) async fn wait_until(
        &self,
        done: impl Fn(&State) -> bool,
    ) -> Result<(), Arc<HydrateError>> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            {
                let st = self.inner.state.lock().unwrap();
                if let Some(f) = &st.fatal {
                    return Err(f.clone());
                }
                if done(&st) {
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
}

impl Inner {
    /// The next part for a background worker: the window after the last demanded parts
    /// first; then each sequential reader's own readahead, nearest to its reader first, so
    /// readers at several offsets advance together (in mode All, on past the window, up to
    /// `STREAM_REACH` parts ahead); then (mode All) the lowest missing part. Marks nothing.
    pub(super) fn next_background(&self, st: &State) -> Option<usize> {
        let free =
            |st: &State, p: usize| !st.present[p] && !st.in_flight[p] && st.failed[p].is_none();
        if let Some(p) = st.readahead.clone().find(|&p| free(st, p)) {
            return Some(p);
        }
        let fetch_all = self.fetch_all.load(Ordering::SeqCst);
        let n = self.layout.count();
        let reach = if fetch_all {
            STREAM_REACH.max(self.cfg.readahead_parts)
        } else {
            self.cfg.readahead_parts
        };
        // (parts between the reader and the pick, pick): the reader with the least ahead of
        // it is served first.
        let mut best: Option<(usize, usize)> = None;
        for at in st.streams.sequential_positions() {
            let first = (at / self.layout.part_size) as usize;
            let limit = best.map_or(reach, |(ahead, _)| ahead).min(reach);
            if let Some(ahead) = (0..limit)
                .take_while(|d| first + d < n)
                .find(|&d| free(st, first + d))
            {
                best = Some((ahead, first + ahead));
            }
        }
        if let Some((_, p)) = best {
            return Some(p);
        }
        if fetch_all {
            return (0..n).find(|&p| free(st, p));
        }
        None
    }

    /// Whether a background worker has anything to do now (it then takes a connection
    /// before it picks the part).
    fn background_work(&self) -> Option<bool> {
        let st = self.state.lock().unwrap();
        if st.stopped || st.fatal.is_some() || st.complete {
            return None; // done for good
        }
        Some(st.paused.is_none() && self.next_background(&st).is_some())
    }

    /// Starts background workers up to `threads` (after verification found parts to fetch
    /// again in a hydration whose workers had finished).
    pub(super) fn restart_workers(self: &Arc<Self>) {
        if self.state.lock().unwrap().stopped {
            return;
        }
        // No more workers than parts: a small object needs no scheduler crowd.
        let wanted = self.cfg.threads.min(self.layout.count()).max(1);
        // Counted when spawned, not when first run: two restarts in a row (before either's
        // workers start) must not both see room and double the workers. Every missing worker
        // is claimed in one step, and the loop never looks again: a worker dropped at once
        // (its runtime shutting down) gives its count back, and taking that again would spin.
        let Ok(running) = self
            .workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < wanted).then_some(wanted)
            })
        else {
            return;
        };
        for _ in running..wanted {
            // Moved into the task: uncounted when it ends, also when aborted before it ran.
            let running = WorkerCount(self.clone());
            self.spawn(async move {
                let inner = running.0.clone();
                let _running = running;
                inner.background_worker().await
            });
        }
    }

    pub(super) async fn background_worker(self: Arc<Self>) {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let next = match self.background_work() {
                None => return,
                Some(false) => None,
                Some(true) => {
                    // A part counts as in flight only once it holds a connection: until then
                    // a reader that wants it fetches it at once on a demand connection, and
                    // no queued background part of any file stands in its way.
                    let connection = self.limiter.acquire(false).await;
                    let mut st = self.state.lock().unwrap();
                    let pick = if st.stopped || st.paused.is_some() {
                        None
                    } else {
                        self.next_background(&st)
                    };
                    if let Some(p) = pick {
                        st.in_flight[p] = true;
                    }
                    pick.map(|p| (p, connection))
                }
            };
            match next {
                Some((p, connection)) => {
                    if let Err(e) = self.fetch_and_record(p, false, Some(connection)).await {
                        let mut st = self.state.lock().unwrap();
                        if st.paused.is_none() {
                            st.paused = Some(e);
                        }
                        drop(st);
                        self.notify();
                    }
                }
                None => {
                    if self.background_work() == Some(true) {
                        continue; // the part it wanted was taken meanwhile; look again
                    }
                    if let Some(claimed) = self.claim_a_tail() {
                        // This worker fetches the claim (its task ends, however it ends,
                        // before the worker looks again): claims never run more GETs than
                        // `threads` workers.
                        let _ = claimed.await;
                        continue;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Nothing left to start while the whole object is being fetched: the unasked second
    /// half of a part in flight (`fetches_in_halves`) is claimed and fetched on a background
    /// connection free now. Without this, the last parts end one by one at one connection's
    /// speed while the others idle (256 MiB on a 24 MB/s-per-connection link: the last half
    /// second at ~30 MB/s). Returns, when a claim was started, what ends with its GET.
    fn claim_a_tail(self: &Arc<Self>) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if !self.cfg.split_tails || !self.fetch_all.load(Ordering::SeqCst) {
            return None;
        }
        let mut st = self.state.lock().unwrap();
        if st.stopped || st.paused.is_some() || st.fatal.is_some() {
            return None;
        }
        let (&part, _) = st
            .segments
            .iter()
            .map(|(p, s)| (p, s.most_unasked()))
            .filter(|(_, unasked)| *unasked >= TAIL_SPLIT_MIN)
            .max_by_key(|(_, unasked)| *unasked)?;
        let connection = self.limiter.try_acquire(false)?;
        let inner = self.clone();
        let (ended, claimed) = tokio::sync::oneshot::channel::<()>();
        let segments = st.segments.get_mut(&part).expect("found just now");
        segments
            .claim_tail(TAIL_SPLIT_MIN, |control| {
                SegmentTask::new(tokio::spawn(async move {
                    let _ended = ended; // dropped when the GET ends, or is aborted
                    inner.fetch_split_segment(part, control, connection).await
                }))
            })
            .then_some(claimed)
    }

    /// Whether a background part starting now is fetched in halves (its second half left for
    /// a connection that will have nothing else to start): the whole object is being fetched
    /// and fewer parts are left to start than workers may fetch at once.
    pub(super) fn fetches_in_halves(&self, range: &Range<u64>) -> bool {
        if !self.cfg.split_tails
            || !self.fetch_all.load(Ordering::SeqCst)
            || range.end - range.start < 2 * TAIL_SPLIT_MIN
        {
            return false;
        }
        let st = self.state.lock().unwrap();
        let unstarted = (0..self.layout.count())
            .filter(|&p| !st.present[p] && !st.in_flight[p])
            .count();
        unstarted < self.cfg.threads.min(self.limiter.window())
    }

    pub(super) fn open_pending_readahead(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(w) = st.pending_readahead.take() {
            st.readahead = w;
            drop(st);
            self.notify();
        }
    }
}

/// Counts a running background worker, also when its task is aborted.
struct WorkerCount(Arc<Inner>);

impl Drop for WorkerCount {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::hydrate::{
        ConnectionLimiter, FetchMode, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
    };
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    /// Readers are 4 MiB apart: farther than reordered reads of one stream ever are.
    const PART: u64 = 256 << 10;
    const PARTS: u64 = 64;
    /// Where four readers start (in parts): each copies its quarter, as ranks do.
    const STARTS: [u64; 4] = [0, 16, 32, 48];

    async fn hydration(
        dir: &std::path::Path,
        mode: FetchMode,
        limiter: std::sync::Arc<ConnectionLimiter>,
    ) -> Hydration {
        let store = MemoryStore::new("mem");
        store.put("b", "k", crate::sample::bytes(9, (PARTS * PART) as usize));
        let cfg = HydrationConfig {
            part_size: PART,
            threads: 8,
            mode,
            readahead_parts: 2,
            ..Default::default()
        };
        start(&store, dir, cfg, limiter).await
    }

    /// Starts the hydration of `b/k` from `store` into `dir`.
    async fn start(
        store: &std::sync::Arc<MemoryStore>,
        dir: &std::path::Path,
        cfg: HydrationConfig,
        limiter: std::sync::Arc<ConnectionLimiter>,
    ) -> Hydration {
        let meta = store.head("b", "k").await.unwrap();
        Hydration::start(
            store.clone(),
            ObjectIdentity::from_meta("b", "k", &meta),
            HydrationFiles {
                data: dir.join("k.data"),
                checkpoint: Some(dir.join("k.ckpt")),
                data_mode: 0o600,
            },
            cfg,
            limiter,
            None,
        )
        .unwrap()
    }

    /// Reads `len` bytes at `at` as the filesystem does: noted, then waited for (bounded).
    async fn read(h: &Hydration, at: u64, len: u64) {
        h.note_read(at..at + len);
        tokio::time::timeout(Duration::from_secs(10), h.wait_range(at..at + len))
            .await
            .expect("a read's bytes arrive")
            .unwrap();
    }

    /// Four readers at four offsets, their reads interleaved: each gets its own readahead
    /// window. Before, only the last window a read had asked for was fetched ahead (the
    /// fourth reader's): the other three met every part they read next missing, unless a
    /// worker happened to catch their window before the next reader's read moved it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sequential_reader_gets_its_own_readahead() {
        let dir = tempfile::tempdir().unwrap();
        let limiter = ConnectionLimiter::new(16, 2);
        let h = hydration(dir.path(), FetchMode::OnDemand, limiter.clone()).await;
        // Every background connection taken until the four have read: what the workers
        // fetch then depends on what the engine knows of the readers, not on how quickly
        // they caught a window before the next read moved it.
        let mut background = Vec::new();
        while let Some(p) = limiter.try_acquire(false) {
            background.push(p);
        }
        for half in 0..2 {
            for s in STARTS {
                read(&h, s * PART + half * PART / 2, PART / 2).await;
            }
        }
        drop(background);
        // Each reader stands at the end of its first part: the next two are its window.
        let windows = || STARTS.iter().map(|s| (s + 1) * PART..(s + 3) * PART);
        let fetched_ahead = tokio::time::timeout(Duration::from_secs(10), async {
            while !windows().all(|w| h.is_present(w)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let present: Vec<u64> = (0..PARTS)
            .filter(|p| h.is_present(p * PART..(p + 1) * PART))
            .collect();
        assert!(
            fetched_ahead.is_ok(),
            "every reader's next two parts are fetched ahead; present: {present:?}"
        );
        // On demand, nothing beyond the readers' parts and windows.
        let expected: Vec<u64> = STARTS.iter().flat_map(|&s| s..s + 3).collect();
        assert_eq!(present, expected);
        h.shutdown().await;
    }

    /// `Auto`: readers that each read sequentially past a readahead window consume the
    /// object, though no two consecutive reads the engine sees are adjacent. Before, the
    /// interleaving broke the one run it tracked, and the object was never fetched whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interleaved_sequential_readers_switch_auto_to_fetching_the_whole_object() {
        let dir = tempfile::tempdir().unwrap();
        let h = hydration(dir.path(), FetchMode::Auto, ConnectionLimiter::new(16, 2)).await;
        let step = PART / 4;
        for i in 0..10 {
            if i == 8 {
                // Each has read exactly one window (2 parts) in sequence: not yet.
                assert!(
                    !h.fetches_all(),
                    "fetching the whole object after one window"
                );
            }
            for s in STARTS {
                read(&h, s * PART + i * step, step).await;
            }
        }
        assert!(h.fetches_all(), "each reader read 2.5 parts in sequence");
        tokio::time::timeout(Duration::from_secs(30), h.wait_complete())
            .await
            .expect("the whole object arrives")
            .unwrap();
        h.shutdown().await;
    }

    /// The end of a whole-object fetch on a slow link: the last parts are fetched in halves,
    /// and a worker with no part left to start claims a second half nobody has asked for
    /// yet, so the last parts do not end one by one at one connection's speed. The bytes and
    /// the object's CRC-64 come out whole, every byte is sent once (a claim never cuts a GET),
    /// and no more GETs are open at once than `threads`, however many connections the
    /// limiter has (`--threads 16` under a 64-connection mount ran 45 GETs at once when an
    /// idle worker could claim again while its last claim streamed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_parts_in_flight_are_split_for_idle_connections() {
        use crate::store::memory::MemoryFaults;
        let dir = tempfile::tempdir().unwrap();
        let part = 4u64 << 20;
        // Five parts, three workers: two parts start when the first three end, and the
        // third worker has nothing left to start.
        let want = crate::sample::bytes(21, (5 * part) as usize);
        let store = MemoryStore::new("mem");
        store.put("b", "k", want.clone());
        // 64 KiB every 5 ms: ~13 MB/s per GET, a part takes ~0.3 s.
        store.set_faults(MemoryFaults {
            chunk: 64 << 10,
            chunk_delay: Duration::from_millis(5),
            ..Default::default()
        });
        let stats = std::sync::Arc::new(crate::hydrate::EngineStats::default());
        let cfg = HydrationConfig {
            part_size: part,
            threads: 3,
            mode: FetchMode::All,
            stats: stats.clone(),
            ..Default::default()
        };
        let h = start(&store, dir.path(), cfg, ConnectionLimiter::new(64, 1)).await;
        tokio::time::timeout(Duration::from_secs(30), h.wait_verified())
            .await
            .expect("fetched within 30 s")
            .expect("whole and its CRC-64 right");
        let claims = stats.part_splits.load(std::sync::atomic::Ordering::SeqCst);
        assert!(claims > 0, "no tail half was claimed while a worker idled");
        let sent = store
            .counters
            .body_bytes
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(sent, 5 * part, "bytes sent for a {} byte object", 5 * part);
        let peak = store
            .counters
            .gets_open_peak
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(peak <= 3, "{peak} GETs open at once with 3 workers");
        assert_eq!(h.read_at(0, want.len()).unwrap(), want);
        h.shutdown().await;
    }

    /// `Auto` with parts larger than the kernel's readahead: a reader that stops after one
    /// kernel readahead window (1 MiB: `head`, a header) is not consuming the object; one
    /// that goes on past 2 MiB is, and the whole object is fetched from then on rather than
    /// after the engine's readahead window (16 MiB at 8 MiB parts: half a second at 3
    /// connections of 24 MB/s, the cost of a cold `cp` of 256 MiB beside parallel GETs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_fetches_whole_once_a_reader_is_past_two_mib_in_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let part = 8u64 << 20;
        let store = MemoryStore::new("mem");
        // More parts than SMALL_OBJECT_PARTS (fetched whole from the start).
        store.put("b", "k", crate::sample::bytes(5, (6 * part) as usize));
        let cfg = HydrationConfig {
            part_size: part,
            threads: 3,
            mode: FetchMode::Auto,
            readahead_parts: 2,
            ..Default::default()
        };
        let h = start(&store, dir.path(), cfg, ConnectionLimiter::new(8, 1)).await;
        let mib = 1u64 << 20;
        for at in (0..mib).step_by(128 << 10) {
            read(&h, at, 128 << 10).await;
        }
        assert!(!h.fetches_all(), "the whole object after 1 MiB read");
        for at in (mib..2 * mib + (128 << 10)).step_by(128 << 10) {
            read(&h, at, 128 << 10).await;
        }
        assert!(
            h.fetches_all(),
            "not the whole object after 2 MiB in sequence"
        );
        h.shutdown().await;
    }
}
