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

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::hydrate::checkpoint::Checkpoint;
use crate::hydrate::{
    ConnectionLimiter, HydrateError, Hydration, HydrationConfig, HydrationFiles, ObjectIdentity,
    SpaceBudget,
};
use crate::store::ObjectStore;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub parts_present: usize,
    pub parts_total: usize,
    pub etag: String,
    pub complete: bool,
}

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
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
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

fn charge_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

/// What an entry's checkpoint takes on disk, about: fixed fields plus each part's bit and CRC.
fn checkpoint_charge(parts: usize, key_len: usize) -> u64 {
    charge_for(1024 + key_len as u64 * 2 + parts as u64 * 26)
}

/// The cache directory, `entries/`, `lock` and `status.json`: charged once, so the whole
/// directory (as `du` counts it) stays within the capacity.
const FIXED_OVERHEAD: u64 = 4 * BLOCK;

/// Counters of a cache, for `status` and the unmount log line.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub no_space: AtomicU64,
}

struct Shared {
    entries: PathBuf,
    capacity: Capacity,
    part_size: u64,
    index: Mutex<Index>,
    stats: CacheStats,
}

struct Index {
    lru: lru::LruCache<String, IndexEntry>,
    used: u64,
    open: HashMap<String, usize>,
    active: HashMap<String, Hydration>,
}

pub struct Cache {
    dir: PathBuf,
    entries: PathBuf,
    store: Arc<dyn ObjectStore>,
    location: String,
    cfg: HydrationConfig,
    limiter: Arc<ConnectionLimiter>,
    shared: Arc<Shared>,
    _lock: File,
}

/// The budget a hydration asks for room; weak, so hydrations do not keep the cache alive.
struct Budget {
    shared: std::sync::Weak<Shared>,
    location: String,
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
            let charge = charge_for(bytes);
            if let Some(e) = idx.lru.peek_mut(&name) {
                e.charged = e.charged.saturating_sub(charge);
                idx.used = idx.used.saturating_sub(charge);
            }
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

