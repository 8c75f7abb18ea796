//! What the cache may hold and what it holds: the capacity, the index of entries in LRU order
//! with the bytes each is charged, the budget the engine asks before each part (evicting
//! unopened entries least recently used first), and the rebuild of that index at start.
//! Eviction unlinks the checkpoint before the data, so a crash leaves the whole entry or none;
//! it decides under the index lock and unlinks after it (see `claims`). Must not start
//! hydrations or send requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::SystemTime;

use crate::hydrate::checkpoint::Checkpoint;
use crate::hydrate::{ObjectIdentity, SpaceBudget};

use super::claims::{Claim, Removed};
use super::index::Index;
use super::Cache;

/// Limits on what the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes the entries may take on disk (data blocks plus checkpoints).
    pub max_bytes: u64,
    /// Free space to leave on the cache's filesystem.
    pub min_free_disk: u64,
}

impl Capacity {
    /// Defaults: a quarter of the cache filesystem, and 5% of it (at most 5 GiB) left free.
    pub fn default_for(dir: &Path) -> Capacity {
        let (total, _) = disk_space(dir).unwrap_or((u64::MAX / 2, u64::MAX / 2));
        Capacity {
            max_bytes: total / 4,
            min_free_disk: (total / 20).min(5 << 30),
        }
    }

    pub fn unlimited() -> Capacity {
        Capacity {
            max_bytes: u64::MAX / 2,
            min_free_disk: 0,
        }
    }
}

/// (total, available) bytes of the filesystem holding `dir`.
pub fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * frsize,
        st.blocks_available() as u64 * frsize,
    ))
}

/// What the index knows of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Bytes charged against the capacity: present parts rounded to blocks, plus the record.
    pub charged: u64,
}

const BLOCK: u64 = 4096;

pub(super) fn charge_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

/// What an entry's checkpoint takes on disk, about: fixed fields plus each part's bit and CRC.
pub(super) fn checkpoint_charge(parts: usize, key_len: usize) -> u64 {
    charge_for(1024 + key_len as u64 * 2 + parts as u64 * 26)
}

/// The cache directory, `entries/`, `lock` and `status.json`: charged once, so the whole
/// directory (as `du` counts it) stays within the capacity.
pub(super) const FIXED_OVERHEAD: u64 = 4 * BLOCK;

/// Counters of a cache, for `status` and the unmount log line.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub no_space: AtomicU64,
}

pub(super) struct Shared {
    pub(super) entries: PathBuf,
    pub(super) capacity: Capacity,
    pub(super) part_size: u64,
    pub(super) index: Mutex<Index>,
    /// Notified when a claim on an entry is released (`claims`).
    pub(super) released: Condvar,
    pub(super) stats: CacheStats,
}

/// Why an entry's files are removed: counted and logged as an eviction only when it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    Evicted,
    Replaced,
}

/// An entry's two files: `<name>.ckpt` and `<name>.data`, the one place they are named.
pub(super) fn entry_files(entries: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        entries.join(format!("{name}.ckpt")),
        entries.join(format!("{name}.data")),
    )
}

/// The budget a hydration asks for room; weak, so hydrations do not keep the cache alive.
pub(super) struct Budget {
    pub(super) shared: std::sync::Weak<Shared>,
    pub(super) location: String,
}

impl SpaceBudget for Budget {
    fn reserve(&self, id: &ObjectIdentity, bytes: u64) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        shared.reserve(&name, id, charge_for(bytes))
    }

    fn release(&self, id: &ObjectIdentity, bytes: u64) {
        if let Some(shared) = self.shared.upgrade() {
            let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
            let mut idx = shared.index.lock().unwrap();
            idx.uncharge(&name, charge_for(bytes));
        }
    }
}

impl Shared {
    fn part_count(&self, size: u64) -> usize {
        size.div_ceil(self.part_size.max(1)) as usize
    }

    fn free_disk(&self) -> u64 {
        disk_space(&self.entries)
            .map(|(_, a)| a)
            .unwrap_or(u64::MAX)
    }

