//! The GETs of a part in flight (its segments) and how far each has got, so a read that lands
//! far ahead of a stream splits it: the stream stops at the reader's page and a new GET starts
//! there; and so a connection with nothing left to start at the end of a whole-object fetch
//! takes over the half of a part nobody has asked the server for yet (a tail claim). The
//! part's CRC-64 is the segments' CRCs combined in order. Owns the split and claim rules and
//! the check that a part's segments tile it; must not write files or choose parts.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

/// Splits start on this boundary (the reader's page).
pub(super) const SPLIT_ALIGN: u64 = 4096;
/// A read nearer the stream than this never splits it: the kernel's readahead of a
/// sequential reader runs up to two 1 MiB windows ahead of it, and must not break a part
/// into GETs.
const SPLIT_MIN_AHEAD: u64 = 3 << 20;
/// A tail claim is made only where the segment's stream would take at least this long to
/// reach the claimed half (less is not worth a GET's round trip and a connection).
const TAIL_CLAIM_MIN_WAIT: Duration = Duration::from_millis(100);
/// Segments per part at most (one split per far read; more would only add connections).
const MAX_SEGMENTS: usize = 4;

/// One GET of a part: `[from, end)`, where `end` moves down when a read splits it.
pub(super) struct SegmentControl {
    progress: Mutex<SegmentProgress>,
}

struct SegmentProgress {
    from: u64,
    end: u64,
    /// Where the GETs asked for so far end: the bytes past it were never asked for, so
    /// handing them to another GET costs nothing (a cut inside a GET's range fetches what the
    /// server already sent past the cut for nothing: on loopback under load, megabytes).
    asked_to: u64,
    /// Bytes received up to here (written or about to be).
    received: u64,
    started: Instant,
    first_byte: Option<Instant>,
    finished: bool,
}

/// What a segment fetched: its range (cut short by a split) and that range's CRC-64.
pub(super) type SegmentDone = (Range<u64>, u64);

/// A split segment's GET, aborted if the part's fetch ends without waiting for it.
pub(super) struct SegmentTask<E>(JoinHandle<Result<SegmentDone, E>>);

impl<E> SegmentTask<E> {
    pub(super) fn new(task: JoinHandle<Result<SegmentDone, E>>) -> Self {
        SegmentTask(task)
    }

    pub(super) async fn join(mut self) -> Result<Result<SegmentDone, E>, JoinError> {
        (&mut self.0).await
    }
}

impl<E> Drop for SegmentTask<E> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SegmentControl {
    pub(super) fn new(range: Range<u64>) -> Arc<Self> {
        Arc::new(SegmentControl {
            progress: Mutex::new(SegmentProgress {
                from: range.start,
                end: range.end,
                asked_to: range.end,
                received: range.start,
                started: Instant::now(),
                first_byte: None,
                finished: false,
            }),
        })
    }

    /// A segment fetched in two GETs, its first half first: until that GET ends, the second
    /// half can be claimed by an idle connection at no cost (`PartSegments::claim_tail`).
    /// One of less than `2 * min_each` is fetched in one GET.
    pub(super) fn in_halves(range: Range<u64>, min_each: u64) -> Arc<Self> {
        let c = SegmentControl::new(range.clone());
        let mid = (range.start + (range.end - range.start) / 2) & !(SPLIT_ALIGN - 1);
        if range.end - range.start >= 2 * min_each && mid > range.start {
            c.progress.lock().unwrap().asked_to = mid;
        }
        c
    }

    /// Where the GETs asked for so far end (the first GET's end, for a new segment).
    pub(super) fn asked_to(&self) -> u64 {
        self.progress.lock().unwrap().asked_to
    }

    /// The GET that ended at `at` was not the last: asks for the rest of this segment (what
    /// no claim took), returning where it ends, or `None` when nothing is left.
    pub(super) fn ask_rest(&self, at: u64) -> Option<u64> {
        let mut p = self.progress.lock().unwrap();
        if p.finished || p.end <= at {
            return None;
        }
        p.asked_to = p.end;
        Some(p.end)
    }

    /// Notes `len` more bytes from the stream at `offset`; returns how many of them belong
    /// to this segment (fewer once a split moved its end) and whether it has ended there.
    pub(super) fn arrived(&self, offset: u64, len: u64) -> (u64, bool) {
        let mut p = self.progress.lock().unwrap();
        p.first_byte.get_or_insert_with(Instant::now);
        let keep = len.min(p.end.saturating_sub(offset));
        p.received = offset + keep;
        (keep, keep < len || p.received >= p.end)
    }

