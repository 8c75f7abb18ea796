//! Open handles: confirming the version to open (HEAD after the TTL, or a complete cache
//! entry while the server is unreachable), binding the handle to the object's hydration (or a
//! direct reader for objects larger than the cache), and reads that wait only for the parts
//! they need. Must not decide what the kernel does with a handle (see `passthrough`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::hydrate::{Hydration, ObjectIdentity};

use super::direct::DirectReader;
use super::{FsError, Kind, OssFs};

pub(super) enum OpenFile {
    /// Served from the object's cache entry.
    Cached { ino: u64, hydration: Hydration },
    /// Larger than the whole cache: served by ranged reads with readahead, never kept.
    Direct { ino: u64, reader: Arc<DirectReader> },
}

impl OpenFile {
    fn ino(&self) -> u64 {
        match self {
            OpenFile::Cached { ino, .. } | OpenFile::Direct { ino, .. } => *ino,
        }
    }
}

/// The result of `open`.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The version is the one the kernel saw last time: its page cache is still right.
    pub keep_cache: bool,
    /// Set when the cache entry is complete: the kernel may read this file directly.
    pub complete_file: Option<Arc<std::fs::File>>,
}

impl OssFs {
    /// The identity to open: the cached one within the TTL, else a HEAD. When the server
    /// cannot be reached, the last known identity (or a complete cache entry's) is used, so
    /// cached files stay readable offline.
    async fn identity_for_open(&self, ino: u64) -> Result<ObjectIdentity, FsError> {
        let (key, cached, listed_etag, listed_size) = {
            let ns = self.ns.lock().unwrap();
            let n = ns.nodes.get(&ino).ok_or(FsError::NotFound)?;
            if n.kind == Kind::Dir {
                return Err(FsError::IsADirectory);
            }
            (n.key.clone(), n.identity.clone(), n.etag.clone(), n.size)
        };
        if let Some((id, at)) = &cached {
            if at.elapsed() < self.cfg.metadata_ttl {
                return Ok(id.clone());
            }
        }
        // A fresh listing that shows the same version as a complete cache entry needs no
        // HEAD: prefetched or earlier-hydrated files open without any request.
        if cached.is_none() {
            if let Some(id) = self.cache.cached_identity(&self.cfg.bucket, &key) {
                if id.etag == listed_etag && id.size == listed_size {
                    return Ok(id);
                }
            }
        }
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        match self.store.head(&self.cfg.bucket, &key).await {
            Ok(meta) => Ok(ObjectIdentity::from_meta(&self.cfg.bucket, &key, &meta)),
            Err(e) if e.is_not_found() => {
                // Gone on the server: the parent's listing is stale too.
                let mut ns = self.ns.lock().unwrap();
                if let Some(parent) = ns.nodes.get(&ino).map(|n| n.parent) {
                    ns.listings.remove(&parent);
                }
                Err(FsError::NotFound)
            }
            Err(e) if e.is_retryable() => {
                if let Some((id, _)) = cached {
                    tracing::warn!(key = %key, "HEAD failed, using the last known version: {e}");
                    return Ok(id);
                }
                if let Some(id) = self.cache.cached_identity(&self.cfg.bucket, &key) {
                    if id.etag == listed_etag {
                        tracing::warn!(key = %key, "HEAD failed, using the cached version: {e}");
                        return Ok(id);
                    }
                }
                Err(FsError::store(format!("HEAD {key}"), e))
            }
            Err(e) => Err(FsError::store(format!("HEAD {key}"), e)),
        }
    }

    /// Opens a file: confirms its version, joins or starts its hydration, and says whether the
    /// kernel may keep its page cache (same version as last time) and, for a complete entry,
    /// which file the kernel could read directly.
    pub async fn open(&self, ino: u64) -> Result<Opened, FsError> {
        let id = self.identity_for_open(ino).await?;
        let file = if id.size > self.cache.capacity().max_bytes {
            if self
                .ns
                .lock()
                .unwrap()
                .logged_skips
                .insert(format!("direct:{}", id.key))
            {
                tracing::warn!(key = %id.key, size = id.size, "larger than the whole cache: served by ranged reads, not kept");
            }
            OpenFile::Direct {
                ino,
                reader: Arc::new(DirectReader {
                    store: self.store.clone(),
                    window: 8 << 20,
                    buf: tokio::sync::Mutex::new((0, bytes::Bytes::new())),
                    id: id.clone(),
                }),
            }
        } else {
            // Opening an entry reads and may fsync its checkpoint: off the async workers.
            let (cache, entry_id) = (self.cache.clone(), id.clone());
            let hydration = tokio::task::spawn_blocking(move || cache.open_entry(&entry_id))
                .await
                .map_err(|e| FsError::Cache(format!("opening the entry failed: {e}")))?
                .map_err(|e| {
                    tracing::warn!(key = %id.key, "cannot open the cache entry: {e}");
                    FsError::Cache(e.to_string())
                })?;
            OpenFile::Cached { ino, hydration }
        };
        let keep_cache = {
            let mut ns = self.ns.lock().unwrap();
            let n = ns.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            n.size = id.size;
            n.etag = id.etag.clone();
            if let Ok(t) = httpdate::parse_http_date(&id.last_modified) {
                n.mtime = t;
            }
            let keep = n.kernel_etag.as_deref() == Some(id.etag.as_str());
            n.kernel_etag = Some(id.etag.clone());
            n.identity = Some((id, Instant::now()));
            keep
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let complete_file = match &file {
            OpenFile::Cached { hydration, .. } if hydration.is_complete() => Some(hydration.file()),
            _ => None,
        };
        self.files.lock().unwrap().insert(fh, file);
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            fh,
            keep_cache,
            complete_file,
        })
    }

    /// Reads `[offset, offset + size)`, waiting only for the parts that hold it.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let h = match self
            .files
            .lock()
            .unwrap()
            .get(&fh)
            .ok_or(FsError::BadHandle)?
        {
            OpenFile::Cached { hydration, .. } => Ok(hydration.clone()),
            OpenFile::Direct { reader, .. } => Err(reader.clone()),
        };
        let h = match h {
            Ok(h) => h,
            Err(direct) => return self.read_direct(&direct, offset, size).await,
        };
        let total = h.identity().size;
        if offset >= total || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(total);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if h.is_present(offset..end) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = h.wait_range(offset..end).await {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %h.identity().key, offset, "read failed: {e}");
                return Err(FsError::Hydrate(e));
            }
        }
        let data = tokio::task::spawn_blocking(move || h.read_at(offset, (end - offset) as usize))
            .await
            .map_err(|e| FsError::Cache(format!("reading the cache file failed: {e}")))?
            .map_err(|e| {
                tracing::warn!("reading the cache file failed: {e}");
                FsError::Cache(format!("reading the cache file failed: {e}"))
            })?;
        self.stats
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    pub fn release(&self, fh: u64) {
        let file = self.files.lock().unwrap().remove(&fh);
        if let Some(OpenFile::Cached { hydration, .. }) = file {
            self.cache.close_entry(hydration.identity());
        }
    }

    /// The inode an open handle belongs to.
    pub fn handle_ino(&self, fh: u64) -> Option<u64> {
        self.files.lock().unwrap().get(&fh).map(|f| f.ino())
    }
}
