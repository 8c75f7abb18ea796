//! Open handles: confirming the version to open (HEAD after the TTL; for a freshly listed
//! file, the first part's GET pinned to the listed ETag, so no request comes before the
//! first byte; or a complete cache entry while the server is unreachable), binding the handle to the object's hydration (or a
//! direct reader for objects larger than the cache), and reads that wait only for the parts
//! they need. Must not decide what the kernel does with a handle (see `passthrough`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::ops::Range;

use crate::cache::OpenEntry;
use crate::hydrate::{HydrateError, ObjectIdentity, Prefetched};

use super::coverage::Coverage;
use super::direct::{DirectReader, WINDOW};
use super::node::Etag;
use super::{FsError, Kind, OssFs};

/// Reads of at most this many bytes are served from the cache file on the async worker.
const INLINE_READ_MAX: usize = 16 << 10;

pub(super) enum OpenFile {
    /// Served from the object's cache entry; `served` is what this handle has read.
    Cached {
        ino: u64,
        entry: OpenEntry,
        served: Arc<Mutex<Coverage>>,
    },
    /// Larger than the whole cache: served by ranged reads with readahead, never kept.
    Direct { ino: u64, reader: Arc<DirectReader> },
}

impl OpenFile {
    pub(super) fn ino(&self) -> u64 {
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
    /// The kernel knew this inode as another version: its cached size and pages are
    /// stale and must be dropped before it reads.
    pub version_changed: bool,
}

/// An inode's version reserved by an open until the handle exists (then `release` gives it
/// back); given back at once if the open fails.
struct Reservation<'a> {
    fs: &'a OssFs,
    ino: u64,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.fs.unreserve(self.ino);
        }
    }
}

