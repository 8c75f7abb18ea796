//! Which bytes of an object one open handle has been served: merged ranges, so a handle
//! that has read every byte (in any order: `cp`, a hash, mmap faults) can be told apart from
//! one that only touched the end (a Parquet, zip or MP4 footer). Pure bookkeeping.

use std::collections::BTreeMap;
use std::ops::Range;

/// Past this many separate ranges a handle stops keeping track (a few MiB at most); it is
/// then treated as if it read everything, the safe side: its reads that reach the end wait
/// for the whole-object check.
const MAX_RANGES: usize = 65_536;

#[derive(Debug, Default)]
pub struct Coverage {
    /// Start → end of disjoint, non-touching ranges.
    ranges: BTreeMap<u64, u64>,
    overflowed: bool,
    /// The kernel kept its page cache for this handle: it may serve bytes the handle never
    /// sees, so reaching the end may be all there is to see of a whole read.
    kernel_cached: bool,
}

impl Coverage {
    /// Notes `r` as served.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() || self.overflowed {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Ranges that touch or overlap `r` merge into it.
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        if self.ranges.len() > MAX_RANGES {
            self.overflowed = true;
            self.ranges.clear();
        }
    }

    /// The kernel may serve this handle from its page cache (`keep_cache`).
    pub fn kernel_cached() -> Coverage {
        Coverage {
            kernel_cached: true,
            ..Default::default()
        }
    }

    /// Whether this handle cannot see every byte it is served (see `kernel_cached`).
    pub fn is_partial_view(&self) -> bool {
        self.kernel_cached || self.overflowed
    }

    /// Notes `r` as served and tells whether that made the object whole for this handle
    /// (past `MAX_RANGES`, any range that reaches the end counts: the safe side).
    pub fn insert_completing(&mut self, r: Range<u64>, size: u64) -> bool {
        if self.overflowed {
            return r.end >= size;
        }
        self.insert(r.clone());
        if self.overflowed {
            return r.end >= size;
        }
        self.is_whole(size)
    }

    /// Whether every byte of `[0, size)` was served (never, once it stopped keeping track).
    pub fn is_whole(&self, size: u64) -> bool {
        !self.overflowed && self.completes(&(0..0), size)
    }

    /// Whether the ranges served so far and `r` together cover `[0, size)`: serving `r`
    /// would finish the object for this handle.
    pub fn completes(&self, r: &Range<u64>, size: u64) -> bool {
        if self.overflowed {
            return r.end >= size;
        }
        let mut at = 0u64;
        let mut pending = Some(r.clone());
        for (&s, &e) in &self.ranges {
            if let Some(x) = pending.as_ref().filter(|x| x.start <= s) {
                if x.start > at {
                    return false;
                }
                at = at.max(x.end);
                pending = None;
            }
            if s > at {
                return false;
            }
            at = at.max(e);
        }
        if let Some(x) = pending {
            if x.start > at {
                return false;
            }
            at = at.max(x.end);
        }
        at >= size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footer_is_not_the_whole_object_but_every_byte_in_any_order_is() {
        let mut c = Coverage::default();
        assert!(!c.completes(&(96..100), 100), "a footer alone");
        c.insert(96..100);
        assert!(!c.completes(&(0..50), 100));
        c.insert(0..50);
        assert!(c.completes(&(50..96), 100), "the gap closes it");
        assert!(!c.completes(&(51..96), 100), "one byte still missing");
        c.insert(60..70);
        c.insert(50..60);
        assert_eq!(c.ranges.len(), 2, "touching ranges merge");
        assert!(c.completes(&(70..96), 100));
        let mut seq = Coverage::default();
        for at in (0..100).step_by(10) {
            assert_eq!(seq.completes(&(at..at + 10), 100), at == 90);
            seq.insert(at..at + 10);
        }
        assert_eq!(seq.ranges.len(), 1);
        assert!(Coverage::default().completes(&(0..0), 0), "an empty object");
        assert!(seq.is_whole(100) && !c.is_whole(100));
    }
}
