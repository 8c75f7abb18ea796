//! Objects larger than the whole cache: ranged reads through memory windows, never kept on
//! disk. A read waits only for its own bytes of the window it falls in (windows stream, as
//! parts of a hydration do); a reader that goes on sequentially gets the next windows fetched
//! in parallel ahead of it; a random reader fetches from its own offset, only what it reads
//! on. Must not touch the cache directory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::hydrate::ObjectIdentity;
use crate::store::{ObjectStore, StoreError, StoreErrorKind};

use super::{FsError, OssFs};

/// Windows fetched ahead of a sequential reader, each on its own connection.
const WINDOWS_AHEAD: u64 = 4;

/// Where a random read's window starts: the page it falls in, so its first byte comes first.
const PAGE: u64 = 4096;

/// Ranged reads through windows of `window` bytes, for objects that do not fit the cache.
/// Memory per handle is bounded by about `2 + WINDOWS_AHEAD` windows: the ones behind and
/// past those are dropped (and their fetches stopped) once no read waits on them.
pub struct DirectReader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) id: ObjectIdentity,
    pub(super) window: u64,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    /// By start offset; windows never overlap.
    by_start: BTreeMap<u64, Arc<Window>>,
    /// Where the last read ended, and whether the reads so far go on sequentially.
    last_end: Option<u64>,
    sequential: bool,
    /// Start of the window the last read fell in.
    last_window: u64,
}

impl Windows {
    /// The window holding byte `at`.
    fn holding(&self, at: u64) -> Option<&Arc<Window>> {
        self.by_start
            .range(..=at)
            .next_back()
            .map(|(_, w)| w)
            .filter(|w| at < w.range.end)
    }
}

/// `[start, end)` of the object as it streams in; readers wait on `progress`.
struct Window {
    range: Range<u64>,
    arrived: Mutex<Vec<u8>>,
    progress: watch::Sender<Progress>,
    fetch: OnceLock<AbortHandle>,
}

#[derive(Clone, Default)]
struct Progress {
    len: u64,
    failed: Option<StoreError>,
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(h) = self.fetch.get() {
            h.abort();
        }
    }
}

/// Marks a window failed if its fetch ends (or is torn down) before the whole range arrived,
/// so no reader waits forever.
struct FetchEnd(Weak<Window>);

impl Drop for FetchEnd {
    fn drop(&mut self) {
        if let Some(w) = self.0.upgrade() {
            let want = w.range.end - w.range.start;
            w.progress.send_if_modified(|p| {
                if p.len < want && p.failed.is_none() {
                    p.failed = Some(StoreError::new(
                        StoreErrorKind::Transient,
                        "the ranged read ended before its bytes arrived",
                    ));
                    return true;
                }
                false
            });
        }
    }
}

/// Streams the window's range into it. Holds the window weakly: a window nobody reads any
/// more is dropped, which aborts this task and closes its connection.
async fn stream_window(store: Arc<dyn ObjectStore>, id: ObjectIdentity, window: Weak<Window>) {
    use futures_util::StreamExt;
    let _end = FetchEnd(window.clone());
    let Some(range) = window.upgrade().map(|w| w.range.clone()) else {
        return;
    };
    let mut body = store.get_range(&id.bucket, &id.key, range, Some(id.etag.clone()));
    while let Some(chunk) = body.next().await {
        let Some(w) = window.upgrade() else { return };
        match chunk {
            Ok(bytes) => {
                let len = {
                    let mut arrived = w.arrived.lock().unwrap();
                    if arrived.capacity() == 0 {
                        arrived.reserve_exact((w.range.end - w.range.start) as usize);
                    }
                    arrived.extend_from_slice(&bytes);
                    arrived.len() as u64
                };
                w.progress.send_modify(|p| p.len = len);
            }
            Err(e) => {
                w.progress.send_modify(|p| p.failed = Some(e));
                return;
            }
        }
    }
}

impl DirectReader {
    pub(super) fn new(store: Arc<dyn ObjectStore>, id: ObjectIdentity, window: u64) -> Self {
        DirectReader {
            store,
            id,
            window,
            state: Default::default(),
        }
    }

