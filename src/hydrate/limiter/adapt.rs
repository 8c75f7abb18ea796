//! How wide the background share should be: `adapt` measures throughput and moves the
//! window with `grow`/`shrink`. It owns only that decision (the `Ramp`); the permits and
//! their book belong to the limiter, and nothing here touches them directly.
//!
//! The ramp is TCP's slow start: from at least `FLOOR` connections the window doubles per
//! measurement interval while throughput grows; a step is taken back only after two
//! consecutive intervals without gain (one interval can be noise), and never below the
//! window it came from, so a link that does not throttle never drives it under `FLOOR`.
//! Only 503/429 answers ("slow down") halve it, below `FLOOR` if need be.
//!
//! How long an interval is decides how fast the ramp is and how much noise it sees: the
//! first step needs no rate (there is nothing to compare it with), so it is taken at the
//! first tick in which background fetches queue; while doubling, an interval lasts one
//! typical request (every connection has run about one whole request, and a wrong "gain"
//! only doubles once more); once near the link's width, two (a step back must outlast noise).
//! An interval teaches something when background fetches queued in it or every connection
//! of the window was busy (the top step has no one queueing behind it, and is judged too); a
//! step to the largest window that paid stands, rather than being compared for ever with
//! one noisy sample of the window below.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ConnectionLimiter;

/// The SDKs' ParallelThreadCount: an adaptive limiter starts there at least, and only
/// throttling takes it lower.
pub const FLOOR: usize = 3;
/// How often `adapt` looks, for its callers: a backlog's first step and a "slow down" are
/// answered within it; rates are judged over `MIN_INTERVAL_TICKS` of them at least.
pub const TICK: Duration = Duration::from_millis(50);
/// Throughput must rise by more than this to count as a gain (measurement noise).
const GAIN: f64 = 1.05;
/// Consecutive intervals without gain before a step is taken back.
const MISSES: u32 = 2;
/// Intervals the window is left alone after throttling.
const HOLD: u32 = 20;
/// Intervals the window is left alone after a step back for want of gain (not throttling):
/// the rate it was judged against is one noisy interval's, often inflated by the readers'
/// own demand fetches (four mmap readers: 269 MB/s at 6 connections, 247 at 12, and 5 s
/// held at 6 made their load 1.5 times as long as with 12 fixed), so it is re-probed soon.
const HOLD_AFTER_NO_GAIN: u32 = 4;
/// The longest measurement interval: a stalled request must not freeze adaptation.
const MAX_INTERVAL: Duration = Duration::from_secs(8);
/// The shortest measurement interval, in ticks: the ramp looks often (a backlog or a
/// "slow down" is answered within a tick) but judges a rate over no less than this.
const MIN_INTERVAL_TICKS: u32 = 5;

/// What the last measurements decided.
#[derive(Debug)]
struct Ramp {
    floor: usize,
    ceiling: usize,
    /// The rate at the window before the last step up, and that window.
    before: Option<(f64, usize)>,
    /// Doubling the window (until the first step back), else adding `step`.
    slow_start: bool,
    step: usize,
    misses: u32,
    hold: u32,
}

/// A change of window, with why.
#[derive(Debug, PartialEq)]
enum Move {
    Up { to: usize, base: Option<f64> },
    Back { to: usize, base: f64 },
}

impl Ramp {
    fn new(floor: usize, ceiling: usize) -> Ramp {
        Ramp {
            floor,
            ceiling,
            before: None,
            slow_start: true,
            step: 1,
            misses: 0,
            hold: 0,
        }
    }

    /// One measurement interval at `window`: `rate` bytes/s, `queued` if background
    /// fetches waited for a connection in it.
    fn measured(&mut self, window: usize, rate: f64, queued: bool) -> Option<Move> {
        if self.hold > 0 {
            self.hold -= 1;
            return None;
        }
        if !queued {
            // No backlog: the window is not what limits, so its rate says nothing of it.
            (self.before, self.misses) = (None, 0);
            return None;
        }
        match self.before {
            Some((base, from)) if rate <= base * GAIN => {
                self.misses += 1;
                if self.misses < MISSES {
                    return None;
                }
                // Steps after this one are cautious: the link's width is near.
                (self.before, self.misses, self.hold) = (None, 0, HOLD_AFTER_NO_GAIN);
                (self.slow_start, self.step) = (false, 1);
                Some(Move::Back {
                    to: from.max(self.floor),
                    base,
                })
            }
            base => {
                self.misses = 0;
                if window >= self.ceiling {
                    // The top step paid: it stands. Judged again and again against one
                    // noisy sample of the window below, it would sooner or later meet two
                    // unlucky intervals in a row and be taken back for nothing.
                    self.before = None;
                    return None;
                }
                let step = if self.slow_start { window } else { self.step };
                if !self.slow_start {
                    self.step *= 2; // re-probing: 1, 2, 4… while each step pays
                }
                self.before = Some((rate, window));
                Some(Move::Up {
                    to: (window + step).min(self.ceiling),
                    base: base.map(|b| b.0),
                })
            }
        }
    }

