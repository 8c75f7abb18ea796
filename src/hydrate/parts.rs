//! What a hydration knows of each part: present (durable and recorded or about to be),
//! checked against its CRC-64 in this mount's life, being checked, in flight, written so
//! far, failed; and the rules that read that knowledge (which bytes are readable, when the
//! whole object is verified, which parts a verification claims). Pure state, no I/O: the
//! engine holds it under one lock and never across a fetch, a write or a sync, which is also
//! what lets `tests` drive it under a scheduler-exploring checker.

use std::ops::Range;
use std::sync::Arc;

use fixedbitset::FixedBitSet;

use super::{segments, streams, worker, HydrateError, PartLayout};

pub(super) struct State {
    pub(super) present: FixedBitSet,
    /// Present parts whose bytes were checked against their CRC-64 in this run (fetched in
    /// this run, or re-read by `verify_cached`).
    pub(super) checked: FixedBitSet,
    /// Present parts a verification has claimed and is reading back now: nobody else checks
    /// them meanwhile, and nobody serves them until the verdict.
    pub(super) checking: FixedBitSet,
    /// The parts the checkpoint on disk records (all of them without a checkpoint file): the
    /// hydration is complete only once the record says so, so a stop right after completion
    /// can never leave a record that misses a part.
    pub(super) recorded: FixedBitSet,
    pub(super) in_flight: Vec<bool>,
    pub(super) part_crc: Vec<u64>,
    /// The last failure of a part, kept until new demand asks again.
    pub(super) failed: Vec<Option<Arc<HydrateError>>>,
    /// Background fetching pauses after a failure until a reader wants something.
    pub(super) paused: Option<Arc<HydrateError>>,
    pub(super) fatal: Option<Arc<HydrateError>>,
    pub(super) readahead: Range<usize>,
    /// The window to open once a demand fetch has its first bytes, so demand always reaches
    /// the server before readahead.
    pub(super) pending_readahead: Option<Range<usize>>,
    /// Where each sequential reader is: each gets its own readahead.
    pub(super) streams: streams::Streams,
    pub(super) stopped: bool,
    pub(super) complete: bool,
    /// Bytes of parts still arriving that are already in the data file: readable through the
    /// page cache though not yet durable or recorded, so a reader waits for its own bytes,
    /// not for the whole part.
    pub(super) written: std::collections::HashMap<usize, Vec<Range<u64>>>,
    /// Where a demanded part's fetch begins when the reader's bytes lie inside it: their
    /// first byte then costs one round trip, not the part before them.
    pub(super) start_at: std::collections::HashMap<usize, u64>,
    /// Parts wholly written in this run whose CRC-64 is known, not yet synced and recorded:
    /// with the present parts they let the whole-object check run before the last fsync.
    pub(super) crc_known: std::collections::HashMap<usize, u64>,
    /// The GETs of each part in flight, so a read far ahead of a stream can split it.
    pub(super) segments:
        std::collections::HashMap<usize, segments::PartSegments<worker::PartFailure>>,
    /// The whole object's bytes are in the data file and match the server's CRC-64 (or it
    /// announced none): a read may finish on them, though the record may still be on its way.
    pub(super) verified: bool,
    /// For an object with a whole-object digest (S3's CRC64NVME or MD5): where its check,
    /// which reads every byte back once all are in, stands.
    pub(super) digest: DigestCheck,
}

/// The whole-object digest check of an object that has one (`ObjectIdentity::digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum DigestCheck {
    #[default]
    NotStarted,
    /// Reading the bytes back; the round tells a verdict from a check made stale by a part
    /// that failed its own check meanwhile (its bytes are fetched again).
    Running {
        round: u64,
    },
    Passed,
}

/// What noting a wholly written part found (`State::note_part_written`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartWritten {
    /// More parts to come, or the object was verified already.
    Noted,
    /// The last part: the parts' CRC-64s give the server's (or it announced none).
    Verified,
    /// The last part of an object with a whole-object digest: its check can start.
    CheckDigest,
}

/// What a verification of a byte range finds under the lock (`State::claim_checks`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CheckStep {
    /// Every byte is readable and every present part holding them was checked.
    Checked,
    /// Some byte is neither present nor written in this run: it must be fetched first.
    Missing,
    /// Parts this caller now owns the check of: `(part, recorded CRC-64)`.
    Check(Vec<(usize, u64)>),
    /// Another caller is checking some of the parts: its verdict comes with a notify.
    Wait,
}

impl State {
    pub(super) fn new(
        n: usize,
        present: FixedBitSet,
        part_crc: Vec<u64>,
        recorded: FixedBitSet,
    ) -> State {
        State {
            checked: FixedBitSet::with_capacity(n),
            checking: FixedBitSet::with_capacity(n),
            recorded,
            present,
            in_flight: vec![false; n],
            part_crc,
            failed: vec![None; n],
            paused: None,
            fatal: None,
            readahead: 0..0,
            pending_readahead: None,
            streams: Default::default(),
            stopped: false,
            complete: false,
            written: Default::default(),
            start_at: Default::default(),
            segments: Default::default(),
            crc_known: Default::default(),
            verified: false,
            digest: DigestCheck::NotStarted,
        }
    }

