//! A limit on requests in flight across every hydration of a mount, with a reserve that only
//! demand fetches (parts a reader is waiting for) may use: background parts can never take
//! the last connections, so a reader always gets one first.
//!
//! This file owns the permits and their book-keeping: a total semaphore every request takes,
//! and a background share (`window`) that background requests take too. It decides nothing
//! about how wide the share should be: `adapt` (in `adapt.rs`) moves it with `grow` and
//! `shrink`, and callers only `acquire`/`try_acquire` and drop their permits. A shrink that
//! finds its surplus permits in use records them as debt, repaid by the next background
//! permits returned (or cancelled by a `grow`): no task is spawned, so the window holds under
//! any executor, and available + in use − debt == window at every moment (`accounting`).

mod adapt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use adapt::{FLOOR, TICK as ADAPT_TICK};

#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    max: usize,
    background: Arc<Share>,
    /// The largest background share.
    window_max: usize,
    /// Background requests that had to wait for a connection (there was more to fetch).
    waited: AtomicU64,
    /// Answers that said "slow down" (503, SlowDown) since the last look.
    throttled: AtomicU64,
    adaptive: AtomicBool,
    /// The ramp's moves so far (`adapt`): the trajectory a scrape of the metrics can follow.
    steps_up: AtomicU64,
    steps_back: AtomicU64,
    throttle_cuts: AtomicU64,
}

/// How often `adapt` moved the window, by kind of move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RampMoves {
    /// Throughput rose with the last step: more connections.
    pub up: u64,
    /// Two intervals without gain: the last step taken back.
    pub back: u64,
    /// The server asked to slow down (503, 429): the window halved.
    pub throttled: u64,
}

/// The background share: its semaphore and the book that keeps it equal to `window`.
#[derive(Debug)]
struct Share {
    permits: Arc<Semaphore>,
    book: Mutex<Book>,
    /// How long a connection is held, averaged over the last few (µs; 0: none yet).
    hold_us: AtomicU64,
}

/// Changed only under the lock, together with the semaphore's permits, so that
/// `issued - debt == window` holds whenever the lock is free.
#[derive(Debug)]
struct Book {
    window: usize,
    /// Permits the semaphore owns, available or in use.
    issued: usize,
    /// Permits in use that a shrink took back: forgotten, not released, when returned.
    debt: usize,
}

/// A snapshot of the background share's book (for tests and debugging).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    pub window: usize,
    pub debt: usize,
    pub available: usize,
    pub in_use: usize,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct ConnectionPermit {
    _background: Option<BackgroundPermit>,
    _total: OwnedSemaphorePermit,
    share: Arc<Share>,
    since: Instant,
}

/// A background permit, returned through the book (which may keep it to repay a debt), also
/// when the acquire holding it is cancelled before it got its total permit.
#[derive(Debug)]
struct BackgroundPermit {
    permit: Option<OwnedSemaphorePermit>,
    share: Arc<Share>,
}

impl Drop for BackgroundPermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // Under the lock: a grow or shrink never sees the permit half returned.
        let mut book = self.share.book.lock().unwrap();
        if book.debt > 0 {
            book.debt -= 1;
            book.issued -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.share.record_hold(self.since.elapsed());
    }
}

impl Share {
    fn new(window: usize) -> Share {
        Share {
            permits: Arc::new(Semaphore::new(window)),
            book: Mutex::new(Book {
                window,
                issued: window,
                debt: 0,
            }),
            hold_us: AtomicU64::new(0),
        }
    }

    fn record_hold(&self, held: Duration) {
        let us = (held.as_micros() as u64).max(1);
        // An average over about the last 8 requests: recent enough to follow a link that
        // changes, long enough that no single request decides it (and `adapt` bounds what
        // a stalled one can do to its interval).
        let _ = self
            .hold_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 { us } else { avg - avg / 8 + us / 8 })
            });
    }
}

impl ConnectionLimiter {
    /// `max` connections in all, of which `reserved_for_demand` are never used by background
    /// fetches (at least one connection stays open to them).
    pub fn new(max: usize, reserved_for_demand: usize) -> Arc<ConnectionLimiter> {
        let max = max.max(1);
        let background = max.saturating_sub(reserved_for_demand).max(1);
        ConnectionLimiter::with_window(max, background, background)
    }