    fn throttled(&mut self) {
        (self.before, self.misses, self.hold) = (None, 0, HOLD);
        (self.slow_start, self.step) = (false, 1);
    }

    /// Whether the next move waits for a whole measurement interval: only a comparison with
    /// the rate at an earlier window (or a hold after a step back) does.
    fn judging(&self) -> bool {
        self.before.is_some() || self.hold > 0
    }

    /// Typical requests per measurement interval (see the module's note).
    fn requests_per_interval(&self) -> u32 {
        if self.slow_start {
            1
        } else {
            2
        }
    }
}

impl ConnectionLimiter {
    /// Every background connection the window allows is held now.
    fn background_saturated(&self) -> bool {
        let window = self.window();
        self.background_in_use() >= window
    }

    /// The measurement interval: the larger of `MIN_INTERVAL_TICKS` ticks and `requests`
    /// times the typical time a connection is held. Bytes of one request arrive in bursts,
    /// and a new connection first pays a round trip and TCP's own slow start; over whole
    /// request durations every connection of the window has run about one whole request, so
    /// the rate reflects the window, not which requests happened to start or end in it.
    fn interval(&self, tick: Duration, requests: u32) -> Duration {
        let hold = self.typical_hold().unwrap_or_default();
        (tick * MIN_INTERVAL_TICKS).max((hold * requests).min(MAX_INTERVAL))
    }

    /// Moves the background share to follow throughput (`bytes()`: body bytes received so
    /// far), for as long as it runs (a mount runs it until it ends). Throttling is checked
    /// every `tick` and answered at once; throughput is judged per measurement interval
    /// (`interval`), and only an interval in which background fetches queued for a
    /// connection teaches anything.
    pub async fn adapt(self: Arc<Self>, tick: Duration, bytes: impl Fn() -> u64) {
        let mut ramp = Ramp::new(FLOOR.min(self.window_max), self.window_max);
        let mut start = (Instant::now(), bytes());
        let mut queued = false;
        loop {
            tokio::time::sleep(tick).await;
            // A backlog, or every connection of the window busy: with as many workers as
            // the largest window (a mount's, a download's), nobody queues at the top step,
            // which must be judged all the same.
            queued |= self.waited.swap(0, Ordering::Relaxed) > 0 || self.background_saturated();
            if self.throttled.swap(0, Ordering::Relaxed) > 0 {
                let from = self.window();
                self.shrink(from / 2);
                self.throttle_cuts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    from,
                    to = self.window(),
                    "the server asks to slow down: fewer connections"
                );
                ramp.throttled();
                (start, queued) = ((Instant::now(), bytes()), false);
                continue;
            }
            let interval = if ramp.judging() {
                self.interval(tick, ramp.requests_per_interval())
            } else {
                tick
            };
            if start.0.elapsed() < interval {
                continue;
            }
            let now = (Instant::now(), bytes());
            let seconds = (now.0 - start.0).as_secs_f64().max(1e-3);
            let rate = now.1.saturating_sub(start.1) as f64 / seconds;
            start = now;
            let from = self.window();
            let was_queued = std::mem::take(&mut queued);
            let decided = ramp.measured(from, rate, was_queued);
            tracing::trace!(
                window = from,
                seconds,
                mb_per_s = megabytes(rate),
                queued = was_queued,
                "measured"
            );
            match decided {
                None => {}
                Some(Move::Up { to, base }) => {
                    self.grow(to - from);
                    self.steps_up.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        from,
                        to,
                        mb_per_s = megabytes(rate),
                        before_mb_per_s = base.map(megabytes),
                        seconds,
                        "throughput rose: more connections"
                    );
                }
                Some(Move::Back { to, base }) => {
                    self.shrink(to);
                    self.steps_back.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        from,
                        to,
                        mb_per_s = megabytes(rate),
                        before_mb_per_s = megabytes(base),
                        seconds,
                        "two intervals without gain: stepping back"
                    );
                }
            }
        }
    }
}

