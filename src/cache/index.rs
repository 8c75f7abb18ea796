//! The index of a cache: each entry's charge, which entries handles have open, the running
//! hydrations, what was checked, and who works on which entry (`claims`). Entries no handle
//! has open are kept apart, in LRU order, with a running total of their bytes, so a space
//! reservation costs what it evicts, not the number of entries: no sum and no scan over
//! every entry under the lock. Must not do file I/O: it is read and changed under the lock.

use std::collections::HashMap;

use crate::hydrate::{Checked, Hydration, ObjectIdentity};

use super::capacity::IndexEntry;
use super::claims::Claim;

pub(super) struct Index {
    /// Entries no handle has open: eviction's candidates, least recently used last.
    unopened: lru::LruCache<String, IndexEntry>,
    /// Entries handles have open, never evicted (an entry is here exactly when `open` has
    /// it and it is charged).
    pinned: HashMap<String, IndexEntry>,
    /// Bytes charged to `unopened`, kept as it changes.
    unopened_bytes: u64,
    /// Bytes charged against the capacity now (every entry, and the fixed overhead).
    pub(super) used: u64,
    /// Handles open (or opening) on each entry.
    open: HashMap<String, usize>,
    pub(super) active: HashMap<String, Hydration>,
    /// Parts each entry's earlier hydrations checked in this mount's life (for the version
    /// they belonged to): a reopen trusts them instead of reading the entry back again.
    pub(super) checked: HashMap<String, (ObjectIdentity, Checked)>,
    /// Entries whose files someone is working on outside the lock (`claims`): opens of them
    /// wait, eviction passes them over. Never also in `active`.
    pub(super) claims: HashMap<String, Claim>,
    /// Bytes of removed entries whose files are not unlinked yet: the disk gets them back
    /// soon, so they count as free (eviction would otherwise go on while they are unlinked).
    pub(super) freeing: u64,
    /// Entries a reservation looked at, for a test that its cost follows what it evicts.
    pub(super) examined: u64,
    /// Entries whose hydration failed its whole-object check since their last open: the
    /// kernel may hold pages of those bytes, so the next open must not keep its page cache
    /// (`Cache::take_failed_check`).
    pub(super) failed_check: std::collections::HashSet<String>,
}

impl Index {
    /// An index of `unopened` entries (least recently used last), `used` bytes in all.
    pub(super) fn new(unopened: lru::LruCache<String, IndexEntry>, used: u64) -> Index {
        Index {
            unopened_bytes: unopened.iter().map(|(_, e)| e.charged).sum(),
            unopened,
            pinned: HashMap::new(),
            used,
            open: HashMap::new(),
            active: HashMap::new(),
            checked: HashMap::new(),
            claims: HashMap::new(),
            freeing: 0,
            examined: 0,
            failed_check: Default::default(),
        }
    }

    pub(super) fn is_open(&self, name: &str) -> bool {
        self.open.contains_key(name)
    }

    /// A handle opened `name`: it is not evicted until every handle closed it.
    pub(super) fn opened(&mut self, name: &str) {
        let n = self.open.entry(name.to_string()).or_default();
        *n += 1;
        if *n == 1 {
            if let Some(e) = self.unopened.pop(name) {
                self.unopened_bytes -= e.charged;
                self.pinned.insert(name.to_string(), e);
            }
        }
    }

    /// A handle of `name` closed; true when it was the last one. The entry becomes the most
    /// recently used of those eviction may take.
    pub(super) fn closed(&mut self, name: &str) -> bool {
        let Some(n) = self.open.get_mut(name) else {
            return false;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return false;
        }
        self.open.remove(name);
        if let Some(e) = self.pinned.remove(name) {
            self.unopened_bytes += e.charged;
            self.unopened.put(name.to_string(), e);
        }
        true
    }

    /// Adds `bytes` to `name`'s charge (and to `used`); false when it has no entry yet.
    pub(super) fn charge(&mut self, name: &str, bytes: u64) -> bool {
        let e = match self.unopened.peek_mut(name) {
            Some(e) => {
                self.unopened_bytes += bytes;
                e
            }
            None => match self.pinned.get_mut(name) {
                Some(e) => e,
                None => return false,
            },
        };
        e.charged += bytes;
        self.used += bytes;
        true
    }

    /// Takes back up to `bytes` of `name`'s charge.
    pub(super) fn uncharge(&mut self, name: &str, bytes: u64) {
        let e = match self.unopened.peek_mut(name) {
            Some(e) => {
                let bytes = bytes.min(e.charged);
                self.unopened_bytes -= bytes;
                e
            }
            None => match self.pinned.get_mut(name) {
                Some(e) => e,
                None => return,
            },
        };
        let bytes = bytes.min(e.charged);
        e.charged -= bytes;
        self.used = self.used.saturating_sub(bytes);
    }

    /// A new entry (charged as it is): the most recently used.
    pub(super) fn insert(&mut self, name: &str, e: IndexEntry) {
        self.used += e.charged;
        if self.is_open(name) {
            self.pinned.insert(name.to_string(), e);
        } else {
            self.unopened_bytes += e.charged;
            self.unopened.put(name.to_string(), e);
        }
    }

    /// Takes `name`'s entry out, its charge with it.
    pub(super) fn remove(&mut self, name: &str) -> Option<IndexEntry> {
        let e = match self.unopened.pop(name) {
            Some(e) => {
                self.unopened_bytes -= e.charged;
                e
            }
            None => self.pinned.remove(name)?,
        };
        self.used = self.used.saturating_sub(e.charged);
        Some(e)
    }

    /// Whether eviction may take `name` now: no handle has it open and no one works on it.
    fn evictable(&self, name: &str) -> bool {
        !self.is_open(name) && !self.claims.contains_key(name)
    }

    /// What evicting every entry it may take, `except` aside, would give back: the running
    /// total, less the few entries claimed now.
    pub(super) fn evictable_bytes(&mut self, except: &str) -> u64 {
        let charged = |name: &str| self.unopened.peek(name).map_or(0, |e| e.charged);
        let mut held = charged(except);
        let mut examined = 1;
        for name in self.claims.keys().filter(|k| *k != except) {
            examined += 1;
            held += charged(name);
        }
        self.examined += examined;
        self.unopened_bytes.saturating_sub(held)
    }

    /// The least recently used entry eviction may take, other than `except`: only claimed
    /// entries and `except` are passed over.
    pub(super) fn victim(&mut self, except: &str) -> Option<String> {
        let mut examined = 0;
        let found = self
            .unopened
            .iter()
            .rev()
            .inspect(|_| examined += 1)
            .map(|(k, _)| k)
            .find(|k| *k != except && self.evictable(k))
            .cloned();
        self.examined += examined;
        found
    }

    /// Every entry, from least to most recently used (those open last).
    pub(super) fn lru_first(&self) -> Vec<IndexEntry> {
        let mut pinned: Vec<&IndexEntry> = self.pinned.values().collect();
        pinned.sort_by(|a, b| a.key.cmp(&b.key));
        let unopened = self.unopened.iter().rev().map(|(_, e)| e);
        unopened.chain(pinned).cloned().collect()
    }
}
