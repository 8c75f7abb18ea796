//! How wide the background share should be: `adapt` measures throughput and moves the
//! window with `grow`/`shrink`. It owns only that decision; the permits and their book
//! belong to the limiter, and nothing here touches them directly.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ConnectionLimiter;

impl ConnectionLimiter {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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
}