    pub(super) fn start(&self) -> u64 {
        self.progress.lock().unwrap().from
    }

    pub(super) fn end(&self) -> u64 {
        self.progress.lock().unwrap().end
    }

    fn streams_towards(&self, at: u64) -> bool {
        let p = self.progress.lock().unwrap();
        !p.finished && p.received <= at && at < p.end
    }

    /// No split may take bytes from this segment any more.
    pub(super) fn finish(&self) {
        self.progress.lock().unwrap().finished = true;
    }

    /// Cuts this segment at the reader's page when a new GET would bring the bytes at `at`
    /// sooner than the stream: they lie far enough ahead, and at the stream's rate so far
    /// they are further off than its first byte took. Returns the range the new GET owns.
    pub(super) fn split_for(&self, at: u64, now: Instant) -> Option<Range<u64>> {
        let mut p = self.progress.lock().unwrap();
        let k = at & !(SPLIT_ALIGN - 1);
        if p.finished || at >= p.end || k < p.received + SPLIT_MIN_AHEAD {
            return None;
        }
        if let Some(first) = p.first_byte {
            let round_trip = first - p.started;
            let streaming = now.saturating_duration_since(first);
            let got = p.received - p.from;
            if got > 0 && streaming > Duration::ZERO {
                let rate = got as f64 / streaming.as_secs_f64();
                let wait = Duration::from_secs_f64((k - p.received) as f64 / rate);
                if wait <= round_trip {
                    return None;
                }
            }
        }
        let taken = k..p.end;
        p.end = k;
        Some(taken)
    }
}

impl SegmentControl {
    /// Bytes of this segment nobody has asked the server for yet (0 once finished).
    fn unasked(&self) -> u64 {
        let p = self.progress.lock().unwrap();
        if p.finished {
            0
        } else {
            p.end.saturating_sub(p.asked_to)
        }
    }

    /// Hands the unasked rest of this segment (at least `min_each` bytes) to another GET when
    /// that pays: at the stream's rate so far, it would reach those bytes only after
    /// `TAIL_CLAIM_MIN_WAIT` and four times the round trip its first byte took. No byte is
    /// fetched twice: the stream's own GET ends where the claim starts. Returns the range
    /// claimed.
    fn claim_unasked(&self, min_each: u64, now: Instant) -> Option<Range<u64>> {
        let mut p = self.progress.lock().unwrap();
        let k = p.asked_to;
        if p.finished || p.end < k + min_each {
            return None;
        }
        let first = p.first_byte?;
        let streaming = now.saturating_duration_since(first);
        let got = p.received - p.from;
        if got == 0 || streaming.is_zero() {
            return None;
        }
        let rate = got as f64 / streaming.as_secs_f64();
        let wait = Duration::from_secs_f64(k.saturating_sub(p.received) as f64 / rate);
        if wait < TAIL_CLAIM_MIN_WAIT || wait < (first - p.started) * 4 {
            return None;
        }
        let taken = k..p.end;
        p.end = k;
        Some(taken)
    }
}

/// The segments of one part in flight, and where the GETs started by splits are handed to
/// the part's fetch, which waits for them before it combines the CRCs.
pub(super) struct PartSegments<E> {
    controls: Vec<Arc<SegmentControl>>,
    spawned: mpsc::UnboundedSender<SegmentTask<E>>,
}

impl<E> PartSegments<E> {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<SegmentTask<E>>) {
        let (spawned, rx) = mpsc::unbounded_channel();
        (
            PartSegments {
                controls: Vec::new(),
                spawned,
            },
            rx,
        )
    }

    pub(super) fn add(&mut self, control: Arc<SegmentControl>) {
        self.controls.push(control);
    }

    /// Whether a split for a read at `at` may be worth a connection: there is room for one
    /// more segment, and some segment has not yet reached `at` (`split_for` decides).
    pub(super) fn may_split(&self, at: u64) -> bool {
        self.controls.len() < MAX_SEGMENTS && self.controls.iter().any(|c| c.streams_towards(at))
    }

    /// Splits the segment streaming towards `at`, if that is worth it: the new segment is
    /// registered and `start` is called with it, its task handed to the part's fetch.
    pub(super) fn split_for(
        &mut self,
        at: u64,
        start: impl FnOnce(Arc<SegmentControl>) -> SegmentTask<E>,
    ) -> bool {
        if self.controls.len() >= MAX_SEGMENTS {
            return false;
        }
        let now = Instant::now();
        let Some(taken) = self.controls.iter().find_map(|c| c.split_for(at, now)) else {
            return false;
        };
        let control = SegmentControl::new(taken);
        self.controls.push(control.clone());
        // The part's fetch holds the receiver until the segments tile the part.
        let _ = self.spawned.send(start(control));
        true
    }
}

