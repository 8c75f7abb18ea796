//! The engine's part state (`parts::State`) under a scheduler-exploring checker (shuttle):
//! readers check cached parts, fetch missing ones and serve, in every interleaving shuttle
//! tries, with the lock taken and let go exactly where the engine does (claim under the
//! lock, read the file outside it, verdict under the lock). Asserted: no reader is served a
//! rotten byte, a cancelled check never strands a part, and every reader ends (shuttle fails
//! a run that deadlocks). The protocol the engine used before is kept here as a control: the
//! same checker must catch it serving rotten bytes, or the test proves nothing. Splits too:
//! readers far ahead cut a part's stream while its chunks arrive, and the segments' bytes
//! must tile the part exactly (a segment that kept bytes past a split's cut is caught).

use std::ops::Range;
use std::sync::Arc;

use fixedbitset::FixedBitSet;
use shuttle::sync::Mutex;
use shuttle::thread;

use super::parts::{CheckStep, State};
use super::PartLayout;

const PARTS: usize = 3;
const PART: u64 = 10;
const GOOD: u8 = 7;
const ROTTEN: u8 = 8;

/// Shuttle iterations per test: a few seconds in CI; `SHUTTLE_ITERATIONS` for long runs.
fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// A cache entry after a restart: every part recorded present with the good CRC, none
/// checked yet, and the middle part rotten on disk.
struct Entry {
    state: Mutex<State>,
    /// One value per part standing for its bytes on disk.
    disk: Mutex<Vec<u8>>,
    layout: PartLayout,
}

impl Entry {
    fn after_restart() -> Arc<Entry> {
        let mut present = FixedBitSet::with_capacity(PARTS);
        present.insert_range(..);
        let state = State::new(PARTS, present.clone(), vec![GOOD as u64; PARTS], present);
        let mut disk = vec![GOOD; PARTS];
        disk[1] = ROTTEN;
        Arc::new(Entry {
            state: Mutex::new(state),
            disk: Mutex::new(disk),
            layout: PartLayout::new(PARTS as u64 * PART, PART),
        })
    }

    /// What `want` and a demand fetch do: claim the missing parts not in flight under the
    /// lock, write their bytes outside it, then mark them present and checked.
    fn fetch_missing(&self, range: Range<u64>) {
        let claimed: Vec<usize> = {
            let mut st = self.state.lock().unwrap();
            let missing: Vec<usize> = self
                .layout
                .parts_for(range)
                .filter(|&p| !st.present[p] && !st.in_flight[p])
                .collect();
            for &p in &missing {
                st.in_flight[p] = true;
            }
            missing
        };
        for &p in &claimed {
            self.disk.lock().unwrap()[p] = GOOD;
            let mut st = self.state.lock().unwrap();
            st.present.insert(p);
            st.checked.insert(p);
            st.in_flight[p] = false;
            st.part_crc[p] = GOOD as u64;
        }
    }

    fn serve(&self, range: Range<u64>) -> Vec<u8> {
        let disk = self.disk.lock().unwrap();
        self.layout.parts_for(range).map(|p| disk[p]).collect()
    }

    /// A read as `OssFs::read` does it with `Hydration::verify_cached`; `cancel` gives up
    /// its first claimed check halfway, as a read past its deadline does.
    fn read(&self, range: Range<u64>, mut cancel: bool) -> Vec<u8> {
        loop {
            let step = self
                .state
                .lock()
                .unwrap()
                .claim_checks(self.layout, range.clone());
            match step {
                CheckStep::Checked => return self.serve(range),
                CheckStep::Missing => self.fetch_missing(range.clone()),
                CheckStep::Wait => thread::yield_now(),
                CheckStep::Check(todo) => {
                    if std::mem::take(&mut cancel) {
                        let parts: Vec<usize> = todo.iter().map(|&(p, _)| p).collect();
                        self.state.lock().unwrap().abandon_checks(&parts);
                        continue;
                    }
                    let verdicts: Vec<(usize, bool)> = todo
                        .iter()
                        .map(|&(p, crc)| (p, self.disk.lock().unwrap()[p] as u64 == crc))
                        .collect();
                    self.state.lock().unwrap().finish_checks(&verdicts);
                }
            }
        }
    }

    /// The protocol before claims: pick present, unchecked parts under the lock, read them
    /// back, and count a failure only if the part is still present and unchecked.
    fn read_unclaimed(&self, range: Range<u64>) -> Vec<u8> {
        loop {
            let todo: Vec<(usize, u64)> = {
                let st = self.state.lock().unwrap();
                if !st.covers(self.layout, range.clone()) {
                    drop(st);
                    self.fetch_missing(range.clone());
                    continue;
                }
                self.layout
                    .parts_for(range.clone())
                    .filter(|&p| st.present[p] && !st.checked[p])
                    .map(|p| (p, st.part_crc[p]))
                    .collect()
            };
            let verdicts: Vec<(usize, bool)> = todo
                .iter()
                .map(|&(p, crc)| (p, self.disk.lock().unwrap()[p] as u64 == crc))
                .collect();
            let mut bad = 0;
            {
                let mut st = self.state.lock().unwrap();
                for (p, ok) in verdicts {
                    if ok {
                        st.checked.insert(p);
                    } else if st.present[p] && !st.checked[p] {
                        bad += 1;
                        st.present.set(p, false);
                    }
                }
            }
            if bad == 0 {
                return self.serve(range);
            }
        }
    }
}

