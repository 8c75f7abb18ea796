//! Objects larger than the whole cache: ranged reads through memory windows, never kept on
//! disk. A reader that goes on sequentially gets the next windows fetched in parallel ahead
//! of it, as a hydration's readahead does; a random reader fetches only what it reads. Must
//! not touch the cache directory.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::hydrate::ObjectIdentity;
use crate::store::{ObjectStore, StoreError, StoreErrorKind};

use super::{FsError, OssFs};

/// Windows fetched ahead of a sequential reader, each on its own connection.
const WINDOWS_AHEAD: usize = 4;

/// Ranged reads through windows of `window` bytes, for objects that do not fit the cache.
/// Memory per handle is bounded by `1 + WINDOWS_AHEAD` windows.
pub struct DirectReader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) id: ObjectIdentity,
    pub(super) window: u64,
    pub(super) state: tokio::sync::Mutex<Windows>,
}

/// The window last read from, and the ones being fetched after it, in order.
#[derive(Default)]
pub struct Windows {
    current: (u64, Bytes),
    ahead: VecDeque<(u64, JoinHandle<Result<Bytes, StoreError>>)>,
}

impl Drop for Windows {
    fn drop(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
    }
}

async fn fetch(
    store: Arc<dyn ObjectStore>,
    id: ObjectIdentity,
    range: Range<u64>,
) -> Result<Bytes, StoreError> {
    use futures_util::StreamExt;
    let mut s = store.get_range(&id.bucket, &id.key, range.clone(), Some(id.etag.clone()));
    let mut data = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
    while let Some(chunk) = s.next().await {
        data.extend_from_slice(&chunk?);
    }
    Ok(data.freeze())
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

    async fn read(&self, offset: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let mut st = self.state.lock().await;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let (start, data) = &st.current;
            if *start <= at && at < start + data.len() as u64 {
                let from = (at - start) as usize;
                let to = ((end - start) as usize).min(data.len());
                out.extend_from_slice(&data[from..to]);
                at = start + to as u64;
                continue;
            }
            // A window fetched ahead holds it: the reader goes on sequentially.
            if let Some(i) = st
                .ahead
                .iter()
                .position(|(s, _)| *s <= at && at < s + self.window)
            {
                for (_, skipped) in st.ahead.drain(..i) {
                    skipped.abort();
                }
                let (s, h) = st.ahead.pop_front().expect("found");
                let data = h.await.map_err(|e| {
                    StoreError::new(StoreErrorKind::Transient, format!("window fetch: {e}"))
                })??;
                st.current = (s, data);
                self.fill_ahead(&mut st);
                continue;
            }
            // Just past the window read last (requests may arrive a little out of order).
            let current_end = st.current.0 + st.current.1.len() as u64;
            let sequential = at >= current_end && at < current_end + self.window && at > 0;
            for (_, h) in st.ahead.drain(..) {
                h.abort();
            }
            let fetch_end = (at + self.window.max(end - at)).min(self.id.size);
            let data = fetch(self.store.clone(), self.id.clone(), at..fetch_end).await?;
            st.current = (at, data);
            if sequential {
                self.fill_ahead(&mut st);
            }
        }
        Ok(out)
    }

    /// Keeps `WINDOWS_AHEAD` windows in flight after the current one.
    fn fill_ahead(&self, st: &mut Windows) {
        let mut next = st
            .ahead
            .back()
            .map(|(s, _)| s + self.window)
            .unwrap_or(st.current.0 + st.current.1.len() as u64);
        while st.ahead.len() < WINDOWS_AHEAD && next < self.id.size {
            let range = next..(next + self.window).min(self.id.size);
            let task = tokio::spawn(fetch(self.store.clone(), self.id.clone(), range));
            st.ahead.push_back((next, task));
            next += self.window;
        }
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