    /// Like `new`, with the background share starting at `start` connections, at least
    /// `FLOOR` (the SDKs' ParallelThreadCount) where the share allows it; `adapt` moves it up
    /// to `max - reserved_for_demand`.
    pub fn adaptive(
        max: usize,
        reserved_for_demand: usize,
        start: usize,
    ) -> Arc<ConnectionLimiter> {
        let max = max.max(1);
        let ceiling = max.saturating_sub(reserved_for_demand).max(1);
        let limiter = ConnectionLimiter::with_window(max, start.max(FLOOR).min(ceiling), ceiling);
        limiter.adaptive.store(true, Ordering::Relaxed);
        limiter
    }

    /// Made by `adaptive`: its owner runs `adapt` for as long as it is used.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive.load(Ordering::Relaxed)
    }

    fn with_window(max: usize, window: usize, window_max: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            adaptive: AtomicBool::new(false),
            total: Arc::new(Semaphore::new(max)),
            background: Arc::new(Share::new(window)),
            max,
            window_max,
            waited: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            steps_up: AtomicU64::new(0),
            steps_back: AtomicU64::new(0),
            throttle_cuts: AtomicU64::new(0),
        })
    }

    /// The moves `adapt` made so far.
    pub fn moves(&self) -> RampMoves {
        RampMoves {
            up: self.steps_up.load(Ordering::Relaxed),
            back: self.steps_back.load(Ordering::Relaxed),
            throttled: self.throttle_cuts.load(Ordering::Relaxed),
        }
    }

    /// Background connections held now (those a step back still waits for included): what
    /// follows the window when there is enough to fetch.
    pub fn background_in_use(&self) -> usize {
        let book = self.background.book.lock().unwrap();
        book.issued
            .saturating_sub(self.background.permits.available_permits())
    }

    /// Background connections allowed now.
    pub fn window(&self) -> usize {
        self.background.book.lock().unwrap().window
    }

    /// The largest background share (what a fixed limiter always allows).
    pub fn window_max(&self) -> usize {
        self.window_max
    }

    /// Reports an answer that asked to slow down: `adapt` backs off.
    pub fn note_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds up to `by` connections to the background share; how many it added. Debt is
    /// cancelled first: a permit still owed to an earlier shrink is simply kept by its
    /// holder, and only the rest are new permits (which go to waiting fetches at once).
    #[doc(hidden)]
    pub fn grow(&self, by: usize) -> usize {
        let mut book = self.background.book.lock().unwrap();
        let to = (book.window + by).min(self.window_max);
        let added = to.saturating_sub(book.window);
        let cancelled = added.min(book.debt);
        book.debt -= cancelled;
        let fresh = added - cancelled;
        self.background.permits.add_permits(fresh);
        book.issued += fresh;
        book.window += added;
        added
    }

    /// Lowers the background share to `to` (at least 1). Free permits are taken back at
    /// once; those in use become debt, repaid as they are returned.
    #[doc(hidden)]
    pub fn shrink(&self, to: usize) {
        let mut book = self.background.book.lock().unwrap();
        let to = to.max(1);
        if to >= book.window {
            return;
        }
        let mut surplus = book.window - to;
        // One at a time: acquirers outside the lock may take a free permit between a count
        // and a `try_acquire_many`, and one that fails must not leave the rest behind.
        while surplus > 0 {
            match self.background.permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    book.issued -= 1;
                    surplus -= 1;
                }
                Err(_) => break,
            }
        }
        book.debt += surplus;
        book.window = to;
    }

    /// The background share's book now. Panics (in any build) if it does not balance:
    /// available + in use − debt must equal the window.
    #[doc(hidden)]
    pub fn accounting(&self) -> Accounting {
        let book = self.background.book.lock().unwrap();
        let available = self.background.permits.available_permits();
        assert!(
            available <= book.issued,
            "more permits free than issued: {book:?}"
        );
        assert_eq!(
            book.issued - book.debt,
            book.window,
            "background permits out of balance: {book:?}"
        );
        Accounting {
            window: book.window,
            debt: book.debt,
            available,
            in_use: book.issued - available,
        }
    }

    /// How long a connection is held, averaged over the last few requests (None before any
    /// is returned).
    fn typical_hold(&self) -> Option<Duration> {
        match self.background.hold_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.total.available_permits()
    }

    fn permit(
        &self,
        background: Option<BackgroundPermit>,
        total: OwnedSemaphorePermit,
    ) -> ConnectionPermit {
        ConnectionPermit {
            _background: background,
            _total: total,
            share: self.background.clone(),
            since: Instant::now(),
        }
    }

    fn background_permit(&self, permit: OwnedSemaphorePermit) -> BackgroundPermit {
        BackgroundPermit {
            permit: Some(permit),
            share: self.background.clone(),
        }
    }

    /// A connection now, or `None` when none is free: for a task that already holds a
    /// connection of this limiter and must never wait for a second one (a split's GET is
    /// started while its part's stream holds one).
    pub fn try_acquire(&self, demand: bool) -> Option<ConnectionPermit> {
        let background = if demand {
            None
        } else {
            let p = self.background.permits.clone().try_acquire_owned().ok()?;
            Some(self.background_permit(p))
        };
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(self.permit(background, total))
    }

    pub async fn acquire(&self, demand: bool) -> ConnectionPermit {
        let background = if demand {
            None
        } else {
            let permit = match self.background.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.waited.fetch_add(1, Ordering::Relaxed);
                    self.background
                        .permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("limiter semaphores are never closed")
                }
            };
            Some(self.background_permit(permit))
        };
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("limiter semaphores are never closed");
        self.permit(background, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn demand_gets_a_connection_while_background_is_saturated() {
        let lim = ConnectionLimiter::new(4, 1);
        let mut held = Vec::new();
        for _ in 0..3 {
            // Bounded: a limiter that withheld a free permit would hang here.
            let p = tokio::time::timeout(Duration::from_secs(10), lim.acquire(false))
                .await
                .expect("a free background permit is given at once");
            held.push(p);
        }
        // A fourth background fetch must wait...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), lim.acquire(false))
                .await
                .is_err()
        );
        // ...but a demand fetch gets the reserved connection at once.
        let d = tokio::time::timeout(Duration::from_millis(50), lim.acquire(true)).await;
        assert!(d.is_ok());
        assert_eq!(lim.in_flight(), 4);
    }

    /// The collapse of issue "shrink then grow": after many steps back and forward, with
    /// tasks taking and returning background permits throughout, as many background permits
    /// can be held at once as `window()` says — never fewer, never more.
    #[tokio::test]
    async fn background_permits_follow_the_window_through_grow_and_shrink_cycles() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let lim = ConnectionLimiter::adaptive(64, 0, 8);
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let holders: Vec<_> = (0..24)
            .map(|i| {
                let (lim, stop, paused, held) =
                    (lim.clone(), stop.clone(), paused.clone(), held.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if paused.load(Ordering::Relaxed) {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        let p = lim.acquire(false).await;
                        held.fetch_add(1, Ordering::Relaxed);
                        for _ in 0..(i % 4) {
                            tokio::task::yield_now().await;
                        }
                        held.fetch_sub(1, Ordering::Relaxed);
                        drop(p);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for cycle in 0..200 {
            for _ in 0..rng.gen_range(0..6) {
                tokio::task::yield_now().await;
            }
            if rng.gen_bool(0.5) {
                lim.grow(rng.gen_range(1..6));
            } else {
                lim.shrink(lim.window().saturating_sub(rng.gen_range(1..6)));
            }
            lim.accounting(); // balances mid-flight too
            for _ in 0..rng.gen_range(0..6) {
                tokio::task::yield_now().await;
            }
            // Settle: the holders finish what they hold and stop taking more.
            paused.store(true, Ordering::Relaxed);
            let settling = std::time::Instant::now();
            while held.load(Ordering::Relaxed) > 0 {
                // A holder stuck in `acquire` with a permit counted would spin here for ever.
                assert!(
                    settling.elapsed() < Duration::from_secs(30),
                    "cycle {cycle}: the holders never returned their permits"
                );
                tokio::task::yield_now().await;
            }
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let book = lim.accounting();
            assert_eq!(book.debt, 0, "debt repaid once all is returned: {book:?}");
            let all: Vec<_> = std::iter::from_fn(|| lim.try_acquire(false)).collect();
            assert_eq!(
                all.len(),
                lim.window(),
                "background permits that can be held at once, cycle {cycle}"
            );
            drop(all);
            paused.store(false, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        for h in holders {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("a holder ends once told to stop (no acquire waits for ever)")
                .unwrap();
        }
    }

    /// A step back takes effect at once: no permit freed by it can be taken while it is owed.
    #[tokio::test]
    async fn a_shrink_takes_effect_at_once() {
        let lim = ConnectionLimiter::adaptive(64, 0, 8);
        let held: Vec<_> = (0..2).map(|_| lim.try_acquire(false).unwrap()).collect();
        lim.shrink(4);
        let mut more = Vec::new();
        while let Some(p) = lim.try_acquire(false) {
            more.push(p);
        }
        assert_eq!(
            held.len() + more.len(),
            4,
            "background permits held at once"
        );
        drop(held);
        drop(more);
        let all: Vec<_> = std::iter::from_fn(|| lim.try_acquire(false)).collect();
        assert_eq!(all.len(), 4);
    }
}