fn assert_good(got: &[u8]) {
    assert!(
        got.iter().all(|&b| b == GOOD),
        "served a rotten part: {got:?}"
    );
}

#[test]
fn concurrent_checks_of_a_rotten_part_never_serve_it() {
    shuttle::check_random(
        || {
            let entry = Entry::after_restart();
            let readers: Vec<_> = [(0..30, false), (10..20, false), (15..25, true)]
                .into_iter()
                .map(|(range, cancel)| {
                    let entry = entry.clone();
                    thread::spawn(move || entry.read(range, cancel))
                })
                .collect();
            for r in readers {
                assert_good(&r.join().unwrap());
            }
            let st = entry.state.lock().unwrap();
            assert!(st.checking.is_clear(), "a claim was left behind");
            assert!(st.present.is_full() && st.checked.is_full());
        },
        iterations(),
    );
}

#[test]
#[should_panic(expected = "served a rotten part")]
fn the_protocol_before_claims_is_caught_serving_a_rotten_part() {
    shuttle::check_random(
        || {
            let entry = Entry::after_restart();
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let entry = entry.clone();
                    thread::spawn(move || entry.read_unclaimed(10..20))
                })
                .collect();
            for r in readers {
                assert_good(&r.join().unwrap());
            }
        },
        iterations(),
    );
}

/// A part streaming in chunks while readers far ahead split it, in every interleaving shuttle
/// tries: a split moves the stream's end down while chunks arrive, and a new segment (itself
/// split by a later reader) streams the rest. Asserted: the bytes every segment keeps tile
/// the part exactly (none missing, none fetched into the file twice), the segments' ranges
/// tile it as the fetch checks before combining CRCs, and the written runs cover the part.
#[test]
fn splits_racing_a_stream_tile_the_part_exactly() {
    use super::segments::{tiles, SegmentControl, SegmentDone};
    use std::time::Instant;

    const MIB: u64 = 1 << 20;
    const PART: std::ops::Range<u64> = 0..16 * MIB;
    const CHUNK: u64 = 512 * 1024;

    /// Streams `control`'s range in chunks, as a GET does, noting what it keeps.
    fn stream(control: Arc<SegmentControl>, kept: Arc<Mutex<Vec<Range<u64>>>>) -> SegmentDone {
        let mut offset = control.start();
        loop {
            let (keep, ended) = control.arrived(offset, CHUNK);
            if keep > 0 {
                kept.lock().unwrap().push(offset..offset + keep);
            }
            offset += keep;
            thread::yield_now();
            if ended {
                break;
            }
        }
        control.finish();
        (control.start()..offset, 0)
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    // Schedules by how many splits they made: the test proves nothing without both kinds.
    static SPLITS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    shuttle::check_random(
        || {
            // Split decisions here depend only on distance (no elapsed time: `now` is
            // before the first byte), so shuttle's schedules alone decide the outcome.
            let before = Instant::now();
            let kept = Arc::new(Mutex::new(Vec::new()));
            let first = SegmentControl::new(PART);
            let controls = Arc::new(Mutex::new(vec![first.clone()]));
            let streams = Arc::new(Mutex::new(Vec::new()));
            let k = kept.clone();
            streams
                .lock()
                .unwrap()
                .push(thread::spawn(move || stream(first, k)));
            let readers: Vec<_> = [4 * MIB + 5000, 9 * MIB + 12_345, 13 * MIB + 70_000]
                .into_iter()
                .map(|at| {
                    let (controls, streams, kept) =
                        (controls.clone(), streams.clone(), kept.clone());
                    thread::spawn(move || {
                        let mut cs = controls.lock().unwrap();
                        let Some(taken) = cs.iter().find_map(|c| c.split_for(at, before)) else {
                            return;
                        };
                        let control = SegmentControl::new(taken);
                        cs.push(control.clone());
                        drop(cs);
                        streams
                            .lock()
                            .unwrap()
                            .push(thread::spawn(move || stream(control, kept)));
                    })
                })
                .collect();
            for r in readers {
                r.join().unwrap();
            }
            let mut done = Vec::new();
            loop {
                let next = streams.lock().unwrap().pop();
                let Some(s) = next else { break };
                done.push(s.join().unwrap());
            }
            SPLITS[done.len() - 1].fetch_add(1, Ordering::Relaxed);
            done.sort_by_key(|(r, _)| r.start);
            assert!(
                tiles(&done, &PART),
                "segments do not tile the part: {done:?}"
            );
            let mut kept = kept.lock().unwrap().clone();
            kept.sort_by_key(|r| r.start);
            let mut at = PART.start;
            for r in &kept {
                assert_eq!(r.start, at, "a gap or an overlap at {at}: {kept:?}");
                at = r.end;
            }
            assert_eq!(at, PART.end, "bytes missing at the end");
            let layout = PartLayout::new(PART.end, PART.end);
            let mut st = State::new(
                1,
                FixedBitSet::with_capacity(1),
                vec![0],
                FixedBitSet::with_capacity(1),
            );
            for r in kept {
                st.note_written(0, r);
            }
            assert!(
                st.covers(layout, PART),
                "written runs do not cover the part"
            );
        },
        iterations(),
    );
    let seen: Vec<usize> = SPLITS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    // Three splits (two of them of a segment a split made), and schedules where the
    // stream got past a reader's page first (fewer splits).
    assert!(
        seen[3] > 0 && seen[1] + seen[2] > 0,
        "schedules with 0, 1, 2, 3 splits: {seen:?}"
    );
}
