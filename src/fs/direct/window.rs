//! One window of a direct reader and the task that fills it: memory from the mount's budget
//! first, then a connection of the mount's limiter (a demand permit when a read waits for the
//! window, a background one while it is only fetched ahead), held while the body streams,
//! and the window's CRC-64 computed as it streams. Must not decide which windows exist (the
//! reader does) nor hold a connection while it waits for anything but the server.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::hydrate::{ConnectionLimiter, ObjectIdentity};
use crate::store::{ObjectStore, StoreError, StoreErrorKind};

use super::budget::{Claim, WindowBudget};
use super::verify::WindowCrcs;

/// What every window fetch of a mount shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) limiter: Arc<ConnectionLimiter>,
    pub(crate) budget: Arc<WindowBudget>,
}

/// What a handle's window fetches share: the object, and where they record their CRC-64s.
pub(super) struct Fetcher {
    pub(super) shared: Arc<Shared>,
    pub(super) id: ObjectIdentity,
    pub(super) crcs: Mutex<WindowCrcs>,
}

/// `[start, end)` of the object as it streams in; readers wait on `progress`.
pub(super) struct Window {
    pub(super) range: Range<u64>,
    pub(super) arrived: Mutex<Vec<u8>>,
    pub(super) progress: watch::Sender<Progress>,
    /// Set once a read waits for this window: its fetch then takes a demand connection.
    demanded: watch::Sender<bool>,
    /// The window's bytes of the memory budget, from when its fetch may start until it is
    /// dropped.
    claim: Mutex<Option<Claim>>,
    /// Reads that wait on (or copy from) this window now. Counted explicitly: the window's
    /// `Arc` count is no measure of it, since the fetch task holds the window for a moment
    /// at each chunk it stores.
    readers: AtomicUsize,
    fetch: OnceLock<AbortHandle>,
}

/// A read's hold on a window: while one exists the reader keeps the window and its memory.
/// Taken under the reader's state lock (`DirectReader::window_for`), so a window a read is
/// about to wait on is never taken for idle.
pub(super) struct Reading(Arc<Window>);

impl Reading {
    pub(super) fn new(w: &Arc<Window>) -> Reading {
        w.readers.fetch_add(1, Ordering::AcqRel);
        Reading(w.clone())
    }
}

impl Deref for Reading {
    type Target = Arc<Window>;
    fn deref(&self) -> &Arc<Window> {
        &self.0
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Default)]
pub(super) struct Progress {
    pub(super) len: u64,
    pub(super) failed: Option<StoreError>,
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(h) = self.fetch.get() {
            h.abort();
        }
    }
}

impl Window {
    /// Starts fetching `range`. `claim` is its memory when there was some free; without it
    /// the fetch waits for memory first (only a window a read waits for is started so).
    pub(super) fn start(
        fetcher: &Arc<Fetcher>,
        range: Range<u64>,
        demanded: bool,
        claim: Option<Claim>,
    ) -> Arc<Window> {
        let (demanded, demand_rx) = watch::channel(demanded);
        let w = Arc::new(Window {
            range,
            arrived: Mutex::new(Vec::new()),
            progress: watch::channel(Progress::default()).0,
            demanded,
            claim: Mutex::new(claim),
            readers: AtomicUsize::new(0),
            fetch: OnceLock::new(),
        });
        let task = tokio::spawn(stream_window(
            fetcher.clone(),
            Arc::downgrade(&w),
            demand_rx,
        ));
        let _ = w.fetch.set(task.abort_handle());
        w
    }

    /// A read waits for this window: a fetch still queued for a background connection moves
    /// to the demand reserve.
    pub(super) fn demand(&self) {
        self.demanded
            .send_if_modified(|d| !std::mem::replace(d, true));
    }

    /// Whether the window got its memory (a window a read waits for may still wait for it).
    pub(super) fn has_memory(&self) -> bool {
        self.claim.lock().unwrap().is_some()
    }

    /// No read waits on the window: the reader may drop it to give its memory back.
    pub(super) fn is_idle(&self) -> bool {
        self.readers.load(Ordering::Acquire) == 0
    }

    pub(super) fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// The window's fetch task has ended (it holds the window, and so its memory, for a
    /// moment after its last bytes arrived).
    #[cfg(test)]
    pub(super) fn fetch_ended(&self) -> bool {
        self.fetch.get().is_none_or(|h| h.is_finished())
    }
}

/// Marks a window failed if its fetch ends (or is torn down) before the whole range arrived,
/// so no reader waits forever.
struct FetchEnd(Weak<Window>);

impl Drop for FetchEnd {
    fn drop(&mut self) {
        if let Some(w) = self.0.upgrade() {
            let want = w.len();
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

enum Connection {
    Got(crate::hydrate::limiter::ConnectionPermit),
    Demanded,
    Gone,
}

/// Streams the window's range into it. Holds the window weakly: a window nobody reads any
/// more is dropped, which aborts this task and closes its connection.
async fn stream_window(
    fetcher: Arc<Fetcher>,
    window: Weak<Window>,
    mut demanded: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let _end = FetchEnd(window.clone());
    let Some((range, has_memory)) = window
        .upgrade()
        .map(|w| (w.range.clone(), w.claim.lock().unwrap().is_some()))
    else {
        return;
    };
    let shared = &fetcher.shared;
    if !has_memory {
        // Memory before a connection: a connection is never held while waiting.
        let claim = shared.budget.claim(range.end - range.start).await;
        let Some(w) = window.upgrade() else { return };
        *w.claim.lock().unwrap() = Some(claim);
    }
    // A background connection until a read waits for the window; then the demand reserve.
    // The background wait is dropped (with whatever it held) before the demand one starts.
    let mut connection = Connection::Demanded;
    if !*demanded.borrow_and_update() {
        connection = tokio::select! {
            p = shared.limiter.acquire(false) => Connection::Got(p),
            d = demanded.wait_for(|d| *d) => if d.is_ok() { Connection::Demanded } else { Connection::Gone },
        };
    }
    let _permit = match connection {
        Connection::Got(p) => p,
        Connection::Demanded => shared.limiter.acquire(true).await,
        Connection::Gone => return,
    };
    let id = &fetcher.id;
    let want = range.end - range.start;
    let mut digest = crate::crc64::Digest::default();
    let mut body =
        shared
            .store
            .get_range(&id.bucket, &id.key, range.clone(), Some(id.etag.clone()));
    while let Some(chunk) = body.next().await {
        let Some(w) = window.upgrade() else { return };
        match chunk {
            Ok(bytes) => {
                digest.update(&bytes);
                let len = {
                    let mut arrived = w.arrived.lock().unwrap();
                    if arrived.capacity() == 0 {
                        arrived.reserve_exact(want as usize);
                    }
                    arrived.extend_from_slice(&bytes);
                    arrived.len() as u64
                };
                if len == want {
                    // Recorded before the last bytes are announced: a read that sees them
                    // sees the window's CRC-64 too.
                    fetcher
                        .crcs
                        .lock()
                        .unwrap()
                        .record(range.clone(), digest.value());
                }
                w.progress.send_modify(|p| p.len = len);
            }
            Err(e) => {
                w.progress.send_modify(|p| p.failed = Some(e));
                return;
            }
        }
    }
}
