//! The cache directory of a mount: one entry per object (a data file and its checkpoint,
//! named by a hash of store, bucket and key, never by the key text), the lock that keeps a
//! second process out, and the registry of running hydrations so all handles on an object
//! share one. It asks the `hydrate` engine for bytes and never issues HTTP requests itself.
//!
//! Layout: `<dir>/lock` (flock + pid), `<dir>/entries/<hash>.data`, `<dir>/entries/<hash>.ckpt`.
//! The checkpoint is the authority: a data file without a valid, matching checkpoint is
//! never trusted and is recreated.

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
};
use crate::store::ObjectStore;

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

pub struct Cache {
    dir: PathBuf,
    entries: PathBuf,
    store: Arc<dyn ObjectStore>,
    location: String,
    cfg: HydrationConfig,
    limiter: Arc<ConnectionLimiter>,
    active: Mutex<HashMap<String, Hydration>>,
    _lock: File,
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
        Ok(Cache {
            dir: dir.to_path_buf(),
            entries,
            location: store.location(),
            store,
            cfg,
            limiter,
            active: Mutex::new(HashMap::new()),
            _lock: lock,
        })
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
        let mut active = self.active.lock().unwrap();
        if let Some(h) = active.get(&name) {
            if h.identity() == id {
                return Ok(h.clone());
            }
            tracing::info!(bucket = %id.bucket, key = %id.key, "object changed on the server; replacing its cache entry");
            h.stop();
            active.remove(&name);
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
        }
        let h = Hydration::start(
            self.store.clone(),
            id.clone(),
            files,
            self.cfg.clone(),
            self.limiter.clone(),
            resume.as_ref(),
        )?;
        active.insert(name, h.clone());
        Ok(h)
    }

    /// Stops every hydration and waits for their checkpoint writes to finish.
    pub async fn shutdown(&self) {
        let all: Vec<Hydration> = self.active.lock().unwrap().values().cloned().collect();
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
        Some(ObjectIdentity {
            bucket: c.bucket,
            key: c.key,
            size: c.size,
            etag: c.etag,
            last_modified: c.last_modified,
            crc64: c.crc64,
        })
    }

    /// Parts present and total, ETag, and whether complete, for an object's entry: from its
    /// running hydration, else from its checkpoint. `None` when nothing is cached.
    pub fn entry_state(&self, bucket: &str, key: &str) -> Option<EntryState> {
        let name = Cache::entry_name(&self.location, bucket, key);
        if let Some(h) = self.active.lock().unwrap().get(&name) {
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
        self.active.lock().unwrap().values().cloned().collect()
    }
}

/// Removes leftovers of a crash: temp checkpoints and probes. Entries themselves are judged
/// by their checkpoints when opened.
fn clean_strays(entries: &Path) {
    let Ok(rd) = std::fs::read_dir(entries) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") || name.starts_with(".probe-") {
            let _ = std::fs::remove_file(e.path());
        }
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
