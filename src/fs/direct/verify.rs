//! The whole-object CRC-64 of a direct handle: the CRC-64 of each window fetched for it,
//! and their combination when the windows tile the object (which bytes the handle was
//! served is `fs::coverage`). Pure bookkeeping: must not fetch, log or choose errors.

use std::collections::BTreeMap;
use std::ops::Range;

/// Windows kept at most: a random reader of a huge object starts windows at many offsets;
/// past this many the handle stops recording (and cannot verify) rather than grow.
const MAX_RECORDED: usize = 1 << 16;

/// The CRC-64 of each window that arrived whole, by range. Windows of one handle never
/// overlap while they live, but a range can be fetched again later from another start.
#[derive(Debug, Default)]
pub(super) struct WindowCrcs(BTreeMap<(u64, u64), u64>);

impl WindowCrcs {
    pub(super) fn record(&mut self, r: Range<u64>, crc: u64) {
        if self.0.len() < MAX_RECORDED {
            self.0.insert((r.start, r.end), crc);
        }
    }

    /// The CRC-64 of `[0, size)` combined in order from windows that tile it end to end, or
    /// `None` when no chain of recorded windows does (random access, windows dropped early).
    pub(super) fn combined(&self, size: u64) -> Option<u64> {
        // Offsets reachable from 0 through consecutive windows, with the CRC up to there.
        // Sorted by start, every window ending at `s` comes before one starting at `s`.
        let mut reach = BTreeMap::from([(0u64, 0u64)]);
        for (&(s, e), &crc) in &self.0 {
            if let Some(&before) = reach.get(&s) {
                reach
                    .entry(e)
                    .or_insert_with(|| crate::crc64::combine(before, crc, e - s));
            }
        }
        reach.get(&size).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_that_tile_give_the_objects_crc_and_gaps_give_none() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let crc = |r: Range<u64>| crate::crc64::checksum(&data[r.start as usize..r.end as usize]);
        let mut w = WindowCrcs::default();
        for r in [0..4096, 4096..8000, 8000..10_000] {
            w.record(r.clone(), crc(r));
        }
        assert_eq!(w.combined(10_000), Some(crc(0..10_000)));
        // A random window started mid-way does not break the chain.
        w.record(5000..8000, crc(5000..8000));
        assert_eq!(w.combined(10_000), Some(crc(0..10_000)));
        let mut gap = WindowCrcs::default();
        for r in [0..4096, 5000..8000, 8000..10_000] {
            gap.record(r.clone(), crc(r));
        }
        assert_eq!(gap.combined(10_000), None);
        // A chain through a window fetched again from another start.
        gap.record(4096..5000, crc(4096..5000));
        assert_eq!(gap.combined(10_000), Some(crc(0..10_000)));
    }
}
