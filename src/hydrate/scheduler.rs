//! What is fetched next: parts a reader waits for (`want`, `wait_range`) at once on demand
//! connections, then a readahead window after them, then (mode `All`) the rest in order by
//! `threads` background workers. Must not write files or the checkpoint.

use std::ops::Range;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::segments::{SegmentTask, SPLIT_ALIGN};
use super::{HydrateError, Hydration, Inner, State};

/// A demanded part starts at the reader's page when that lies at least `SPLIT_MIN` into the
/// part; nearer its start, one GET from the start is as quick.
const SPLIT_MIN: u64 = 256 << 10;

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
    /// The next part for a background worker: readahead window first, then (mode All) the
    /// lowest missing part. Marks it in flight.
    pub(super) fn next_background(&self, st: &State) -> Option<usize> {
        let free =
            |st: &State, p: usize| !st.present[p] && !st.in_flight[p] && st.failed[p].is_none();
        let mut pick = st.readahead.clone().find(|&p| free(st, p));
        if pick.is_none() && self.fetch_all.load(Ordering::SeqCst) {
            pick = (0..self.layout.count()).find(|&p| free(st, p));
        }
        pick
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
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
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