/// Bytes/s as MB/s, rounded to a tenth: what a log line needs.
fn megabytes(rate: f64) -> f64 {
    (rate / 1e5).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `adapt` against a simulated link: `rate(window)` bytes/s, times `noise()` redrawn
    /// at every look, integrated exactly over the windows in force. Background work always
    /// queues for a connection. Returns the limiter and the tasks to abort.
    fn simulate(
        lim: &Arc<ConnectionLimiter>,
        rate: impl Fn(usize) -> f64 + Send + 'static,
        noise: impl FnMut() -> f64 + Send + 'static,
        tick: Duration,
    ) -> [tokio::task::JoinHandle<()>; 2] {
        let clock = Arc::new(Mutex::new((Instant::now(), 0f64, noise)));
        let l = lim.clone();
        let bytes = move || {
            let mut c = clock.lock().unwrap();
            let now = Instant::now();
            let factor = (c.2)();
            c.1 += (now - c.0).as_secs_f64() * rate(l.window()) * factor;
            c.0 = now;
            c.1 as u64
        };
        let l = lim.clone();
        let backlog = tokio::spawn(async move {
            loop {
                l.waited.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        [tokio::spawn(lim.clone().adapt(tick, bytes)), backlog]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adaptive_concurrency_climbs_to_the_links_width_and_backs_off_when_throttled() {
        // A link that carries 10 MB/s per connection up to 6 connections: a seventh adds
        // nothing.
        let lim = ConnectionLimiter::adaptive(16, 4, 3);
        let tasks = simulate(
            &lim,
            |w| w.min(6) as f64 * 10e6,
            || 1.0,
            Duration::from_millis(40),
        );
        // Bounded waits: a slow machine stretches the intervals, not the sequence.
        let mut seen = vec![lim.window()];
        let started = Instant::now();
        while !(seen.contains(&12) && lim.window() == 6) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never settled at the link's width: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            if seen.last() != Some(&lim.window()) {
                seen.push(lim.window());
            }
        }
        assert_eq!(
            seen,
            vec![3, 6, 12, 6],
            "the window doubles while throughput grows; the step too far is undone whole"
        );
        lim.note_throttled();
        let started = Instant::now();
        while lim.window() != 3 {
            assert!(started.elapsed() < Duration::from_secs(30), "no back-off");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Held there, not climbing straight back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lim.window(), 3, "held after throttling");
        tasks.iter().for_each(|t| t.abort());
    }

    /// A noisy link (each look at the byte count off by up to ±30%) that carries 10 MB/s per
    /// connection up to 6: noise must neither drive the window under `FLOOR` nor keep it
    /// from the link's width. Started at 1 (as a caller may ask), it starts at `FLOOR`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_noisy_link_never_drives_the_window_under_the_floor_and_it_reaches_the_width() {
        use rand::{Rng, SeedableRng};
        let lim = ConnectionLimiter::adaptive(32, 8, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(30);
        let tasks = simulate(
            &lim,
            |w| w.min(6) as f64 * 10e6,
            move || rng.gen_range(0.7..1.3),
            Duration::from_millis(20),
        );
        let mut seen = vec![lim.window()];
        let started = Instant::now();
        let mut reached = None;
        // Watched for 3 s at least, and (a slow machine stretches the ticks) until the width
        // is reached, within 30 s.
        while started.elapsed() < Duration::from_secs(3)
            || (reached.is_none() && started.elapsed() < Duration::from_secs(30))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let w = lim.window();
            if seen.last() != Some(&w) {
                seen.push(w);
            }
            if w >= 6 && reached.is_none() {
                reached = Some(seen.len());
            }
        }
        tasks.iter().for_each(|t| t.abort());
        assert!(
            seen.iter().all(|&w| w >= FLOOR),
            "under the floor: {seen:?}"
        );
        let reached = reached.unwrap_or_else(|| panic!("never reached the width: {seen:?}"));
        assert!(
            seen[reached..].iter().all(|&w| w >= 6),
            "fell under the link's width once there: {seen:?}"
        );
    }

    #[test]
    fn two_intervals_without_gain_step_back_one_does_not() {
        let mut r = Ramp::new(3, 24);
        assert_eq!(
            r.measured(3, 30.0, true),
            Some(Move::Up { to: 6, base: None })
        );
        assert_eq!(
            r.measured(6, 60.0, true),
            Some(Move::Up {
                to: 12,
                base: Some(30.0)
            })
        );
        assert_eq!(r.measured(12, 55.0, true), None, "one miss is noise");
        assert_eq!(
            r.measured(12, 90.0, true),
            Some(Move::Up {
                to: 24,
                base: Some(60.0)
            })
        );
        assert_eq!(r.measured(24, 80.0, true), None);
        assert_eq!(
            r.measured(24, 85.0, true),
            Some(Move::Back { to: 12, base: 90.0 })
        );
        // Held, then re-probed by one.
        // Held briefly (the rate it lost to may have been one inflated interval), then
        // probed again one connection at a time.
        for _ in 0..HOLD_AFTER_NO_GAIN {
            assert_eq!(r.measured(12, 90.0, true), None);
        }
        assert_eq!(
            r.measured(12, 90.0, true),
            Some(Move::Up { to: 13, base: None })
        );
    }

    /// Feeds `Ramp` one interval after another on a simulated link (`rate(window)`, times a
    /// noise factor drawn per interval), applying its moves as `adapt` would; returns the
    /// window at each interval.
    fn trajectory(
        floor: usize,
        ceiling: usize,
        intervals: usize,
        seed: u64,
        noise: f64,
        rate: impl Fn(usize) -> f64,
    ) -> Vec<usize> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ramp = Ramp::new(floor, ceiling);
        let mut window = floor;
        let mut seen = Vec::with_capacity(intervals);
        for _ in 0..intervals {
            let measured = rate(window) * rng.gen_range(1.0 - noise..1.0 + noise);
            match ramp.measured(window, measured, true) {
                Some(Move::Up { to, .. }) | Some(Move::Back { to, .. }) => window = to,
                None => {}
            }
            assert!((1..=ceiling).contains(&window));
            seen.push(window);
        }
        seen
    }

    /// Links that never throttle, of every width (even narrower than `FLOOR`, where more
    /// connections add nothing at all), with noise up to ±40% per interval: whatever the
    /// rates say, the window never goes under `FLOOR`.
    #[test]
    fn a_link_that_does_not_throttle_never_takes_the_window_under_the_floor() {
        for width in 1..=16 {
            for seed in 0..20 {
                let seen = trajectory(FLOOR, 12, 2000, seed, 0.4, |w| w.min(width) as f64 * 24e6);
                let lowest = *seen.iter().min().unwrap();
                assert!(
                    lowest >= FLOOR,
                    "width {width}, seed {seed}: window {lowest} under the floor"
                );
            }
        }
    }

    /// A wide link (8 connections' worth, 24 MB/s each) measured with ±20% noise per
    /// interval: the ramp gets to the width within a few intervals and spends nearly all of
    /// its time there or above (a step back lands on a window that was itself a gain).
    #[test]
    fn a_noisy_wide_link_is_filled_within_a_few_intervals_and_stays_filled() {
        for seed in 0..50 {
            let seen = trajectory(FLOOR, 12, 1000, seed, 0.2, |w| w.min(8) as f64 * 24e6);
            let reached = seen
                .iter()
                .position(|&w| w >= 8)
                .unwrap_or_else(|| panic!("seed {seed}: never reached the width: {seen:?}"));
            assert!(
                reached <= 3,
                "seed {seed}: the width took {reached} intervals"
            );
            let under = seen[reached..].iter().filter(|&&w| w < 8).count();
            assert!(
                under * 20 <= seen.len() - reached,
                "seed {seed}: under the width in {under} of {} intervals: {seen:?}",
                seen.len() - reached
            );
        }
    }

    /// The top step is judged too: once at the ceiling with nothing more to gain, two
    /// intervals without gain take it back, and held there (no flapping every interval).
    #[test]
    fn a_step_to_the_ceiling_that_gains_nothing_is_taken_back_and_held() {
        let seen = trajectory(FLOOR, 12, 60, 7, 0.02, |w| w.min(5) as f64 * 25e6);
        assert_eq!(&seen[..4], &[6, 12, 12, 6], "{seen:?}");
        assert!(
            seen[4..4 + HOLD_AFTER_NO_GAIN as usize]
                .iter()
                .all(|&w| w == 6),
            "held after a step back: {seen:?}"
        );
        // Later probes go one connection up and come back: the window never leaves 6..=7
        // on a link that 5 fill.
        assert!(seen[4..].iter().all(|&w| (6..=7).contains(&w)), "{seen:?}");
    }
}