impl<E> PartSegments<E> {
    /// The most bytes of one of this part's segments that nobody has asked for yet.
    pub(super) fn most_unasked(&self) -> u64 {
        if self.controls.len() >= MAX_SEGMENTS {
            return 0; // no room for another segment
        }
        self.controls.iter().map(|c| c.unasked()).max().unwrap_or(0)
    }

    /// Claims the unasked half of the segment with the most of it (`claim_unasked`), started
    /// by `start` in halves itself: the end of a whole-object fetch, where connections would
    /// idle while the last parts stream one each.
    pub(super) fn claim_tail(
        &mut self,
        min_each: u64,
        start: impl FnOnce(Arc<SegmentControl>) -> SegmentTask<E>,
    ) -> bool {
        if self.controls.len() >= MAX_SEGMENTS {
            return false;
        }
        let mut by_unasked: Vec<&Arc<SegmentControl>> = self.controls.iter().collect();
        by_unasked.sort_by_key(|c| std::cmp::Reverse(c.unasked()));
        let now = Instant::now();
        let Some(taken) = by_unasked
            .iter()
            .find_map(|c| c.claim_unasked(min_each, now))
        else {
            return false;
        };
        let control = SegmentControl::in_halves(taken, min_each);
        self.controls.push(control.clone());
        let _ = self.spawned.send(start(control));
        true
    }
}

/// Whether `done` (sorted by start) covers `part` exactly, end to end.
pub(super) fn tiles(done: &[SegmentDone], part: &Range<u64>) -> bool {
    let mut at = part.start;
    for (r, _) in done {
        if r.start != at {
            return false;
        }
        at = r.end;
    }
    at == part.end
}

