//! A limit on requests in flight across every hydration of a mount, with a reserve that only
//! demand fetches (parts a reader is waiting for) may use: background parts can never take
//! the last connections, so a reader always gets one first.
//!
//! The background share is fixed, or adaptive (`adaptive` + `adapt`): it starts at the
//! SDKs' ParallelThreadCount and adds a connection while throughput keeps rising by more than
//! the noise, steps back when a step brought nothing, and halves on throttling — so the
//! default fills a link whatever its width and latency, without a flag.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    background: Arc<Semaphore>,
    max: usize,
    /// Background connections allowed now, and at most.
    window: AtomicUsize,
    window_max: usize,
    /// Background requests that had to wait for a connection (there was more to fetch).
    waited: AtomicU64,
    /// Answers that said "slow down" (503, SlowDown) since the last look.
    throttled: AtomicU64,
    adaptive: AtomicBool,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    _background: Option<OwnedSemaphorePermit>,
}

impl ConnectionLimiter {
    /// `max` connections in all, of which `reserved_for_demand` are never used by background
    /// fetches (at least one connection stays open to them).
    pub fn new(max: usize, reserved_for_demand: usize) -> Arc<ConnectionLimiter> {
        let max = max.max(1);
        let background = max.saturating_sub(reserved_for_demand).max(1);
        ConnectionLimiter::with_window(max, background, background)
    }

