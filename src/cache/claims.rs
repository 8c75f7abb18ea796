//! Per-entry claims, so that no file I/O runs under the index lock (a slow disk must stall
//! one entry, never every open, close, reservation and status write). What to do with an
//! entry is decided under the lock, which then marks the entry claimed and is dropped; the
//! I/O (stopping a hydration, which writes and syncs its records; reading a checkpoint;
//! creating files; unlinking them) runs outside it, and the claim is released under the lock
//! again. Whoever meets a claim on the same entry waits for it (an open, a discard); nothing
//! else does: eviction passes claimed entries over. The claim's owner always releases it
//! (`ClaimGuard` on every path, a panic included), so every wait has an owner that ends it.
//! Must not decide what to evict or when a hydration is done: callers decide.

use std::sync::{MutexGuard, PoisonError};

use crate::hydrate::Hydration;

use super::capacity::{entry_files, Removal, Shared};
use super::index::Index;

/// What the owner of an entry's claim is doing with its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Resuming or creating its hydration (and first stopping or removing the one before).
    Opening,
    /// Stopping its finished hydration (the last records written and synced).
    Stopping,
    /// Removing it: its hydration stopped, then the checkpoint, then the data unlinked.
    Removing,
}

/// An entry taken out of the index, whose files are still to go: its hydration is stopped
/// and its files unlinked by `Shared::finish_removal`, outside the lock.
#[must_use = "the files of a removed entry are unlinked by finish_removal"]
pub(super) struct Removed<'a> {
    name: String,
    /// The entry's claim when the removal took one (an eviction, a discard); an open that
    /// replaces its entry removes it under its own claim.
    claim: Option<ClaimGuard<'a>>,
    hydration: Option<Hydration>,
    /// Bytes the unlinks give back to the disk (counted in `Index::freeing` until then).
    charged: u64,
}

/// An entry's claim; released when dropped (an error or a panic on the way included).
pub(super) struct ClaimGuard<'a> {
    shared: &'a Shared,
    name: String,
    /// Released by `release_with` already (the name may be someone else's claim by now).
    released: bool,
}

impl ClaimGuard<'_> {
    /// Releases the claim, first applying `f` in the same critical section (so, for an open,
    /// no eviction comes between taking the hydration and counting the open).
    pub(super) fn release_with(mut self, f: impl FnOnce(&mut Index)) {
        let mut idx = self.shared.index.lock().unwrap();
        f(&mut idx);
        self.release(idx);
    }

    fn release(&mut self, mut idx: MutexGuard<'_, Index>) {
        idx.claims.remove(&self.name);
        self.released = true;
        drop(idx);
        self.shared.released.notify_all();
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let idx = self
            .shared
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.release(idx);
    }
}

impl Shared {
    /// The index, locked once no one holds a claim on `name`: the owner of a claim ends it
    /// when its I/O is done.
    pub(super) fn lock_unclaimed(&self, name: &str) -> MutexGuard<'_, Index> {
        let mut idx = self.index.lock().unwrap();
        while idx.claims.contains_key(name) {
            idx = self.released.wait(idx).unwrap();
        }
        idx
    }

    /// Claims `name` (unclaimed: the caller checked under this same lock).
    pub(super) fn claim(&self, idx: &mut Index, name: &str, what: Claim) -> ClaimGuard<'_> {
        let before = idx.claims.insert(name.to_string(), what);
        debug_assert!(before.is_none(), "{name} was claimed already");
        ClaimGuard {
            shared: self,
            name: name.to_string(),
            released: false,
        }
    }

    /// Under the lock: takes an entry out of the index, the one way there is: its running
    /// hydration, what was checked of it, its charge (counted and logged as an eviction when
    /// it is one). Its files go in `finish_removal`, with the entry claimed until then.
    pub(super) fn take_out(&self, idx: &mut Index, name: &str, why: Removal) -> Removed<'_> {
        let hydration = idx.active.remove(name);
        idx.checked.remove(name);
        let mut charged = 0;
        if let Some(e) = idx.remove(name) {
            charged = e.charged;
            if why == Removal::Evicted {
                self.stats
                    .evictions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.stats
                    .evicted_bytes
                    .fetch_add(e.charged, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(bucket = %e.bucket, key = %e.key, bytes = e.charged, "evicted from the cache");
            }
        }
        idx.freeing += charged;
        Removed {
            name: name.to_string(),
            claim: None,
            hydration,
            charged,
        }
    }

    /// `take_out` of an unclaimed entry, claimed (`Removing`) until its files are gone: an
    /// open of it waits for the unlinks instead of resuming files about to vanish.
    pub(super) fn detach(&self, idx: &mut Index, name: &str, why: Removal) -> Removed<'_> {
        let claim = self.claim(idx, name, Claim::Removing);
        let mut r = self.take_out(idx, name, why);
        r.claim = Some(claim);
        r
    }

    /// Outside the lock: stops the removed entry's hydration (no write of it starts
    /// afterwards), then unlinks the checkpoint (from then on the entry does not exist),
    /// then the data, so a crash leaves the whole entry or none. Open handles keep their
    /// (now unlinked) file.
    pub(super) fn finish_removal(&self, r: Removed<'_>) {
        if let Some(h) = &r.hydration {
            h.stop();
        }
        let (ckpt, data) = entry_files(&self.entries, &r.name);
        let _ = std::fs::remove_file(&ckpt);
        let _ = std::fs::remove_file(&data);
        let gone = |idx: &mut Index| idx.freeing = idx.freeing.saturating_sub(r.charged);
        match r.claim {
            Some(claim) => claim.release_with(gone),
            None => gone(&mut self.index.lock().unwrap()),
        }
    }
}
