//! Where the readers of one object are: the reads a hydration is told of, sorted into
//! sequential streams (a `cp`; each rank copying its slice out of a mapping of a model; jobs
//! reading one file from the start together, which the kernel's shared page cache turns into
//! one stream), so that each stream gets its own readahead and any stream that consumes the
//! object switches `Auto` to fetching it whole. Pure bookkeeping, kept under the hydration's
//! lock: no I/O, and no choice of parts beyond saying where each stream will read next.

use std::ops::Range;

/// Streams remembered per object; a new one replaces the least recently used.
pub(super) const MAX_STREAMS: usize = 16;
/// A read starting this close to where a stream's next read would start continues it: the
/// kernel's readahead and a FUSE server answering several reads at once reorder a stream's
/// reads a little (a mapping's read-around also starts up to half a window behind).
const SLACK: u64 = 2 << 20;

#[derive(Debug, Default)]
pub(super) struct Streams {
    streams: Vec<Stream>,
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Where the next sequential read would start.
    next: u64,
    /// Bytes read in sequence so far.
    run: u64,
    /// Reads that continued the stream (0: one read, maybe a random one).
    continued: u32,
    /// The `clock` of its last read.
    used: u64,
}

/// What noting a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Noted {
    /// Bytes the read's stream has read in sequence, this read included.
    pub(super) run: u64,
    /// Where the stream stood before the read (`None`: the read started a stream).
    pub(super) was_at: Option<u64>,
    /// Where it stands now.
    pub(super) now_at: u64,
    /// This read made the stream sequential (its first continuation).
    pub(super) became_sequential: bool,
}

impl Streams {
    /// Notes a read of `range`: it continues the stream it starts nearest to (within
    /// `SLACK`), or starts a new one.
    pub(super) fn note(&mut self, range: Range<u64>) -> Noted {
        self.clock += 1;
        let clock = self.clock;
        let near = |s: &Stream| range.start + SLACK >= s.next && range.start <= s.next + SLACK;
        let found = self
            .streams
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| near(s))
            .min_by_key(|(_, s)| s.next.abs_diff(range.start))
            .map(|(i, _)| i);
        let Some(i) = found else {
            let stream = Stream {
                next: range.end,
                run: range.end - range.start,
                continued: 0,
                used: clock,
            };
            if self.streams.len() < MAX_STREAMS {
                self.streams.push(stream);
            } else if let Some(oldest) = self.streams.iter_mut().min_by_key(|s| s.used) {
                *oldest = stream;
            }
            return Noted {
                run: stream.run,
                was_at: None,
                now_at: stream.next,
                became_sequential: false,
            };
        };
        let s = &mut self.streams[i];
        let was_at = s.next;
        s.run += range.end.saturating_sub(range.start.max(s.next));
        s.next = s.next.max(range.end);
        s.continued = s.continued.saturating_add(1);
        s.used = clock;
        let (next, run, became_sequential) = (s.next, s.run, s.continued == 1);
        // Two streams that met (one reader caught up with another's bytes) are one now.
        self.streams
            .retain(|o| o.used == clock || o.next.abs_diff(next) > SLACK);
        Noted {
            run,
            was_at: Some(was_at),
            now_at: next,
            became_sequential,
        }
    }

    /// Where each sequential stream (one that has continued at least once, so not a lone
    /// random read) will read next, most recently used first.
    pub(super) fn sequential_positions(&self) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = self
            .streams
            .iter()
            .filter(|s| s.continued > 0)
            .map(|s| (s.used, s.next))
            .collect();
        v.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        v.into_iter().map(|(_, next)| next).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 128 << 10;

    #[test]
    fn interleaved_readers_of_four_slices_are_four_streams() {
        let mut s = Streams::default();
        let slice = 256 << 20;
        let mut runs = [0u64; 4];
        for step in 0..64u64 {
            for (r, run) in runs.iter_mut().enumerate() {
                let at = r as u64 * slice + step * K;
                *run = s.note(at..at + K).run;
            }
        }
        // Each reader read 64 × 128 KiB in sequence, though no two of its reads were adjacent
        // in arrival order.
        assert_eq!(runs, [64 * K; 4]);
        let mut at = s.sequential_positions();
        at.sort_unstable();
        assert_eq!(at, (0..4).map(|r| r * slice + 64 * K).collect::<Vec<_>>());
    }

    #[test]
    fn reordered_reads_continue_their_stream_and_lone_reads_are_not_sequential() {
        let mut s = Streams::default();
        s.note(0..K);
        // The kernel answered out of order: the third window before the second.
        let n = s.note(2 * K..3 * K);
        assert_eq!((n.run, n.was_at, n.now_at), (2 * K, Some(K), 3 * K));
        assert_eq!(s.note(K..2 * K).run, 2 * K, "bytes already counted");
        // A random read far away starts a stream of its own, which is not sequential yet.
        let far = s.note(900 << 20..(900 << 20) + 4096);
        assert_eq!(far.was_at, None);
        assert_eq!(s.sequential_positions(), vec![3 * K]);
    }

    #[test]
    fn streams_that_meet_merge_and_the_oldest_makes_room() {
        let mut s = Streams::default();
        let m = 1 << 20;
        s.note(0..K);
        s.note(K..2 * K);
        s.note(3 * m..3 * m + K);
        s.note(3 * m + K..3 * m + 2 * K);
        assert_eq!(s.sequential_positions().len(), 2);
        // The first reader reads on until it is within reach of where the second is: one
        // stream from then on.
        s.note(2 * K..12 * K);
        assert_eq!(s.streams.len(), 1, "{:?}", s.streams);
        for i in 0..(MAX_STREAMS as u64 + 4) {
            let at = (100 + 10 * i) << 20;
            s.note(at..at + K);
        }
        assert_eq!(s.streams.len(), MAX_STREAMS);
    }
}
