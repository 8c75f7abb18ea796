//! The cache directory of a mount: one entry per object (a data file and its checkpoint,
//! named by a hash of store, bucket and key, never by the key text), the lock that keeps a
//! second process out, and the registry of running hydrations so all handles on an object
//! share one. It asks the `hydrate` engine for bytes and never issues HTTP requests itself.
//!
//! Layout: `<dir>/lock` (flock + pid), `<dir>/entries/<hash>.data`, `<dir>/entries/<hash>.ckpt`,
//! `<dir>/status.json` (written by a running mount for `ossmount status`).
//! The checkpoint is the authority: a data file without a valid, matching checkpoint is
//! never trusted and is removed. Capacity: before each part the engine asks for room; entries
//! that no handle has open are evicted least recently used first (the order is rebuilt at
//! start from each checkpoint's mtime, which an open refreshes). Eviction unlinks the
//! checkpoint before the data, so a crash leaves the whole entry or none. No file I/O runs
//! under the index lock: decisions are taken under it, and the I/O after it, on an entry
//! claimed meanwhile (`claims`), so a slow disk stalls that entry alone.

mod capacity;
mod claims;
mod dir;
mod entry;
mod index;
mod principals;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

pub use capacity::{disk_space, CacheStats, Capacity, IndexEntry};
pub use dir::{cache_base_dir, default_cache_dir, lock_is_held, private_dir};
pub use entry::OpenEntry;

use crate::hydrate::checkpoint::{Checkpoint, Verdict};
use crate::hydrate::{
    Checked, ConnectionLimiter, HydrateError, Hydration, HydrationConfig, HydrationFiles,
    ObjectIdentity, Prefetched,
};
use crate::store::ObjectStore;
use capacity::{build_index, clean_strays, entry_files, Budget, Removal, Shared, FIXED_OVERHEAD};
use claims::Claim;
use index::Index;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path} cannot be used: {source}; choose another with --cache-dir")]
    Unusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache directory {path} is in use by another ossmount process{pid}; unmount it first or use another --cache-dir")]
    Locked { path: PathBuf, pid: String },
    #[error("cache directory {path} {reason}: a cache holds a bucket's bytes and key names, so it must be a real directory owned by you; choose another --cache-dir")]
    NotPrivate { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub parts_present: usize,
    pub parts_total: usize,
    pub etag: String,
    /// Every part present and not failed the whole-object CRC-64 check.
    pub complete: bool,
    /// Complete with a passed CRC-64 check (false when the server sent no CRC).
    pub verified: bool,
}

pub struct Cache {
    dir: PathBuf,
    entries: PathBuf,
    store: Arc<dyn ObjectStore>,
    location: String,
    cfg: HydrationConfig,
    limiter: Arc<ConnectionLimiter>,
    shared: Arc<Shared>,
    principals: Arc<principals::Principals>,
    _lock: Arc<Flock<File>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.dir.display())
    }
}