    pub(super) fn reserve(&self, name: &str, id: &ObjectIdentity, charge: u64) -> bool {
        // Asked before the lock: statvfs is I/O, and may be slow when the disk is.
        let free = (self.capacity.min_free_disk > 0).then(|| self.free_disk());
        let mut evicted = Vec::new();
        let reserved = {
            let mut idx = self.index.lock().unwrap();
            self.reserve_locked(&mut idx, name, id, charge, free, &mut evicted)
        };
        for r in evicted {
            self.finish_removal(r);
        }
        reserved
    }

    /// The decision, under the lock: the victims are taken out of the index into `evicted`
    /// (their files are unlinked by the caller once the lock is dropped).
    fn reserve_locked<'a>(
        &'a self,
        idx: &mut Index,
        name: &str,
        id: &ObjectIdentity,
        charge: u64,
        free_disk: Option<u64>,
        evicted: &mut Vec<Removed<'a>>,
    ) -> bool {
        // A hydration whose entry is being removed gets no more room: the entry is gone.
        if idx.claims.get(name) == Some(&Claim::Removing) {
            return false;
        }
        // Entries being unlinked count as free already.
        let disk_deficit = |idx: &Index| match free_disk {
            Some(free) => (self.capacity.min_free_disk + charge)
                .saturating_sub(free.saturating_add(idx.freeing)),
            None => 0,
        };
        // What evicting every unopened entry could give back: when the disk is short by more
        // than that (space used outside the cache), evicting would empty the cache for
        // nothing, so the part is refused instead.
        if disk_deficit(idx) > 0 && disk_deficit(idx) > idx.evictable_bytes(name) {
            self.stats.no_space.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        loop {
            let over_cap = idx.used + charge > self.capacity.max_bytes;
            if !over_cap && disk_deficit(idx) == 0 {
                break;
            }
            // The least recently used entry that no handle has open and no one is working
            // on, other than this one.
            let victim = idx.victim(name);
            let Some(victim) = victim else {
                self.stats.no_space.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            evicted.push(self.detach(idx, &victim, Removal::Evicted));
        }
        if !idx.charge(name, charge) {
            let parts = self.part_count(id.size);
            let record = checkpoint_charge(parts, id.key.len());
            let entry = IndexEntry {
                bucket: id.bucket.clone(),
                key: id.key.clone(),
                size: id.size,
                charged: charge + record,
            };
            idx.insert(name, entry);
        }
        true
    }
}

/// Removes leftovers of a crash: temp checkpoints, probes, and data files whose checkpoint
/// is gone (an eviction or replacement that was interrupted). Unknown files are left alone.
pub(super) fn clean_strays(entries: &Path) {
    let Ok(rd) = std::fs::read_dir(entries) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let orphan_data = name
            .strip_suffix(".data")
            .is_some_and(|stem| !entry_files(entries, stem).0.exists());
        if name.contains(".tmp-") || name.starts_with(".probe-") || orphan_data {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads every checkpoint (oldest use first) into the LRU order and the bytes in use.
/// Unreadable checkpoints are removed with their data.
pub(super) fn build_index(entries: &Path) -> (lru::LruCache<String, IndexEntry>, u64) {
    let mut found: Vec<(SystemTime, String, IndexEntry)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(entries) {
        for e in rd.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let Some(name) = fname.strip_suffix(".ckpt") else {
                continue;
            };
            match Checkpoint::load(&e.path()) {
                Ok(c) => {
                    let meta = e.metadata().ok();
                    let used = meta
                        .as_ref()
                        .and_then(|m| m.modified().ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let record = checkpoint_charge(c.layout().count(), c.key.len())
                        .max(charge_for(meta.map(|m| m.len()).unwrap_or(0)));
                    found.push((
                        used,
                        name.to_string(),
                        IndexEntry {
                            charged: charge_for(c.bytes_present()) + record,
                            bucket: c.bucket,
                            key: c.key,
                            size: c.size,
                        },
                    ));
                }
                Err(reason) => {
                    tracing::warn!(
                        "removing cache entry {name}: its checkpoint is unusable: {reason}"
                    );
                    let _ = std::fs::remove_file(e.path());
                    let _ = std::fs::remove_file(entry_files(entries, name).1);
                }
            }
        }
    }
    found.sort_by_key(|e| e.0);
    let mut lru = lru::LruCache::unbounded();
    let mut used = 0;
    for (_, name, entry) in found {
        used += entry.charged;
        lru.put(name, entry);
    }
    (lru, used)
}