    fn reserve(&self, name: &str, id: &ObjectIdentity, charge: u64) -> bool {
        let mut idx = self.index.lock().unwrap();
        loop {
            let over_cap = idx.used + charge > self.capacity.max_bytes;
            let low_disk = self.capacity.min_free_disk > 0
                && self.free_disk() < self.capacity.min_free_disk + charge;
            if !over_cap && !low_disk {
                break;
            }
            // The least recently used entry that no handle has open, other than this one.
            let victim = idx
                .lru
                .iter()
                .rev()
                .map(|(k, _)| k.clone())
                .find(|k| k != name && idx.open.get(k).copied().unwrap_or(0) == 0);
            let Some(victim) = victim else {
                self.stats.no_space.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            self.evict_locked(&mut idx, &victim);
        }
        idx.used += charge;
        match idx.lru.peek_mut(name) {
            Some(e) => e.charged += charge,
            None => {
                let parts = self.part_count(id.size);
                let record = checkpoint_charge(parts, id.key.len());
                idx.lru.put(
                    name.to_string(),
                    IndexEntry {
                        bucket: id.bucket.clone(),
                        key: id.key.clone(),
                        size: id.size,
                        charged: charge + record,
                    },
                );
                idx.used += record;
            }
        }
        true
    }

    /// Removes an entry: checkpoint first (from then on the entry does not exist), then data.
    fn evict_locked(&self, idx: &mut Index, name: &str) {
        if let Some(h) = idx.active.remove(name) {
            h.stop();
        }
        let ckpt = self.entries.join(format!("{name}.ckpt"));
        let data = self.entries.join(format!("{name}.data"));
        let _ = std::fs::remove_file(&ckpt);
        let _ = std::fs::remove_file(&data);
        if let Some(e) = idx.lru.pop(name) {
            idx.used = idx.used.saturating_sub(e.charged);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.stats
                .evicted_bytes
                .fetch_add(e.charged, Ordering::Relaxed);
            tracing::info!(bucket = %e.bucket, key = %e.key, bytes = e.charged, "evicted from the cache");
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.dir.display())
    }
}

/// Takes the cache directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, CacheError> {
    let path = dir.join("lock");
    let unusable = |source| CacheError::Unusable {
        path: dir.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(unusable)?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        let pid = pid.trim();
        return Err(CacheError::Locked {
            path: dir.to_path_buf(),
            pid: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    f.set_len(0).map_err(unusable)?;
    write!(f, "{}", std::process::id()).map_err(unusable)?;
    Ok(f)
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
        std::fs::create_dir_all(&entries).map_err(|source| CacheError::Unusable {
            path: dir.to_path_buf(),
            source,
        })?;
        let probe = entries.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"ok")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| CacheError::Unusable {
                path: dir.to_path_buf(),
                source,
            })?;
        let lock = lock_dir(dir)?;
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
            }),
            stats: CacheStats::default(),
        });
        let location = store.location();
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
            _lock: lock,
        })
    }

    pub fn capacity(&self) -> Capacity {
        self.shared.capacity
    }

    /// Bytes charged against the capacity now.
    pub fn used_bytes(&self) -> u64 {
        self.shared.index.lock().unwrap().used
    }

    pub fn stats(&self) -> &CacheStats {
        &self.shared.stats
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
        let h = self.hydration(id)?;
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.index.lock().unwrap();
        *idx.open.entry(name.clone()).or_default() += 1;
        idx.lru.get(&name);
        drop(idx);
        // The checkpoint's mtime is the entry's last use, for the order after a restart.
        if let Ok(f) = File::options()
            .write(true)
            .open(self.entries.join(format!("{name}.ckpt")))
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
            }
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
        HydrationFiles {
            data: self.entries.join(format!("{name}.data")),
            checkpoint: Some(self.entries.join(format!("{name}.ckpt"))),
        }
    }

    /// The hydration of this exact object version: the running one if there is one, else one
    /// resumed from the entry's checkpoint, else a fresh one. A different version replaces the
    /// entry (open handles on the old version keep reading their old, unlinked file).
    pub fn hydration(&self, id: &ObjectIdentity) -> Result<Hydration, HydrateError> {
        let name = Cache::entry_name(&self.location, &id.bucket, &id.key);
        let mut idx = self.shared.index.lock().unwrap();
        if let Some(h) = idx.active.get(&name) {
            if h.identity() == id {
                return Ok(h.clone());
            }
            tracing::info!(bucket = %id.bucket, key = %id.key, "object changed on the server; replacing its cache entry");
            h.stop();
            idx.active.remove(&name);
        }
        let files = self.files(&name);
        let ckpt_path = files
            .checkpoint
            .clone()
            .expect("cache entries have checkpoints");
        let resume = if ckpt_path.exists() {
            match Checkpoint::load(&ckpt_path)
                .and_then(|c| c.check_identity(&self.location, id, &files.data).map(|_| c))
            {
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
            // Checkpoint first: without it the data file is never trusted.
            let _ = std::fs::remove_file(&ckpt_path);
            let _ = std::fs::remove_file(&files.data);
            if let Some(old) = idx.lru.pop(&name) {
                idx.used = idx.used.saturating_sub(old.charged);
            }
        }
        let h = Hydration::start(
            self.store.clone(),
            id.clone(),
            files,
            self.cfg.clone(),
            self.limiter.clone(),
            resume.as_ref(),
        )?;
        idx.active.insert(name, h.clone());
        Ok(h)
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
        let complete = c.parts_present() == c.layout().count();
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
            });
        }
        let c = Checkpoint::load(self.files(&name).checkpoint.as_ref()?).ok()?;
        let total = c.layout().count();
        Some(EntryState {
            parts_present: c.parts_present(),
            parts_total: total,
            complete: c.parts_present() == total,
            etag: c.etag,
        })
    }

    pub fn active(&self) -> Vec<Hydration> {
        let idx = self.shared.index.lock().unwrap();
        idx.active.values().cloned().collect()
    }
}

/// Removes leftovers of a crash: temp checkpoints, probes, and data files whose checkpoint
/// is gone (an eviction or replacement that was interrupted). Unknown files are left alone.
fn clean_strays(entries: &Path) {
    let Ok(rd) = std::fs::read_dir(entries) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let orphan_data = name
            .strip_suffix(".data")
            .is_some_and(|stem| !entries.join(format!("{stem}.ckpt")).exists());
        if name.contains(".tmp-") || name.starts_with(".probe-") || orphan_data {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads every checkpoint (oldest use first) into the LRU order and the bytes in use.
/// Unreadable checkpoints are removed with their data.
fn build_index(entries: &Path) -> (lru::LruCache<String, IndexEntry>, u64) {
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
                    let _ = std::fs::remove_file(entries.join(format!("{name}.data")));
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
        c.present = present.into();
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
        let mut cfg = crate::oss::ClientConfig::new(
            crate::oss::Endpoint::parse("http://127.0.0.1:1").unwrap(),
        );
        cfg.region = Some("r".into());
        let store: Arc<dyn ObjectStore> = Arc::new(crate::oss::OssClient::new(cfg).unwrap());
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
        let _held = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err().to_string();
        // flock is per open file description, so the same process is refused too.
        assert!(err.contains("in use by another ossmount process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }
}