    /// The next step of verifying `range` before it is served: a part whose check is
    /// claimed here is marked `checking`, so two readers of one corrupt part can never both
    /// pass it (the loser waits for the winner's verdict instead of finding nothing to do).
    pub(super) fn claim_checks(&mut self, layout: PartLayout, range: Range<u64>) -> CheckStep {
        if !self.covers(layout, range.clone()) {
            return CheckStep::Missing;
        }
        let mut todo = Vec::new();
        let mut busy = false;
        for p in layout.parts_for(range) {
            if !self.present[p] || self.checked[p] {
                continue; // written in this run (checked as it streamed), or checked
            }
            if self.checking[p] {
                busy = true;
            } else {
                todo.push((p, self.part_crc[p]));
            }
        }
        if !todo.is_empty() {
            for &(p, _) in &todo {
                self.checking.insert(p);
            }
            CheckStep::Check(todo)
        } else if busy {
            CheckStep::Wait
        } else {
            CheckStep::Checked
        }
    }

    /// Whether every byte of `range` may be served without a check now: present, and each
    /// part holding them written in this run or checked.
    pub(super) fn servable_as_is(&self, layout: PartLayout, range: Range<u64>) -> bool {
        self.covers(layout, range.clone())
            && layout
                .parts_for(range)
                .all(|p| !self.present[p] || self.checked[p])
    }

    /// Applies the verdicts of a claimed check; returns the parts that failed, which are
    /// missing again (fetched again before anyone reads them).
    pub(super) fn finish_checks(&mut self, verdicts: &[(usize, bool)]) -> Vec<usize> {
        let mut failed = Vec::new();
        for &(p, ok) in verdicts {
            self.checking.set(p, false);
            if !self.present[p] || self.checked[p] {
                continue;
            }
            if ok {
                self.checked.insert(p);
            } else {
                self.present.set(p, false);
                self.complete = false;
                // Its bytes are fetched again: the whole object's digest is checked again.
                self.verified = false;
                self.digest = DigestCheck::NotStarted;
                failed.push(p);
            }
        }
        failed
    }

    /// Gives back claimed checks that will bring no verdict (the verifying read was
    /// cancelled): another reader claims them.
    pub(super) fn abandon_checks(&mut self, parts: &[usize]) {
        for &p in parts {
            self.checking.set(p, false);
        }
    }

    /// Whether every byte of `range` can be read: its parts are present, or the bytes are
    /// written already.
    pub(super) fn covers(&self, layout: PartLayout, range: Range<u64>) -> bool {
        layout.parts_for(range.clone()).all(|p| {
            if self.present[p] {
                return true;
            }
            let r = layout.range(p);
            let (from, to) = (range.start.max(r.start), range.end.min(r.end));
            self.written
                .get(&p)
                .is_some_and(|ws| ws.iter().any(|w| w.start <= from && to <= w.end))
        })
    }

    /// Every part present or wholly written.
    pub(super) fn all_fetched(&self) -> bool {
        self.present.count_ones(..) + self.crc_known.len() == self.present.len()
    }

    /// Notes that `part`'s bytes are all written with CRC-64 `crc`, and checks the whole
    /// object once every part is (a mismatch is left to `finish_if_complete`, which fails the
    /// hydration). An object with a whole-object digest is verified only by that digest's
    /// check, which the last part starts.
    pub(super) fn note_part_written(
        &mut self,
        layout: PartLayout,
        part: usize,
        crc: u64,
        expected: Option<u64>,
        has_digest: bool,
    ) -> PartWritten {
        self.crc_known.insert(part, crc);
        if self.verified || self.complete || !self.all_fetched() {
            return PartWritten::Noted;
        }
        if has_digest {
            return match self.digest {
                DigestCheck::NotStarted => PartWritten::CheckDigest,
                _ => PartWritten::Noted,
            };
        }
        let combined = layout.combined_crc(|p| {
            if self.present[p] {
                self.part_crc[p]
            } else {
                self.crc_known[&p]
            }
        });
        self.verified = expected.is_none_or(|e| e == combined);
        if self.verified {
            PartWritten::Verified
        } else {
            PartWritten::Noted
        }
    }

    /// Forgets what was written of `part` (its fetch failed, or its bytes were not kept):
    /// they are fetched again, so a whole-object digest that may have hashed them starts
    /// over (only wholly written parts are hashed). True when it did.
    pub(super) fn unwrite(&mut self, layout: PartLayout, part: usize) -> bool {
        let r = layout.range(part);
        let whole = self.crc_known.remove(&part).is_some()
            | self
                .written
                .remove(&part)
                .is_some_and(|ws| ws.iter().any(|w| w.start <= r.start && r.end <= w.end));
        let hashed = whole
            && matches!(
                self.digest,
                DigestCheck::Running { .. } | DigestCheck::Passed
            );
        if hashed {
            self.digest = DigestCheck::NotStarted;
            self.verified = false;
        }
        hashed
    }

    /// Notes `range` of `part` written (streams write contiguously, so it extends a run).
    pub(super) fn note_written(&mut self, part: usize, range: Range<u64>) {
        let runs = self.written.entry(part).or_default();
        runs.push(range);
        // Segments of a part (a split, a head fetched after its tail) meet: one run, so a
        // read across where they meet is covered too. A part has a few runs at most.
        runs.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(runs.len());
        for r in runs.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        *runs = merged;
    }
}