impl Cache {
    pub fn open(
        dir: &Path,
        store: Arc<dyn ObjectStore>,
        cfg: HydrationConfig,
        limiter: Arc<ConnectionLimiter>,
        capacity: Capacity,
    ) -> Result<Cache, CacheError> {
        let entries = dir.join("entries");
        dir::private_dir(dir)?;
        dir::private_dir(&entries)?;
        let probe = entries.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"ok")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| CacheError::Unusable {
                path: dir.to_path_buf(),
                source,
            })?;
        let lock = dir::lock_dir(dir)?;
        clean_strays(&entries);
        let (lru, used) = build_index(&entries);
        let shared = Arc::new(Shared {
            entries: entries.clone(),
            capacity,
            part_size: cfg.part_size,
            index: Mutex::new(Index::new(lru, used + FIXED_OVERHEAD)),
            released: Default::default(),
            stats: CacheStats::default(),
        });
        let location = store.location();
        let principals = Arc::new(principals::Principals::load(dir));
        principals.add(&store.principal());
        let mut cfg = cfg;
        cfg.budget = Some(Arc::new(Budget {
            shared: Arc::downgrade(&shared),
            location: location.clone(),
        }));
        Ok(Cache {
            dir: dir.to_path_buf(),
            entries,
            location,
            store,
            cfg,
            limiter,
            shared,
            principals,
            _lock: Arc::new(lock),
        })
    }

    /// The same cache seen through another store (another mount's endpoint or credentials):
    /// one index, capacity, LRU, lock and set of running hydrations, so an object is one
    /// entry and one hydration whichever mount opens it. Entries are named by the store's
    /// location (endpoint), bucket and key; a hydration this view starts fetches with this
    /// view's store.
    pub fn for_store(&self, store: Arc<dyn ObjectStore>) -> Cache {
        let location = store.location();
        self.principals.add(&store.principal());
        let mut cfg = self.cfg.clone();
        cfg.budget = Some(Arc::new(Budget {
            shared: Arc::downgrade(&self.shared),
            location: location.clone(),
        }));
        Cache {
            dir: self.dir.clone(),
            entries: self.entries.clone(),
            store,
            location,
            cfg,
            limiter: self.limiter.clone(),
            shared: self.shared.clone(),
            principals: self.principals.clone(),
            _lock: self._lock.clone(),
        }
    }

    /// Mounts of more than one principal have read through this cache: each must prove it
    /// may read an object before it is served it from here (see `principals`).
    pub fn shared_by_principals(&self) -> bool {
        self.principals.several()
    }

    pub fn capacity(&self) -> Capacity {
        self.shared.capacity
    }

    /// The part size new entries are split into.
    pub fn part_size(&self) -> u64 {
        self.cfg.part_size
    }

    /// Bytes charged against the capacity now.
    pub fn used_bytes(&self) -> u64 {
        self.shared.index.lock().unwrap().used
    }

    pub fn stats(&self) -> &CacheStats {
        &self.shared.stats
    }

    /// The connection limit shared by every hydration (parts in flight, for metrics).
    pub fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.limiter
    }

    pub fn engine_stats(&self) -> &crate::hydrate::EngineStats {
        &self.cfg.stats
    }

    /// The entries from least to most recently used.
    pub fn entries_lru_first(&self) -> Vec<IndexEntry> {
        self.shared.index.lock().unwrap().lru_first()
    }

    /// A handle opened this entry: it is not evicted until `close_entry`.
    pub fn open_entry(&self, id: &ObjectIdentity) -> Result<OpenEntry, HydrateError> {
        self.open_entry_with(id, None)
    }

    /// `open_entry` with bytes already asked for when `id` was learned (a small object's one
    /// GET, or a listed file's first part's GET): the entry is filled from them rather than
    /// fetched again.
    pub fn open_entry_with(
        &self,
        id: &ObjectIdentity,
        prefetched: Option<Prefetched>,
    ) -> Result<OpenEntry, HydrateError> {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.lock_unclaimed(&name);
        let running = idx
            .active
            .get(&name)
            .filter(|h| h.failure().is_none() && h.identity() == id)
            .cloned();
        let h = match running {
            // One critical section: no eviction can come between taking the hydration and
            // counting the open.
            Some(h) => {
                // (A part's answered GET is dropped: this hydration fetches its parts.)
                if let Some(Prefetched::Whole(body)) = prefetched {
                    h.supply(body);
                }
                idx.opened(&name);
                drop(idx);
                h
            }
            None => {
                // The entry is claimed while its files are opened, outside the lock; the
                // claim goes in the same critical section that counts the open.
                let claim = self.shared.claim(&mut idx, &name, Claim::Opening);
                let old = idx.active.remove(&name);
                if old
                    .as_ref()
                    .and_then(|h| h.failure())
                    .is_some_and(|e| e.is_corrupt())
                {
                    idx.failed_check.insert(name.clone());
                }
                let earlier_checks = idx.checked.remove(&name).filter(|(v, _)| v == id);
                drop(idx);
                let h = self.start_hydration(id, &name, old, earlier_checks, prefetched)?;
                claim.release_with(|idx| {
                    idx.active.insert(name.clone(), h.clone());
                    idx.opened(&name);
                });
                h
            }
        };
        // The checkpoint's mtime is the entry's last use, for the order after a restart.
        if let Ok(f) = File::options()
            .write(true)
            .open(entry_files(&self.entries, &name).0)
        {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(OpenEntry { hydration: h })
    }

    /// A handle let go of the entry of `id` (see `close`, which also stops its hydration).
    pub fn close_entry(&self, id: &ObjectIdentity) {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.index.lock().unwrap();
        if !idx.closed(&name) {
            return;
        }
        if let Some(removed) = self.take_failed_check_entry(&mut idx, &name) {
            drop(idx);
            self.shared.finish_removal(removed);
            return;
        }
        let reaped = self.take_finished(&mut idx, &name);
        drop(idx);
        if let Some((claim, h)) = reaped {
            Cache::stop_reaped(claim, &name, h);
        }
    }

    /// Lets go of hydrations no handle has open that have nothing more to do, so descriptors
    /// and memory follow what is open, not what was ever opened (a later open resumes from
    /// the checkpoint). Run after each close and now and then by a mount.
    pub fn reap(&self) {
        let mut idx = self.shared.index.lock().unwrap();
        let unopened: Vec<String> = idx
            .active
            .keys()
            .filter(|k| !idx.is_open(k))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        let mut reaped = Vec::new();
        for name in unopened {
            if let Some(r) = self.take_failed_check_entry(&mut idx, &name) {
                removed.push(r);
            } else if let Some((claim, h)) = self.take_finished(&mut idx, &name) {
                reaped.push((claim, name, h));
            }
        }
        drop(idx);
        for r in removed {
            self.shared.finish_removal(r);
        }
        for (claim, name, h) in reaped {
            Cache::stop_reaped(claim, &name, h);
        }
    }

    /// Takes out (to be removed, files and all) an unopened entry whose hydration failed its
    /// whole-object check: its parts passed their own CRC-64s, so a later open would resume
    /// them and fail the check again. Notes it for `take_failed_check`.
    fn take_failed_check_entry(&self, idx: &mut Index, name: &str) -> Option<claims::Removed<'_>> {
        let failed = idx.active.get(name)?.failure()?;
        if !failed.is_corrupt() {
            return None;
        }
        idx.failed_check.insert(name.to_string());
        Some(self.shared.detach(idx, name, Removal::Replaced))
    }

    /// Whether the object's entry failed its whole-object check since it was last asked (and
    /// forgets it): an open then drops the kernel's pages of the version, which may hold
    /// bytes served before the check, even when no read saw the failure.
    pub fn take_failed_check(&self, bucket: &str, key: &str) -> bool {
        let name = Cache::entry_name(&self.location, bucket, key);
        self.shared.index.lock().unwrap().failed_check.remove(&name)
    }

    /// Takes `name`'s hydration out (to close its data file) when it is complete or failed,
    /// or when it does not go on after close (kept while parts are still arriving, so they
    /// are not wasted). One that fetches the whole object goes on until it is complete. The
    /// entry stays claimed until `stop_reaped` has stopped it, outside the lock.
    fn take_finished(
        &self,
        idx: &mut Index,
        name: &str,
    ) -> Option<(claims::ClaimGuard<'_>, Hydration)> {
        let h = idx.active.get(name)?;
        let finished = h.is_complete() || h.failure().is_some();
        if !(finished || (!h.continues_after_close() && h.is_idle())) {
            return None;
        }
        let h = idx.active.remove(name)?;
        Some((self.shared.claim(idx, name, Claim::Stopping), h))
    }

    /// Stops a reaped hydration (its last records written and synced), then keeps what it
    /// checked for the next open of the same version, as the claim ends.
    fn stop_reaped(claim: claims::ClaimGuard<'_>, name: &str, h: Hydration) {
        h.stop();
        claim.release_with(|idx| {
            if h.failure().is_none() {
                let kept = (h.identity().clone(), h.checked());
                idx.checked.insert(name.to_string(), kept);
            }
        });
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry name for an object: a hash of where it lives, never its key text.
    pub fn entry_name(location: &str, bucket: &str, key: &str) -> String {
        let mut h = Sha256::new();
        for part in [location, bucket, key] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    fn files(&self, name: &str) -> HydrationFiles {
        let (checkpoint, data) = entry_files(&self.entries, name);
        HydrationFiles {
            data,
            checkpoint: Some(checkpoint),
            data_mode: 0o600,
        }
    }

    /// The hydration of this exact object version when none is running (the caller holds
    /// the entry's claim, not the index lock): `old`, a hydration of another version or one
    /// that failed, is stopped first; then the entry is resumed from its checkpoint (trusting
    /// the parts an earlier hydration of it checked in this mount's life), else started
    /// afresh. A different version replaces the entry (open handles on the old version keep
    /// reading their old, unlinked file), and so does a hydration that failed for good (the
    /// object changed, or its bytes failed the CRC-64 check): the next open starts afresh
    /// instead of meeting the same failure.
    fn start_hydration(
        &self,
        id: &ObjectIdentity,
        name: &str,
        old: Option<Hydration>,
        earlier_checks: Option<(ObjectIdentity, Checked)>,
        prefetched: Option<Prefetched>,
    ) -> Result<Hydration, HydrateError> {
        let mut start_fresh = false;
        if let Some(h) = old {
            match h.failure() {
                None => {
                    tracing::info!(bucket = %id.bucket, key = %id.key, "object changed on the server; replacing its cache entry")
                }
                Some(e) => {
                    tracing::info!(bucket = %id.bucket, key = %id.key, "starting the entry afresh after: {e}");
                    start_fresh = true;
                }
            }
            h.stop();
        }
        let files = self.files(name);
        let ckpt_path = files
            .checkpoint
            .clone()
            .expect("cache entries have checkpoints");
        let resume = if ckpt_path.exists() && !start_fresh {
            match Checkpoint::load(&ckpt_path)
                .and_then(|c| c.check_identity(&self.location, id, &files.data).map(|_| c))
            {
                Ok(c) if c.verdict() == Verdict::Corrupt => {
                    tracing::warn!(bucket = %id.bucket, key = %id.key, "starting a fresh cache entry: the recorded parts fail the object's CRC-64");
                    None
                }
                Ok(c) => Some(c),
                Err(reason) => {
                    tracing::info!(bucket = %id.bucket, key = %id.key, "starting a fresh cache entry: the old one is unusable: {reason}");
                    None
                }
            }
        } else {
            None
        };
        if resume.is_none() {
            let removed = {
                let mut idx = self.shared.index.lock().unwrap();
                self.shared.take_out(&mut idx, name, Removal::Replaced)
            };
            self.shared.finish_removal(removed);
        }
        let h = Hydration::start_prefetched(
            self.store.clone(),
            id.clone(),
            files,
            self.cfg.clone(),
            self.limiter.clone(),
            resume.as_ref(),
            earlier_checks.as_ref().map(|(_, checked)| checked),
            prefetched,
        )?;
        Ok(h)
    }

    /// Drops an object's entry (its version changed, or its bytes failed the CRC-64 check):
    /// the next open starts afresh. Handles open on it keep what their file holds.
    pub fn discard(&self, id: &ObjectIdentity) {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.lock_unclaimed(&name);
        if idx.active.get(&name).is_some_and(|h| h.identity() != id) {
            return; // a newer version already replaced it
        }
        let removed = self.shared.detach(&mut idx, &name, Removal::Replaced);
        drop(idx);
        self.shared.finish_removal(removed);
    }

    /// Stops every hydration and waits for their checkpoint writes to finish.
    pub async fn shutdown(&self) {
        let all: Vec<Hydration> = self.active();
        for h in all {
            h.shutdown().await;
        }
    }

    /// The identity recorded by this object's complete cache entry, if it has one: lets a
    /// fully cached file be opened while the server cannot be reached.
    pub fn cached_identity(&self, bucket: &str, key: &str) -> Option<ObjectIdentity> {
        let name = Cache::entry_name(&self.location, bucket, key);
        let files = self.files(&name);
        let c = Checkpoint::load(files.checkpoint.as_ref()?).ok()?;
        let complete = matches!(c.verdict(), Verdict::Complete | Verdict::Unverified);
        if !(complete && c.bucket == bucket && c.key == key && c.store == self.location) {
            return None;
        }
        Some(c.identity())
    }

    /// Parts present and total, ETag, and whether complete, for an object's entry: from its
    /// running hydration, else from its checkpoint. `None` when nothing is cached.
    pub fn entry_state(&self, bucket: &str, key: &str) -> Option<EntryState> {
        let name = Cache::entry_name(&self.location, bucket, key);
        if let Some(h) = self.shared.index.lock().unwrap().active.get(&name) {
            let p = h.progress();
            return Some(EntryState {
                parts_present: p.parts_present,
                parts_total: p.parts_total,
                etag: h.identity().etag.clone(),
                complete: p.complete,
                // Complete means the whole-object digest passed, where there is one.
                verified: p.complete
                    && (h.identity().crc64.is_some() || h.identity().digest.is_some()),
            });
        }
        let c = Checkpoint::load(self.files(&name).checkpoint.as_ref()?).ok()?;
        let verdict = c.verdict();
        // A whole-object digest is checked by reading the object back, which a record cannot
        // show: verified if a hydration of this version passed it in this mount's life.
        let digest_passed = c.digest.is_some()
            && self
                .shared
                .index
                .lock()
                .unwrap()
                .checked
                .get(&name)
                .is_some_and(|(id, checked)| checked.digest_passed && *id == c.identity());
        Some(EntryState {
            parts_present: c.parts_present(),
            parts_total: c.layout().count(),
            complete: matches!(verdict, Verdict::Complete | Verdict::Unverified),
            verified: verdict == Verdict::Complete
                || (verdict == Verdict::Unverified && digest_passed),
            etag: c.etag,
        })
    }

    pub fn active(&self) -> Vec<Hydration> {
        let idx = self.shared.index.lock().unwrap();
        idx.active.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