impl OssFs {
    /// The identity to open: the cached one within the TTL, else a HEAD — or, for a file
    /// listed no larger than one part, a GET whose headers are the HEAD and whose body is the
    /// whole file (one round trip per small file). When the server cannot be reached, the
    /// last known identity (or a complete cache entry's) is used, so cached files stay
    /// readable offline.
    async fn identity_for_open(
        &self,
        ino: u64,
    ) -> Result<(ObjectIdentity, Option<Prefetched>), FsError> {
        let (key, cached, listed_etag, listed_size, listing_fresh) = {
            let ns = self.ns.lock().unwrap();
            let n = ns.nodes.get(&ino).ok_or(FsError::NotFound)?;
            if n.kind == Kind::Dir {
                return Err(FsError::IsADirectory);
            }
            // Shown by its parent's listing, and that listing is within the TTL.
            let listing_fresh = ns.listings.get(&n.parent).is_some_and(|l| {
                l.number == n.listed && l.fetched.elapsed() < self.cfg.metadata_ttl
            });
            (
                ns.key_of(ino).ok_or(FsError::NotFound)?,
                n.identity().cloned(),
                n.etag.to_string(),
                n.size,
                listing_fresh && !n.etag.to_string().is_empty(),
            )
        };
        if let Some((id, at)) = &cached {
            if at.elapsed() < self.cfg.metadata_ttl {
                return Ok((id.clone(), None));
            }
        }
        // A fresh listing that shows the same version as a complete cache entry needs no
        // HEAD: prefetched or earlier-hydrated files open without any request.
        // (Read from the entry's checkpoint only when it can change the answer: no known
        // identity yet, or a small file that would otherwise be fetched whole.)
        let small_limit = self.cache.part_size();
        let complete_entry = (cached.is_none() || listed_size <= small_limit)
            .then(|| self.cache.cached_identity(&self.cfg.bucket, &key))
            .flatten();
        // Unless mounts of other principals share the cache: then this mount proves it may
        // read the object (its own HEAD below) before the cache serves it.
        if cached.is_none() && !self.cache.shared_by_principals() {
            if let Some(id) = complete_entry.as_ref() {
                if id.etag == listed_etag && id.size == listed_size {
                    return Ok((id.clone(), None));
                }
            }
        }
        // A small file whose bytes are all cached is asked whether it changed (a HEAD), not
        // fetched again: the body of a GET would be billed egress for bytes already here.
        let answer = if listed_size <= small_limit && complete_entry.is_none() {
            self.stats.small_gets.fetch_add(1, Ordering::Relaxed);
            self.store
                .get_small(&self.cfg.bucket, &key, small_limit)
                .await
                .map(|(meta, body)| (meta, body.map(Prefetched::Whole)))
        } else if let Some(connection) = (listing_fresh
            && complete_entry.is_none()
            && !self.cache.shared_by_principals()
            && listed_size <= self.cache.capacity().max_bytes
            // With part of it cached (a remount finishing a fetch), the first part may be
            // there already: its GET would be bytes billed for nothing.
            && self.cache.entry_state(&self.cfg.bucket, &key).is_none())
        .then(|| self.cache.limiter().try_acquire(true))
        .flatten()
        {
            // A listed file (size and ETag known): no HEAD before the first byte. The first
            // part's GET, pinned to the listed ETag, tells the identity by its headers (the
            // whole object's CRC-64 among them) and its body becomes that part's fetch.
            // The identity is thus whole before the entry starts: nothing is recorded,
            // verified or served against a guessed one. The GET is counted on a demand
            // connection taken now (none free: the HEAD below, as before, and no wait).
            let first_part = 0..listed_size.min(small_limit);
            match self
                .store
                .get_range_with_meta(
                    &self.cfg.bucket,
                    &key,
                    first_part.clone(),
                    listed_etag.clone(),
                )
                .await
            {
                // What the object is verified by came with the answer (OSS: the CRC-64 on
                // ranged answers too; S3: an MD5 ETag, which a HEAD would give the same).
                Ok((meta, stream)) if meta.crc64.is_some() || meta.digest.is_some() => Ok((
                    meta,
                    Some(Prefetched::Part {
                        range: first_part,
                        stream,
                        connection,
                    }),
                )),
                Ok((meta, stream)) => {
                    // One that came without it (a proxy, an object without one, an S3
                    // multipart upload whose CRC64NVME only a HEAD tells) is asked by HEAD,
                    // so the identity never depends on which request told it.
                    self.stats.heads.fetch_add(1, Ordering::Relaxed);
                    match self.store.head(&self.cfg.bucket, &key).await {
                        Ok(head) if head.etag == meta.etag => Ok((
                            head,
                            Some(Prefetched::Part {
                                range: first_part,
                                stream,
                                connection,
                            }),
                        )),
                        Ok(head) => Ok((head, None)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) if e.is_precondition_failed() => {
                    // Changed since the listing: one HEAD tells the new version.
                    tracing::info!(key = %key, "changed since it was listed; asking for its new version");
                    self.stats.heads.fetch_add(1, Ordering::Relaxed);
                    self.store
                        .head(&self.cfg.bucket, &key)
                        .await
                        .map(|meta| (meta, None))
                }
                Err(e) => Err(e),
            }
        } else {
            self.stats.heads.fetch_add(1, Ordering::Relaxed);
            self.store
                .head(&self.cfg.bucket, &key)
                .await
                .map(|meta| (meta, None))
        };
        match answer {
            Ok((meta, prefetched)) => Ok((
                ObjectIdentity::from_meta(&self.cfg.bucket, &key, &meta),
                prefetched,
            )),
            Err(e) if e.is_not_found() => {
                // Gone on the server: the parent's listing is stale too.
                let mut ns = self.ns.lock().unwrap();
                if let Some(parent) = ns.nodes.get(&ino).map(|n| n.parent) {
                    ns.drop_listing(parent);
                }
                Err(FsError::NotFound)
            }
            Err(e) if e.is_retryable() => {
                if let Some((id, _)) = cached {
                    tracing::warn!(key = %key, "HEAD failed, using the last known version: {e}");
                    return Ok((id, None));
                }
                // Not when mounts of other principals share the cache: this mount has not
                // shown it may read the object, and cannot now.
                let entry = (!self.cache.shared_by_principals())
                    .then(|| self.cache.cached_identity(&self.cfg.bucket, &key))
                    .flatten();
                if let Some(id) = entry {
                    if id.etag == listed_etag {
                        tracing::warn!(key = %key, "HEAD failed, using the cached version: {e}");
                        return Ok((id, None));
                    }
                }
                Err(FsError::store(format!("asking for {key}'s version"), e))
            }
            Err(e) => Err(FsError::store(format!("asking for {key}'s version"), e)),
        }
    }

    /// Opens a file: confirms its version, joins or starts its hydration, and says whether the
    /// kernel may keep its page cache (same version as last time) and, for a complete entry,
    /// which file the kernel could read directly.
    pub async fn open(&self, ino: u64) -> Result<Opened, FsError> {
        self.resolve(ino)?;
        let (id, prefetched) = self.identity_for_open(ino).await?;
        if let Some(why) = self.unverifiable(&id).filter(|_| self.cfg.require_crc) {
            tracing::warn!(key = %id.key, "refusing an object that cannot be verified (--require-crc): {why}");
            return Err(FsError::NoCrc {
                bucket: id.bucket,
                key: id.key,
                why,
            });
        }
        // A new version while handles of another are open (or opening): it gets its own
        // inode. Checked and reserved in one step.
        let mut reservation = {
            let mut versions = self.open_versions.lock().unwrap();
            let (etag, count) = versions.entry(ino).or_insert_with(|| (id.etag.clone(), 0));
            if *count > 0 && *etag != id.etag {
                drop(versions);
                let new_ino = self.ns.lock().unwrap().renumber(ino, &id);
                tracing::info!(key = %id.key, ino, new_ino, "a new version is open beside the old one: it gets a new inode");
                return Err(FsError::Stale);
            }
            *etag = id.etag.clone();
            *count += 1;
            Reservation {
                fs: self,
                ino,
                kept: false,
            }
        };
        let file = self.open_file(ino, &id, prefetched).await?;
        // A hydration of this object failed its whole-object check with no read there to
        // see it: the kernel's pages of the version may hold those bytes.
        let pages_bad = self.cache.take_failed_check(&id.bucket, &id.key);
        let id_size = id.size;
        let journaled_id = self.journal.as_ref().map(|_| id.clone());
        let (keep_cache, version_changed) = {
            let mut ns = self.ns.lock().unwrap();
            let n = ns.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            // The size the kernel was last shown (a listing's, or an earlier open's).
            let shown_size = n.open_size().unwrap_or(n.size);
            n.size = id.size;
            n.etag = Etag::new(&id.etag);
            if let Ok(t) = httpdate::parse_http_date(&id.last_modified) {
                n.mtime = t;
            }
            let opened = n.opened_mut();
            opened.open_size = Some(id.size);
            let keep = !pages_bad && opened.kernel_etag.as_ref().is_some_and(|e| e.is(&id.etag));
            // A version the kernel has not seen, or a size other than the one it was shown
            // (the object changed between the listing and this first open): either way its
            // cached size is stale, and a larger object would read short.
            let changed = (opened.kernel_etag.is_some() && !keep) || shown_size != id.size;
            opened.kernel_etag = Some(Etag::new(&id.etag));
            opened.identity = Some((id, Instant::now()));
            (keep, changed)
        };
        if let (OpenFile::Cached { served, .. }, true) = (&file, keep_cache) {
            *served.lock().unwrap() = Coverage::kernel_cached();
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let complete_file = match &file {
            OpenFile::Cached { entry, .. } if entry.is_complete() => {
                // The kernel will read the file without asking us: check its bytes first.
                match entry.verify_cached(0..id_size).await {
                    Ok(true) => entry.file(),
                    _ => None,
                }
            }
            _ => None,
        };
        // Journaled before the reply gives the handle to the kernel.
        if let (Some(j), Some(id)) = (&self.journal, &journaled_id) {
            j.opened(fh, ino, id);
        }
        self.files.lock().unwrap().insert(fh, file);
        reservation.kept = true; // given back by `release`
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            fh,
            keep_cache,
            complete_file,
            version_changed,
        })
    }

    /// Why version `id` could not be verified when read whole, if it could not: a CRC-64
    /// (OSS) is checked on every path; a whole-object digest (S3's CRC64NVME or MD5) only
    /// through the cache, which an object larger than the whole cache bypasses.
    fn unverifiable(&self, id: &ObjectIdentity) -> Option<&'static str> {
        match (id.crc64, id.digest) {
            (Some(_), _) => None,
            (None, Some(_)) if id.size <= self.cache.capacity().max_bytes => None,
            (None, Some(_)) => Some("only a whole-object digest (CRC64NVME or MD5) vouches for it, which is checked only for objects the cache can hold (raise --cache-size)"),
            (None, None) => Some("the server sends no checksum for it (no x-oss-hash-crc64ecma; on S3 no CRC64NVME and an ETag that is not an MD5)"),
        }
    }