/// The CRC-64 of the part from its segments' CRCs, in order.
pub(super) fn combined_crc(done: &[SegmentDone]) -> u64 {
    done.iter().fold(0, |crc, (r, c)| {
        crate::crc64::combine(crc, *c, r.end - r.start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_read_splits_a_slow_stream_and_the_crcs_combine() {
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i * 7 + i / 13) as u8).collect();
        let part = 0..data.len() as u64;
        let c = SegmentControl::new(part.clone());
        let t0 = Instant::now();
        {
            let mut p = c.progress.lock().unwrap();
            p.started = t0;
            p.first_byte = Some(t0 + Duration::from_millis(20));
        }
        assert_eq!(c.arrived(0, 1 << 20), (1 << 20, false));
        // 1 MiB in 1 s: 5 MiB ahead is 5 s away, far more than the 20 ms first byte.
        let at = (6 << 20) + 321;
        assert_eq!(
            c.split_for(at, t0 + Duration::from_millis(1020)),
            Some((6 << 20)..(8 << 20))
        );
        assert_eq!(c.end(), 6 << 20);
        // The stream keeps only what is still its own, and ends there.
        assert_eq!(c.arrived(1 << 20, 6 << 20), (5 << 20, true));
        // Within 2 MiB of the stream (kernel readahead), never split.
        let d = SegmentControl::new(part.clone());
        d.arrived(0, 1 << 20);
        assert_eq!(d.split_for(2 << 20, Instant::now()), None);
        // Fast enough that the stream gets there before a new GET would: no split.
        let e = SegmentControl::new(part.clone());
        {
            let mut p = e.progress.lock().unwrap();
            p.started = t0;
            p.first_byte = Some(t0 + Duration::from_millis(500));
        }
        e.arrived(0, 4 << 20);
        assert_eq!(e.split_for(7 << 20, t0 + Duration::from_millis(600)), None);

        let crc = |r: &Range<u64>| crate::crc64::checksum(&data[r.start as usize..r.end as usize]);
        let mut done: Vec<SegmentDone> = [0..(6 << 20), (6 << 20)..(8 << 20)]
            .into_iter()
            .map(|r| (r.clone(), crc(&r)))
            .collect();
        done.sort_by_key(|(r, _)| r.start);
        assert!(tiles(&done, &part));
        assert_eq!(combined_crc(&done), crc(&part));
        assert!(!tiles(&done[..1], &part));
    }

    /// A segment in halves started at `t0` (two seconds ago), its first byte `rtt` ms after,
    /// that has received `got` bytes.
    fn streaming(range: Range<u64>, rtt: u64, got: u64) -> (Arc<SegmentControl>, Instant) {
        let c = SegmentControl::in_halves(range.clone(), 1 << 20);
        let t0 = Instant::now() - Duration::from_secs(2);
        {
            let mut p = c.progress.lock().unwrap();
            p.started = t0;
            p.first_byte = Some(t0 + Duration::from_millis(rtt));
        }
        c.arrived(range.start, got);
        (c, t0)
    }

    #[test]
    fn a_tail_claim_takes_only_the_half_never_asked_for_and_only_when_it_pays() {
        // 1 MiB in 1 s after a 20 ms first byte: the second half, 3 MiB away, is 3 s off.
        let (c, t0) = streaming(0..(8 << 20), 20, 1 << 20);
        assert_eq!(
            c.asked_to(),
            4 << 20,
            "the first GET asks for the first half"
        );
        let now = t0 + Duration::from_millis(1020);
        assert_eq!(c.claim_unasked(1 << 20, now), Some((4 << 20)..(8 << 20)));
        assert_eq!(
            c.end(),
            4 << 20,
            "the stream's own GET ends where the claim starts"
        );
        assert_eq!(c.ask_rest(4 << 20), None, "nothing left to ask for");
        // The stream keeps every byte of its GET: nothing it was sent is past the claim.
        assert_eq!(c.arrived(1 << 20, 3 << 20), (3 << 20, true));
        // Once the rest is asked for, nothing is left to claim.
        let (d, t0) = streaming(0..(8 << 20), 20, 1 << 20);
        assert_eq!(d.ask_rest(4 << 20), Some(8 << 20));
        assert_eq!(d.asked_to(), 8 << 20);
        assert_eq!(
            d.claim_unasked(1 << 20, t0 + Duration::from_millis(1020)),
            None
        );
        // Too small to halve: one GET, nothing to claim.
        let (e, t0) = streaming(0..(3 << 19), 20, 1 << 18);
        assert_eq!(e.asked_to(), 3 << 19);
        assert_eq!(
            e.claim_unasked(1 << 20, t0 + Duration::from_millis(1020)),
            None
        );
        // Fast: the stream reaches the half within 7 ms, under TAIL_CLAIM_MIN_WAIT.
        let (f, t0) = streaming(0..(8 << 20), 1, 1 << 20);
        assert_eq!(
            f.claim_unasked(1 << 20, t0 + Duration::from_millis(2)),
            None
        );
        // No byte yet: no rate, no claim.
        let g = SegmentControl::in_halves(0..(8 << 20), 1 << 20);
        assert_eq!(g.claim_unasked(1 << 20, Instant::now()), None);
        // A finished segment gives nothing away.
        let (h, t0) = streaming(0..(8 << 20), 20, 1 << 20);
        h.finish();
        assert_eq!(
            h.claim_unasked(1 << 20, t0 + Duration::from_millis(1020)),
            None
        );
        // A segment asked for in one GET (a demanded part) is never claimed from.
        let one = SegmentControl::new(0..(8 << 20));
        assert_eq!(one.unasked(), 0);
    }

    #[test]
    fn a_tail_claim_takes_from_the_segment_with_the_most_unasked_and_hands_it_over() {
        let (mut segments, mut rx) = PartSegments::<()>::new();
        let (near, _) = streaming(0..(4 << 20), 20, 1 << 20);
        let (far, _) = streaming((4 << 20)..(12 << 20), 20, 1 << 20);
        segments.add(near.clone());
        segments.add(far.clone());
        assert_eq!(segments.most_unasked(), 4 << 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut handed = None;
        assert!(segments.claim_tail(1 << 20, |control| {
            handed = Some((control.start()..control.end(), control.asked_to()));
            SegmentTask::new(tokio::spawn(async { Err(()) }))
        }));
        let (claimed, asked) = handed.expect("the new segment was started");
        assert_eq!(claimed, (8 << 20)..(12 << 20));
        assert_eq!(asked, 10 << 20, "the claim is fetched in halves itself");
        assert_eq!(
            far.end(),
            8 << 20,
            "the far segment ends where the claim starts"
        );
        assert_eq!(near.end(), 4 << 20, "the near one is untouched");
        assert!(
            rx.try_recv().is_ok(),
            "the new GET is handed to the part's fetch"
        );
        // Room for four segments at most.
        segments.claim_tail(1 << 20, |_| {
            SegmentTask::new(tokio::spawn(async { Err(()) }))
        });
        assert_eq!(segments.most_unasked(), 0);
        assert!(!segments.claim_tail(1 << 20, |_| unreachable!()));
    }
}