    /// Like `new`, with the background share starting at `start` connections; `adapt` moves
    /// it between 1 and `max - reserved_for_demand`.
    pub fn adaptive(
        max: usize,
        reserved_for_demand: usize,
        start: usize,
    ) -> Arc<ConnectionLimiter> {
        let max = max.max(1);
        let ceiling = max.saturating_sub(reserved_for_demand).max(1);
        let limiter = ConnectionLimiter::with_window(max, start.clamp(1, ceiling), ceiling);
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
            background: Arc::new(Semaphore::new(window)),
            max,
            window: AtomicUsize::new(window),
            window_max,
            waited: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Background connections allowed now.
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    /// The largest background share (what a fixed limiter always allows).
    pub fn window_max(&self) -> usize {
        self.window_max
    }

    /// Reports an answer that asked to slow down: `adapt` backs off.
    pub fn note_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds up to `by` connections; how many it added.
    fn grow(&self, by: usize) -> usize {
        let w = self.window.load(Ordering::Relaxed);
        let to = (w + by).min(self.window_max);
        if to > w {
            self.window.store(to, Ordering::Relaxed);
            self.background.add_permits(to - w);
        }
        to - w
    }

    fn shrink(&self, to: usize) {
        let w = self.window.load(Ordering::Relaxed);
        let to = to.max(1);
        if to >= w {
            return;
        }
        self.window.store(to, Ordering::Relaxed);
        // A permit in use is taken back once its request ends.
        let background = self.background.clone();
        tokio::spawn(async move {
            if let Ok(p) = background.acquire_many_owned((w - to) as u32).await {
                p.forget();
            }
        });
    }

    /// Moves the background share to follow throughput (`bytes()`: body bytes received so
    /// far), every `tick`, for as long as it runs (a mount runs it until it ends). Only a
    /// tick in which background fetches queued for a connection teaches anything: then
    /// more connections are tried (1, then 2, then 4…) while each step raises throughput by
    /// more than 5%; a step that did not is taken back and the window held for 20 ticks
    /// before trying again; throttling halves it.
    pub async fn adapt(self: Arc<Self>, tick: Duration, bytes: impl Fn() -> u64) {
        let mut last = (Instant::now(), bytes());
        // The rate before the last step, and that step's size.
        let mut before_step: Option<(f64, usize)> = None;
        let mut step = 1;
        let mut settle = 0u32;
        let mut hold = 0u32;
        loop {
            tokio::time::sleep(tick).await;
            let now = (Instant::now(), bytes());
            let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
            last = now;
            let queued = self.waited.swap(0, Ordering::Relaxed) > 0;
            if self.throttled.swap(0, Ordering::Relaxed) > 0 {
                let to = self.window() / 2;
                tracing::info!(
                    connections = to.max(1),
                    "the server asks to slow down: fewer connections"
                );
                self.shrink(to);
                (before_step, step, hold) = (None, 1, 20);
                continue;
            }
            if settle > 0 {
                settle -= 1; // a new window's first tick mixes old and new: not measured
                continue;
            }
            if !queued {
                before_step = None; // no backlog: the window is not what limits
                continue;
            }
            if hold > 0 {
                hold -= 1;
                continue;
            }
            match before_step {
                Some((prev, last_step)) if rate <= prev * 1.05 => {
                    self.shrink(self.window() - last_step);
                    tracing::debug!(
                        connections = self.window(),
                        rate,
                        "more connections brought nothing: stepping back"
                    );
                    (before_step, step, hold) = (None, 1, 20);
                }
                _ => {
                    // Steps double while they pay (1, 2, 4…): a wide link is reached in a
                    // few ticks, and a step too far is taken back whole.
                    let added = self.grow(step);
                    if added > 0 {
                        tracing::debug!(
                            connections = self.window(),
                            rate,
                            "throughput rose: more connections"
                        );
                        (before_step, settle) = (Some((rate, added)), 1);
                        step *= 2;
                    }
                }
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.total.available_permits()
    }

    /// A connection now, or `None` when none is free: for a task that already holds a
    /// connection of this limiter and must never wait for a second one (a split's GET is
    /// started while its part's stream holds one).
    pub fn try_acquire(&self, demand: bool) -> Option<ConnectionPermit> {
        let background = if demand {
            None
        } else {
            Some(self.background.clone().try_acquire_owned().ok()?)
        };
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(ConnectionPermit {
            _total: total,
            _background: background,
        })
    }

    pub async fn acquire(&self, demand: bool) -> ConnectionPermit {
        let background = if demand {
            None
        } else {
            let permit = match self.background.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.waited.fetch_add(1, Ordering::Relaxed);
                    self.background
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("limiter semaphores are never closed")
                }
            };
            Some(permit)
        };
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("limiter semaphores are never closed");
        ConnectionPermit {
            _total: total,
            _background: background,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adaptive_concurrency_climbs_to_the_links_width_and_backs_off_when_throttled() {
        // A link that carries 10 MB/s per connection up to 6 connections: a seventh adds
        // nothing. Bytes are the exact integral of that rate over the windows in force.
        let lim = ConnectionLimiter::adaptive(16, 4, 3);
        let rate = |w: usize| w.min(6) as f64 * 10e6;
        let clock = Arc::new(Mutex::new((Instant::now(), 0f64)));
        let (l, c) = (lim.clone(), clock.clone());
        let bytes = move || {
            let mut c = c.lock().unwrap();
            let now = Instant::now();
            c.1 += (now - c.0).as_secs_f64() * rate(l.window());
            c.0 = now;
            c.1 as u64
        };
        // Background work always queues for a connection.
        let l = lim.clone();
        let backlog = tokio::spawn(async move {
            loop {
                l.waited.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let adapt = tokio::spawn(lim.clone().adapt(Duration::from_millis(40), bytes));
        // Bounded waits: a slow machine stretches the ticks, not the sequence.
        let mut seen = vec![lim.window()];
        let started = Instant::now();
        while !(seen.contains(&10) && lim.window() == 6) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never settled at the link's width: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            if seen.last() != Some(&lim.window()) {
                seen.push(lim.window());
            }
        }
        assert_eq!(
            seen,
            vec![3, 4, 6, 10, 6],
            "steps double while they pay; the last is undone"
        );
        lim.note_throttled();
        let started = Instant::now();
        while lim.window() != 3 {
            assert!(started.elapsed() < Duration::from_secs(5), "no back-off");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Held there, not climbing straight back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lim.window(), 3, "held after throttling");
        adapt.abort();
        backlog.abort();
    }

    #[tokio::test]
    async fn demand_gets_a_connection_while_background_is_saturated() {
        let lim = ConnectionLimiter::new(4, 1);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(lim.acquire(false).await);
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
}
