//! The connection limiter under shuttle's scheduler: background and demand fetches take and
//! return permits while the window is grown and shrunk, and shuttle explores their
//! interleavings (at its yield points: the `yield_now` between steps, and every await that
//! returns Pending). Each schedule must keep the background share's book balanced, never let
//! background fetches hold more than window + debt, always leave the demand reserve free to
//! a reader, end with every permit back, and never deadlock (shuttle fails a schedule in
//! which every task waits).
//!
//! `SHUTTLE_ITERATIONS` raises the number of schedules per checker (default: a few seconds).
//!
//! Then the same claim through the engine, on tokio: a hydration's GETs in flight, as the
//! store counts them, follow the window through many steps up and back (issue 21: after a
//! step back and a step forward, fewer background connections ran than the window said).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::{select, Either};
use ossmount::hydrate::limiter::ConnectionLimiter;
use shuttle::future::{block_on, spawn, yield_now};

const MAX: usize = 8;
const RESERVE: usize = 2;

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

/// What the test's tasks hold, counted by them (after a permit arrives, before it goes).
#[derive(Default)]
struct Held {
    background: AtomicUsize,
    demand: AtomicUsize,
}

/// Balanced book, and background in use within window + debt (what a shrink has not yet
/// taken back).
fn check(lim: &ConnectionLimiter, held: &Held) {
    let book = lim.accounting();
    let background = held.background.load(Ordering::SeqCst);
    assert!(
        background <= book.in_use && book.in_use <= book.window + book.debt,
        "background held {background}, book {book:?}"
    );
    assert!(
        book.in_use <= MAX - RESERVE,
        "background ate into the demand reserve: {book:?}"
    );
}

fn scenario() {
    block_on(async {
        let lim = ConnectionLimiter::adaptive(MAX, RESERVE, 3);
        let held = Arc::new(Held::default());
        let mut tasks = Vec::new();
        // Background fetches: by acquire, by try_acquire (a split), and one acquire given up
        // half way (a cancelled fetch drops a background permit before its total one).
        for kind in 0..4 {
            let (lim, held) = (lim.clone(), held.clone());
            tasks.push(spawn(async move {
                for _ in 0..3 {
                    let permit = match kind {
                        1 => lim.try_acquire(false),
                        2 => {
                            let acquire = Box::pin(lim.acquire(false));
                            match select(acquire, Box::pin(yield_now())).await {
                                Either::Left((p, _)) => Some(p),
                                Either::Right(((), _)) => None,
                            }
                        }
                        _ => Some(lim.acquire(false).await),
                    };
                    if let Some(permit) = permit {
                        held.background.fetch_add(1, Ordering::SeqCst);
                        check(&lim, &held);
                        yield_now().await;
                        check(&lim, &held);
                        held.background.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                    check(&lim, &held);
                    yield_now().await;
                }
            }));
        }
        // Readers: however the background share stands, the reserve is theirs at once.
        for _ in 0..RESERVE {
            let (lim, held) = (lim.clone(), held.clone());
            tasks.push(spawn(async move {
                for _ in 0..2 {
                    let permit = lim
                        .try_acquire(true)
                        .expect("a demand fetch gets a connection at once");
                    held.demand.fetch_add(1, Ordering::SeqCst);
                    yield_now().await;
                    held.demand.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                    yield_now().await;
                }
            }));
        }
        // The adaptation: steps back and forward, also below what is in use.
        {
            let (lim, held) = (lim.clone(), held.clone());
            tasks.push(spawn(async move {
                for step in [-2i32, 3, -3, 1, -1, 2, -4, 4] {
                    if step > 0 {
                        lim.grow(step as usize);
                    } else {
                        lim.shrink(lim.window().saturating_sub(step.unsigned_abs() as usize));
                    }
                    check(&lim, &held);
                    yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("no task panicked");
        }
        // Every permit is back, the debt repaid, and the window is what can be held.
        let book = lim.accounting();
        assert_eq!(
            (book.in_use, book.debt, book.available),
            (0, 0, book.window),
            "{book:?}"
        );
        assert_eq!(lim.in_flight(), 0);
        let all: Vec<_> = std::iter::from_fn(|| lim.try_acquire(false)).collect();
        assert_eq!(all.len(), lim.window());
    });
}

#[test]
fn limiter_interleavings_random() {
    shuttle::check_random(scenario, iterations());
}

#[test]
fn limiter_interleavings_pct() {
    shuttle::check_pct(scenario, iterations(), 3);
}

/// A hydration of many slow parts (each GET ~20 ms), with as many workers as the largest
/// window, as a mount runs it; the window is moved up and down at random, 40 times one to
/// three moves in a row. After
/// each series of moves, the GETs the store has open reach exactly the window (bounded
/// wait), and never exceed the largest window of the series on the way (a step back is
/// repaid as GETs end, never overtaken by new ones).
#[test]
fn a_hydrations_gets_in_flight_follow_the_window_through_steps_up_and_back() {
    use ossmount::hydrate::{
        FetchMode, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
    };
    use ossmount::store::memory::{MemoryFaults, MemoryStore};
    use ossmount::store::ObjectStore;
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let part = 32u64 << 10;
        let store = MemoryStore::new("mem://window");
        store.put("b", "k", ossmount::sample::bytes(21, 3000 * part as usize));
        store.set_faults(MemoryFaults {
            chunk: 4096,
            chunk_delay: Duration::from_millis(2),
            ..Default::default()
        });
        let lim = ConnectionLimiter::adaptive(16, 2, 3);
        let meta = store.head("b", "k").await.unwrap();
        let files = HydrationFiles {
            data: dir.path().join("obj.data"),
            checkpoint: None,
            data_mode: 0o600,
        };
        let cfg = HydrationConfig {
            part_size: part,
            threads: lim.window_max(),
            mode: FetchMode::All,
            ..Default::default()
        };
        let id = ObjectIdentity::from_meta("b", "k", &meta);
        let h = Hydration::start(store.clone(), id, files, cfg, lim.clone(), None).unwrap();
        let open = || store.counters.gets_open.load(Ordering::SeqCst) as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let mut window = lim.window();
        for cycle in 0..40 {
            // One to three moves in a row, a step forward often right after a step back whose
            // GETs have not ended yet (the interleaving of issue 21).
            let mut before = window;
            let mut target = window;
            for _ in 0..rng.gen_range(1..=3) {
                target = rng.gen_range(1..=lim.window_max());
                if target > window {
                    lim.grow(target - window);
                } else {
                    lim.shrink(target);
                }
                window = lim.window();
                assert_eq!(window, target);
                before = before.max(target);
            }
            let since = Instant::now();
            loop {
                let now = open();
                assert!(
                    now <= before.max(target),
                    "cycle {cycle}: {now} GETs open, window {before} -> {target}"
                );
                if now == target && lim.background_in_use() == target {
                    break;
                }
                // Bounded, and the object must not run out of parts first (a limiter that
                // lost permits still fetches, on fewer connections).
                let complete = h.is_complete();
                assert!(
                    since.elapsed() < Duration::from_secs(10) && !complete,
                    "cycle {cycle}: GETs open stayed at {now}, window {target}, for {:?}{}: {:?}",
                    since.elapsed(),
                    if complete {
                        ", until the object ran out of parts"
                    } else {
                        ""
                    },
                    lim.accounting()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            lim.accounting(); // the book balances mid-flight
        }
        h.stop();
    });
}