    /// Starts a window at `start` (which no window holds) that ends at the next window
    /// boundary, the next window already started, or the object's end: windows never overlap
    /// and the ones ahead of a sequential reader line up.
    fn open_window(&self, st: &mut Windows, start: u64) -> Arc<Window> {
        let next_started = st
            .by_start
            .range(start..)
            .next()
            .map_or(u64::MAX, |(s, _)| *s);
        let end = ((start / self.window + 1) * self.window)
            .min(next_started)
            .min(self.id.size);
        let w = self.start_window(start..end);
        st.by_start.insert(start, w.clone());
        w
    }

    fn start_window(&self, range: Range<u64>) -> Arc<Window> {
        let w = Arc::new(Window {
            range,
            arrived: Mutex::new(Vec::new()),
            progress: watch::channel(Progress::default()).0,
            fetch: OnceLock::new(),
        });
        let task = tokio::spawn(stream_window(
            self.store.clone(),
            self.id.clone(),
            Arc::downgrade(&w),
        ));
        let _ = w.fetch.set(task.abort_handle());
        w
    }

    /// The window holding `at`, started if none does, with the windows ahead of a sequential
    /// reader started too and the far ones dropped.
    fn window_for(&self, at: u64, end: u64) -> Arc<Window> {
        let mut st = self.state.lock().unwrap();
        // Reads arrive a little out of order (the kernel's readahead, several FUSE threads):
        // anything within a window of where the last one ended is near.
        let near = st
            .last_end
            .is_some_and(|last| at + self.window >= last && at <= last + self.window);
        if st.last_end.is_none() {
            st.sequential = at == 0;
        } else if !near {
            st.sequential = false;
        }
        st.last_end = Some(st.last_end.map_or(end, |l| l.max(end)));
        let (low, high) = (
            at.saturating_sub(self.window),
            at + (WINDOWS_AHEAD + 1) * self.window,
        );
        st.by_start
            .retain(|_, w| w.range.end > low && w.range.start < high);
        let current = match st.holding(at) {
            Some(w) => w.clone(),
            None => {
                // From the reader's page (or where the window before it ends, so none overlap).
                let after_previous = st
                    .by_start
                    .range(..=at)
                    .next_back()
                    .map_or(0, |(_, w)| w.range.end);
                self.open_window(&mut st, (at / PAGE * PAGE).max(after_previous))
            }
        };
        // A near read in another window than the last one: the reader crossed a boundary.
        if near && st.last_window != current.range.start {
            st.sequential = true;
        }
        st.last_window = current.range.start;
        if st.sequential {
            let mut next = current.range.end;
            let until = (current.range.end + WINDOWS_AHEAD * self.window).min(self.id.size);
            while next < until {
                next = match st.holding(next) {
                    Some(w) => w.range.end,
                    None => self.open_window(&mut st, next).range.end,
                };
            }
        }
        current
    }

    async fn read(&self, offset: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let w = self.window_for(at, end);
            let upto = end.min(w.range.end);
            let need = upto - w.range.start;
            let progress = w
                .progress
                .subscribe()
                .wait_for(|p| p.len >= need || p.failed.is_some())
                .await
                .map(|p| p.clone())
                .expect("the window holds its sender");
            if progress.len < need {
                // Forget the failed window so the next read asks again.
                let mut st = self.state.lock().unwrap();
                if st
                    .by_start
                    .get(&w.range.start)
                    .is_some_and(|held| Arc::ptr_eq(held, &w))
                {
                    st.by_start.remove(&w.range.start);
                }
                return Err(progress.failed.expect("failed when short"));
            }
            let arrived = w.arrived.lock().unwrap();
            out.extend_from_slice(&arrived[(at - w.range.start) as usize..need as usize]);
            at = upto;
        }
        Ok(out)
    }
}

impl OssFs {
    pub(super) async fn read_direct(
        &self,
        r: &DirectReader,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let end = (offset + size as u64).min(r.id.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
        match r.read(offset, end).await {
            Ok(d) => {
                self.stats
                    .read_bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                Ok(d)
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if e.is_precondition_failed() {
                    tracing::warn!(key = %r.id.key, "the object changed while it was being read");
                    return Err(FsError::ObjectChanged);
                }
                Err(FsError::store(format!("read {}", r.id.key), e))
            }
        }
    }
}
