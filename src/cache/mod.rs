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
//! checkpoint before the data, so a crash leaves the whole entry or none.

mod capacity;
mod dir;
mod principals;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

pub use capacity::{disk_space, CacheStats, Capacity, IndexEntry};
pub use dir::{cache_base_dir, default_cache_dir, lock_is_held, private_dir};

use crate::hydrate::checkpoint::{Checkpoint, Verdict};
use crate::hydrate::{
    ConnectionLimiter, HydrateError, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
};
use crate::store::ObjectStore;
use capacity::{
    build_index, clean_strays, entry_files, Budget, Index, Removal, Shared, FIXED_OVERHEAD,
};
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
            index: Mutex::new(Index {
                lru,
                used: used + FIXED_OVERHEAD,
                open: HashMap::new(),
                active: HashMap::new(),
                checked: HashMap::new(),
            }),
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
        let idx = self.shared.index.lock().unwrap();
        idx.lru.iter().rev().map(|(_, e)| e.clone()).collect()
    }

    /// A handle opened this entry: it is not evicted until `close_entry`.
    pub fn open_entry(&self, id: &ObjectIdentity) -> Result<Hydration, HydrateError> {
        self.open_entry_with(id, None)
    }

    /// `open_entry` with the whole object's bytes already fetched (a small object's one GET
    /// that also told `id`): the entry is filled from them rather than fetched again.
    pub fn open_entry_with(
        &self,
        id: &ObjectIdentity,
        body: Option<bytes::Bytes>,
    ) -> Result<Hydration, HydrateError> {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        // One critical section: no eviction can come between taking the hydration and
        // counting the open.
        let mut idx = self.shared.index.lock().unwrap();
        let h = self.hydration_locked(&mut idx, id, body)?;
        *idx.open.entry(name.clone()).or_default() += 1;
        idx.lru.get(&name);
        drop(idx);
        // The checkpoint's mtime is the entry's last use, for the order after a restart.
        if let Ok(f) = File::options()
            .write(true)
            .open(entry_files(&self.entries, &name).0)
        {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(h)
    }

    pub fn close_entry(&self, id: &ObjectIdentity) {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.index.lock().unwrap();
        if let Some(n) = idx.open.get_mut(&name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                idx.open.remove(&name);
                Cache::reap_entry(&mut idx, &name);
            }
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
            .filter(|k| !idx.open.contains_key(*k))
            .cloned()
            .collect();
        for name in unopened {
            Cache::reap_entry(&mut idx, &name);
        }
    }

    /// Drops `name`'s hydration (closing its data file) when it is complete or failed, or
    /// when it does not go on after close (kept while parts are still arriving, so they are
    /// not wasted). One that fetches the whole object goes on until it is complete.
    fn reap_entry(idx: &mut Index, name: &str) {
        let Some(h) = idx.active.get(name) else {
            return;
        };
        let finished = h.is_complete() || h.failure().is_some();
        if finished || (!h.continues_after_close() && h.is_idle()) {
            h.stop();
            if h.failure().is_none() {
                let kept = (h.identity().clone(), h.checked_parts());
                idx.checked.insert(name.to_string(), kept);
            }
            idx.active.remove(name);
        }
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

    /// The hydration of this exact object version: the running one if there is one, else one
    /// resumed from the entry's checkpoint (trusting the parts an earlier hydration of it
    /// checked in this mount's life), else a fresh one. A different version replaces the
    /// entry (open handles on the old version keep reading their old, unlinked file), and so
    /// does a hydration that failed for good (the object changed, or its bytes failed the
    /// CRC-64 check): the next open starts afresh instead of meeting the same failure.
    fn hydration_locked(
        &self,
        idx: &mut Index,
        id: &ObjectIdentity,
        body: Option<bytes::Bytes>,
    ) -> Result<Hydration, HydrateError> {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut start_fresh = false;
        if let Some(h) = idx.active.get(&name) {
            match h.failure() {
                None if h.identity() == id => {
                    if let Some(body) = body {
                        h.supply(body);
                    }
                    return Ok(h.clone());
                }
                None => {
                    tracing::info!(bucket = %id.bucket, key = %id.key, "object changed on the server; replacing its cache entry")
                }
                Some(e) => {
                    tracing::info!(bucket = %id.bucket, key = %id.key, "starting the entry afresh after: {e}");
                    start_fresh = true;
                }
            }
            h.stop();
            idx.active.remove(&name);
        }
        let earlier_checks = idx.checked.remove(&name).filter(|(v, _)| v == id);
        let files = self.files(&name);
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
            self.shared.remove_entry(idx, &name, Removal::Replaced);
        }
        let h = Hydration::start_with(
            self.store.clone(),
            id.clone(),
            files,
            self.cfg.clone(),
            self.limiter.clone(),
            resume.as_ref(),
            body,
        )?;
        if let (Some((_, checked)), Some(_)) = (earlier_checks, &resume) {
            h.trust_checked(&checked);
        }
        idx.active.insert(name, h.clone());
        Ok(h)
    }

    /// Drops an object's entry (its version changed, or its bytes failed the CRC-64 check):
    /// the next open starts afresh. Handles open on it keep what their file holds.
    pub fn discard(&self, id: &ObjectIdentity) {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.index.lock().unwrap();
        if idx.active.get(&name).is_some_and(|h| h.identity() != id) {
            return; // a newer version already replaced it
        }
        self.shared.remove_entry(&mut idx, &name, Removal::Replaced);
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
                verified: p.complete && h.identity().crc64.is_some(),
            });
        }
        let c = Checkpoint::load(self.files(&name).checkpoint.as_ref()?).ok()?;
        let verdict = c.verdict();
        Some(EntryState {
            parts_present: c.parts_present(),
            parts_total: c.layout().count(),
            complete: matches!(verdict, Verdict::Complete | Verdict::Unverified),
            verified: verdict == Verdict::Complete,
            etag: c.etag,
        })
    }

    pub fn active(&self) -> Vec<Hydration> {
        let idx = self.shared.index.lock().unwrap();
        idx.active.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_hashes_not_keys() {
        let n = Cache::entry_name("http://e", "b", "../../etc/passwd");
        assert_eq!(n.len(), 32);
        assert!(n.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(n, Cache::entry_name("http://e", "b", "../../etc/passwd2"));
        assert_ne!(
            Cache::entry_name("http://e", "ab", "c"),
            Cache::entry_name("http://e", "a", "bc")
        );
    }

    fn fake_entry(entries: &Path, key: &str, present: &str, age_secs: u64) -> String {
        let id = ObjectIdentity {
            bucket: "b".into(),
            key: key.into(),
            size: 3 * 4096,
            etag: "\"E\"".into(),
            last_modified: "Wed, 01 Jan 2025 00:00:00 GMT".into(),
            crc64: None,
        };
        let name = Cache::entry_name("http://127.0.0.1:1", "b", key);
        let data = entries.join(format!("{name}.data"));
        std::fs::write(&data, vec![0u8; 3 * 4096]).unwrap();
        let mut c = Checkpoint::new("http://127.0.0.1:1", &id, 4096, &data);
        c.present = crate::hydrate::checkpoint::parse_present(present).unwrap();
        let ckpt = entries.join(format!("{name}.ckpt"));
        c.save(&ckpt).unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(age_secs);
        File::options()
            .write(true)
            .open(&ckpt)
            .unwrap()
            .set_modified(t)
            .unwrap();
        name
    }

    #[tokio::test]
    async fn start_cleans_crash_leftovers_and_rebuilds_the_lru_order() {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join("entries");
        std::fs::create_dir_all(&entries).unwrap();
        let old = fake_entry(&entries, "old", "111", 300);
        let new = fake_entry(&entries, "new", "100", 10);
        let mid = fake_entry(&entries, "mid", "110", 100);
        // An interrupted eviction (data without checkpoint), a temp checkpoint, a corrupt one.
        std::fs::write(entries.join("deadbeef.data"), b"orphan").unwrap();
        std::fs::write(entries.join("x.ckpt.tmp-123"), b"{").unwrap();
        std::fs::write(entries.join("bad.ckpt"), b"not json").unwrap();
        std::fs::write(entries.join("bad.data"), b"x").unwrap();
        let store: Arc<dyn ObjectStore> =
            crate::store::memory::MemoryStore::new("http://127.0.0.1:1");
        let cache = Cache::open(
            dir.path(),
            store,
            HydrationConfig {
                part_size: 4096,
                ..Default::default()
            },
            ConnectionLimiter::new(1, 0),
            Capacity::unlimited(),
        )
        .unwrap();
        let order: Vec<String> = cache
            .entries_lru_first()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(order, vec!["old", "mid", "new"]);
        let mut left: Vec<String> = std::fs::read_dir(&entries)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = [&old, &new, &mid]
            .iter()
            .flat_map(|n| [format!("{n}.ckpt"), format!("{n}.data")])
            .collect();
        want.sort();
        assert_eq!(left, want);
        // 6 present blocks, three records, the fixed overhead.
        let records: u64 = cache.entries_lru_first().iter().map(|e| e.charged).sum();
        assert_eq!(cache.used_bytes(), records + FIXED_OVERHEAD);
        assert!(records >= 6 * 4096);
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = dir::lock_dir(dir.path()).unwrap();
        let err = dir::lock_dir(dir.path()).unwrap_err().to_string();
        // flock is per open file description, so the same process is refused too.
        assert!(err.contains("in use by another ossmount process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }
}
