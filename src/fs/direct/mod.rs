//! Objects larger than the whole cache: ranged reads through memory windows, never kept on
//! disk, under the same rules as cached reads. A read waits only for its own bytes of the
//! window it falls in (windows stream, as parts of a hydration do), at most the mount's read
//! deadline; a reader that goes on sequentially (again after a jump back to the start) gets
//! the next windows fetched in parallel ahead of it; a random reader fetches from its own
//! offset, only what it reads on. Every window GET holds a connection of the mount's limiter
//! and memory of the mount's window budget (`budget`); a handle that was served every byte
//! gets its last read only after the whole-object CRC-64 check (`verify`). Must not touch the
//! cache directory.

mod budget;
#[cfg(test)]
mod tests;
mod verify;
mod window;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::hydrate::{HydrateError, ObjectIdentity};
use crate::store::StoreError;

use super::{FsError, OssFs};

pub use budget::{WindowBudget, DEFAULT_DIRECT_MEMORY};
pub(crate) use window::Shared;
use window::{Fetcher, Reading, Window};

/// The window size: one ranged GET each.
pub(crate) const WINDOW: u64 = 8 << 20;

/// Windows fetched ahead of a sequential reader, each on its own connection.
const WINDOWS_AHEAD: u64 = 4;

/// Where a random read's window starts: the page it falls in, so its first byte comes first.
const PAGE: u64 = 4096;

/// Ranged reads through windows of `window` bytes, for objects that do not fit the cache.
/// Memory per handle is bounded by about `2 + WINDOWS_AHEAD` windows: the ones behind and
/// past those are dropped (and their fetches stopped) once no read waits on them; memory of
/// all handles together by the mount's `WindowBudget`.
pub struct DirectReader {
    pub(super) id: ObjectIdentity,
    pub(super) window: u64,
    fetcher: Arc<Fetcher>,
    state: Mutex<Windows>,
    check: Mutex<Check>,
}

#[derive(Default)]
struct Windows {
    /// By start offset; windows never overlap.
    by_start: BTreeMap<u64, Arc<Window>>,
    /// Where the reads since the last jump end, and whether they go on sequentially.
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

/// What the handle served, and the outcome of its whole-object check once it served all.
#[derive(Default)]
struct Check {
    served: super::coverage::Coverage,
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The windows fetched for the handle tiled the object and matched its CRC-64.
    Verified,
    /// No CRC-64 to compare with, or the windows did not tile the object (random access).
    Unverified,
    Mismatch {
        expected: u64,
        actual: u64,
    },
}

impl DirectReader {
    pub(crate) fn new(shared: Arc<Shared>, id: ObjectIdentity, window: u64) -> Self {
        DirectReader {
            fetcher: Arc::new(Fetcher {
                shared,
                id: id.clone(),
                crcs: Default::default(),
            }),
            id,
            window,
            state: Default::default(),
            check: Default::default(),
        }
    }

    /// Starts a window at `start` (which no window holds) that ends at the next window
    /// boundary, the next window already started, or the object's end: windows never overlap
    /// and the ones ahead of a sequential reader line up. A window fetched ahead starts only
    /// if the budget has its memory now (`None` otherwise); one a read waits for (`demand`)
    /// always starts, and waits for memory if there is none, after this handle gave back
    /// the memory of its windows no read waits on: a reader never waits for memory while
    /// it holds some it could give back.
    fn open_window(&self, st: &mut Windows, start: u64, demand: bool) -> Option<Arc<Window>> {
        let next_started = st
            .by_start
            .range(start..)
            .next()
            .map_or(u64::MAX, |(s, _)| *s);
        let end = ((start / self.window + 1) * self.window)
            .min(next_started)
            .min(self.id.size);
        let budget = &self.fetcher.shared.budget;
        let mut claim = budget.try_claim(end - start);
        if claim.is_none() {
            if !demand {
                return None;
            }
            st.by_start.retain(|_, w| !w.is_idle());
            claim = budget.try_claim(end - start);
        }
        let w = Window::start(&self.fetcher, start..end, demand, claim);
        st.by_start.insert(start, w.clone());
        Some(w)
    }