    /// The reader of version `id` of `ino`: its cache entry (joining or starting its
    /// hydration), or a direct reader for objects larger than the whole cache.
    pub(super) async fn open_file(
        &self,
        ino: u64,
        id: &ObjectIdentity,
        prefetched: Option<Prefetched>,
    ) -> Result<OpenFile, FsError> {
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
                reader: Arc::new(DirectReader::new(self.direct.clone(), id.clone(), WINDOW)),
            }
        } else {
            // Opening an entry reads and may fsync its checkpoint: off the async workers.
            let (cache, entry_id) = (self.cache.clone(), id.clone());
            let entry =
                tokio::task::spawn_blocking(move || cache.open_entry_with(&entry_id, prefetched))
                    .await
                    .map_err(|e| FsError::Cache(format!("opening the entry failed: {e}")))?
                    .map_err(|e| {
                        tracing::warn!(key = %id.key, "cannot open the cache entry: {e}");
                        FsError::Cache(e.to_string())
                    })?;
            OpenFile::Cached {
                ino,
                entry,
                served: Default::default(),
            }
        };
        Ok(file)
    }

    /// Reads `[offset, offset + size)`, waiting only for the parts that hold it, within the
    /// read deadline. Cached bytes from an earlier run are checked against their CRC-64 before
    /// they are served, and the read that reaches the end of the object waits for the
    /// whole-object CRC-64 check, so no reader finishes with success on corrupt bytes.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        if self.journal.is_some() && !self.files.lock().unwrap().contains_key(&fh) {
            self.adopt(fh).await?;
        }
        let h = match self
            .files
            .lock()
            .unwrap()
            .get(&fh)
            .ok_or(FsError::BadHandle)?
        {
            OpenFile::Cached { entry, served, .. } => Ok((entry.clone(), served.clone())),
            OpenFile::Direct { reader, .. } => Err(reader.clone()),
        };
        let (h, served) = match h {
            Ok(h) => h,
            Err(direct) => return self.read_direct(&direct, offset, size).await,
        };
        let total = h.identity().size;
        if offset >= total || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(total);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        h.note_read(offset..end);
        let deadline = self.cfg.read_deadline;
        let started = Instant::now();
        let waited = tokio::time::timeout(deadline, async {
            let missed = self.wait_for_bytes(&h, offset..end).await?;
            // The read that completes the object for this handle (every other byte served or
            // being served) waits for the whole-object check; one that merely reaches the end
            // (a footer) does not. Noted and judged in one step, so of reads in flight at
            // once, the last to get here is the one that waits.
            let completes = {
                let mut served = served.lock().unwrap();
                let whole = served.insert_completing(offset..end, total);
                // A handle that cannot see every byte (the kernel kept its page cache) waits
                // at the end whenever the object is being fetched whole, as a safe default.
                whole
                    || (served.is_partial_view()
                        && end == total
                        && (h.fetches_all() || h.all_fetched()))
            };
            if completes {
                h.wait_verified().await.map_err(FsError::Hydrate)?;
            }
            Ok(missed)
        })
        .await;
        let outcome = match waited {
            Ok(Ok(true)) => {
                let secs = started.elapsed().as_secs_f64();
                self.stats.demand_wait.observe(secs);
                Ok(())
            }
            Ok(r) => r.map(|_| ()),
            Err(_) => {
                tracing::warn!(key = %h.identity().key, offset, "read failed: no bytes within the read deadline ({deadline:?}); the server is slow or unreachable");
                Err(FsError::Deadline(deadline))
            }
        };
        if let Err(e) = outcome {
            self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
            if let FsError::Hydrate(he) = &e {
                tracing::warn!(key = %h.identity().key, offset, "read failed: {he}");
                self.after_failure(&h, he);
            }
            return Err(e);
        }
        let len = (end - offset) as usize;
        // A few pages (a mapping's page faults, small records) are read here: bytes just
        // written or just checked, so in the page cache, and one pread of them costs less
        // than handing it to the blocking pool and back.
        let data = if len <= INLINE_READ_MAX {
            h.read_at(offset, len)
        } else {
            tokio::task::spawn_blocking(move || h.read_at(offset, len))
                .await
                .map_err(std::io::Error::other)
                .and_then(|read| read)
        }
        .map_err(|e| {
            tracing::warn!("reading the cache file failed: {e}");
            FsError::Cache(format!("reading the cache file failed: {e}"))
        })?;
        self.stats
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// Waits until `range` is readable and checked. True when it had to wait for parts.
    async fn wait_for_bytes(&self, h: &OpenEntry, range: Range<u64>) -> Result<bool, FsError> {
        if let Some(e) = h.failure().filter(|e| e.is_corrupt()) {
            return Err(FsError::Hydrate(e));
        }
        let mut missed = false;
        // Each turn either serves, or waits for bytes that are missing (never fetched, or
        // their part just failed its check and is fetched again); the read deadline bounds it.
        while !h
            .verify_cached(range.clone())
            .await
            .map_err(|e| FsError::Hydrate(Arc::new(e)))?
        {
            missed = true;
            h.wait_range(range.clone())
                .await
                .map_err(FsError::Hydrate)?;
        }
        let stat = if missed {
            &self.stats.cache_misses
        } else {
            &self.stats.cache_hits
        };
        stat.fetch_add(1, Ordering::Relaxed);
        Ok(missed)
    }

    /// A failure that ends a hydration also ends its cache entry and its known version: the
    /// next open asks the server again and starts afresh.
    fn after_failure(&self, h: &OpenEntry, e: &HydrateError) {
        let id = h.identity();
        if matches!(e, HydrateError::ObjectChanged { .. }) || e.is_corrupt() {
            // Forgotten first: an open between the two must not keep the kernel's pages of
            // bytes the discarded entry held.
            self.ns
                .lock()
                .unwrap()
                .forget_identity(&id.key, e.is_corrupt());
            self.cache.discard(id);
        }
    }

    pub(super) fn unreserve(&self, ino: u64) {
        let last = {
            let mut versions = self.open_versions.lock().unwrap();
            match versions.get_mut(&ino) {
                Some((_, count)) => {
                    *count = count.saturating_sub(1);
                    let last = *count == 0;
                    if last {
                        versions.remove(&ino);
                    }
                    last
                }
                None => false,
            }
        };
        if last {
            // Nothing reads the old version any more: the kernel may learn the new size.
            // (An open racing this one sets it again under the same lock.)
            if let Some(n) = self.ns.lock().unwrap().nodes.get_mut(&ino) {
                if !self.open_versions.lock().unwrap().contains_key(&ino) {
                    if let Some(o) = n.opened.as_mut() {
                        o.open_size = None;
                    }
                }
            }
        }
    }

    pub fn release(&self, fh: u64) {
        if let Some(j) = &self.journal {
            j.closed(fh);
        }
        if self.release_inherited(fh) {
            return;
        }
        let file = self.files.lock().unwrap().remove(&fh);
        if let Some(f) = &file {
            self.unreserve(f.ino());
            // Its node may be needed no more.
            self.ns.lock().unwrap().let_go(f.ino());
        }
        if let Some(OpenFile::Cached { entry, .. }) = file {
            self.cache.close(entry);
        }
    }
}