    /// The window holding `at`, started if none does, with the windows ahead of a sequential
    /// reader started too (as far as the budget allows) and the far ones dropped.
    fn window_for(&self, at: u64, end: u64) -> Reading {
        let mut st = self.state.lock().unwrap();
        // Reads arrive a little out of order (the kernel's readahead, several FUSE threads):
        // anything within a window of where the last one ended is near.
        let near = st
            .last_end
            .is_some_and(|last| at + self.window >= last && at <= last + self.window);
        if near {
            st.last_end = st.last_end.map(|l| l.max(end));
        } else {
            // A first read, or a jump: the reads go on from here. One from the start is a new
            // sequential pass (the second pass over a handle gets its readahead again); one
            // elsewhere is random until it crosses a window boundary.
            st.sequential = at == 0;
            st.last_end = Some(end);
        }
        let (low, high) = (
            at.saturating_sub(self.window),
            at + (WINDOWS_AHEAD + 1) * self.window,
        );
        st.by_start
            .retain(|_, w| w.range.end > low && w.range.start < high);
        let current = Reading::new(&match st.holding(at) {
            Some(w) => w.clone(),
            None => {
                // From the reader's page (or where the window before it ends, so none overlap).
                let after_previous = st
                    .by_start
                    .range(..=at)
                    .next_back()
                    .map_or(0, |(_, w)| w.range.end);
                self.open_window(&mut st, (at / PAGE * PAGE).max(after_previous), true)
                    .expect("a window a read waits for always starts")
            }
        });
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
                    None => match self.open_window(&mut st, next, false) {
                        Some(w) => w.range.end,
                        None => break, // no memory to spare: readahead waits for the next read
                    },
                };
            }
        }
        current
    }

    async fn read(&self, offset: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let read = self.read_window(at, end, &mut out).await;
            // This read is done with its window: if another window of the handle waits for
            // memory, the ones no read waits on give theirs back now, not at the next read.
            self.give_back_if_waiting();
            at = read?;
        }
        Ok(out)
    }

    /// Appends the bytes from `at` to `end` or the end of the window holding `at`, whichever
    /// comes first; returns where it stopped.
    async fn read_window(&self, at: u64, end: u64, out: &mut Vec<u8>) -> Result<u64, StoreError> {
        let w = self.window_for(at, end);
        w.demand();
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
        Ok(upto)
    }

    /// When a window of this handle waits for memory, the windows no read waits on give
    /// theirs back: a reader never waits for memory while it holds some it could give back
    /// (two readers each holding one idle window and waiting for a second would otherwise
    /// wait for each other).
    fn give_back_if_waiting(&self) {
        let mut st = self.state.lock().unwrap();
        if st.by_start.values().any(|w| !w.has_memory()) {
            st.by_start.retain(|_, w| !w.is_idle());
        }
    }

    /// Records `range` as served. When the handle has now been served every byte of the
    /// object, checks the whole-object CRC-64 (once) and returns the verdict; a handle that
    /// failed the check keeps failing.
    fn served(&self, range: Range<u64>) -> Option<Verdict> {
        let mut c = self.check.lock().unwrap();
        if let Some(v @ Verdict::Mismatch { .. }) = c.verdict {
            return Some(v);
        }
        c.served.insert(range);
        if c.verdict.is_some() || !c.served.is_whole(self.id.size) {
            return None;
        }
        let combined = self.fetcher.crcs.lock().unwrap().combined(self.id.size);
        let v = match (self.id.crc64, combined) {
            (Some(expected), Some(actual)) if expected != actual => {
                Verdict::Mismatch { expected, actual }
            }
            (Some(_), Some(_)) => Verdict::Verified,
            _ => Verdict::Unverified,
        };
        c.verdict = Some(v);
        Some(v)
    }

    /// The check failed earlier: nothing more is served from this handle.
    fn failed_check(&self) -> Option<Verdict> {
        self.check
            .lock()
            .unwrap()
            .verdict
            .filter(|v| matches!(v, Verdict::Mismatch { .. }))
    }
}

impl OssFs {
    /// Reads `[offset, offset + size)` within the read deadline; the read that completes the
    /// handle's coverage of the object returns only after the whole-object CRC-64 check.
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
        let outcome = self.read_direct_checked(r, offset, end).await;
        match &outcome {
            Ok(d) => self
                .stats
                .read_bytes
                .fetch_add(d.len() as u64, Ordering::Relaxed),
            Err(_) => self.stats.read_errors.fetch_add(1, Ordering::Relaxed),
        };
        outcome
    }

    async fn read_direct_checked(
        &self,
        r: &DirectReader,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, FsError> {
        if let Some(v) = r.failed_check() {
            return Err(mismatch_error(r, v));
        }
        let deadline = self.cfg.read_deadline;
        let data = match tokio::time::timeout(deadline, r.read(offset, end)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) if e.is_precondition_failed() => {
                tracing::warn!(key = %r.id.key, "the object changed while it was being read");
                return Err(FsError::ObjectChanged);
            }
            Ok(Err(e)) => return Err(FsError::store(format!("read {}", r.id.key), e)),
            Err(_) => {
                tracing::warn!(key = %r.id.key, offset, "read failed: no bytes within the read deadline ({deadline:?}); the server is slow or unreachable");
                return Err(FsError::Deadline(deadline));
            }
        };
        match r.served(offset..end) {
            Some(v @ Verdict::Mismatch { expected, actual }) => {
                tracing::error!(
                    bucket = %r.id.bucket,
                    key = %r.id.key,
                    expected,
                    actual,
                    "CRC-64 mismatch: the server announced {expected}, the bytes read directly give {actual}; the read fails"
                );
                self.cache
                    .engine_stats()
                    .crc_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                // The next open asks the server again rather than trusting this version, and
                // drops the pages the kernel kept of it.
                self.ns.lock().unwrap().forget_identity(&r.id.key, true);
                Err(mismatch_error(r, v))
            }
            Some(Verdict::Unverified) => {
                tracing::debug!(key = %r.id.key, "read whole without a CRC-64 to compare, or by windows that do not tile it: unverified");
                Ok(data)
            }
            Some(Verdict::Verified) | None => Ok(data),
        }
    }
}

fn mismatch_error(r: &DirectReader, v: Verdict) -> FsError {
    let Verdict::Mismatch { expected, actual } = v else {
        unreachable!("only a mismatch is an error")
    };
    FsError::Hydrate(Arc::new(HydrateError::ChecksumMismatch {
        bucket: r.id.bucket.clone(),
        key: r.id.key.clone(),
        expected,
        actual,
    }))
}
