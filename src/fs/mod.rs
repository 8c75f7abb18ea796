//! The filesystem's logic, without a kernel: the namespace (stable inode numbers, directory
//! listings cached for the metadata TTL, attributes), open handles bound to hydrations, and
//! reads that wait only for the parts they need. Errors are plain errno values. Only
//! `fs::fuse` speaks `fuser`; nothing here does.
//!
//! Naming rules: prefixes are directories and objects are files; a directory marker (a key
//! ending in `/`) is a directory; when a key and a prefix share a name (`a` and `a/b`) the
//! directory wins and the object is hidden (logged once), since hiding one object is better
//! than hiding a subtree. Keys whose components cannot be file names (empty as in `a//b`,
//! `.`, `..`, longer than 255 bytes) are skipped and logged once.

pub mod fuse;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::Cache;
use crate::hydrate::{Hydration, ObjectIdentity};
use crate::oss::{ListPage, OssError};
use crate::store::ObjectStore;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub bucket: String,
    /// Empty, or a prefix ending in `/`.
    pub prefix: String,
    pub metadata_ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug)]
struct Node {
    parent: u64,
    /// Full key for files; full prefix (ending in `/`, or empty for the bucket) for dirs.
    key: String,
    kind: Kind,
    size: u64,
    mtime: SystemTime,
    etag: String,
    /// The identity last confirmed by HEAD (or listing) for opens, and when.
    identity: Option<(ObjectIdentity, Instant)>,
    /// The ETag of the content the kernel may hold in its page cache for this inode.
    kernel_etag: Option<String>,
}

struct Listing {
    fetched: Instant,
    entries: Vec<DirEntry>,
}

#[derive(Default)]
struct Namespace {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, String, bool), u64>,
    listings: HashMap<u64, Listing>,
    next_ino: u64,
    logged_skips: HashSet<String>,
}

/// Counters for a mount, for logs and status.
#[derive(Debug, Default)]
pub struct FsStats {
    /// Directory listings (each may take several pages).
    pub listings: AtomicU64,
    pub heads: AtomicU64,
    pub opens: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    /// Reads whose bytes were all present when they arrived.
    pub cache_hits: AtomicU64,
    /// Reads that had to wait for parts.
    pub cache_misses: AtomicU64,
    /// Reads served by direct ranged GETs (objects larger than the cache).
    pub direct_reads: AtomicU64,
    /// Opens of complete files handed to the kernel (FUSE passthrough): their reads never
    /// reach ossmount and are not counted in `reads`.
    pub passthrough_opens: AtomicU64,
}

enum OpenFile {
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

/// Sequential ranged reads through a memory window of `window` bytes, for objects that do not
/// fit the cache. Memory per handle is bounded by the window.
pub struct DirectReader {
    store: Arc<dyn ObjectStore>,
    id: ObjectIdentity,
    window: u64,
    buf: tokio::sync::Mutex<(u64, bytes::Bytes)>,
}

impl DirectReader {
    async fn read(&self, offset: u64, end: u64) -> Result<Vec<u8>, OssError> {
        use futures_util::StreamExt;
        let mut buf = self.buf.lock().await;
        let covered = offset >= buf.0 && end <= buf.0 + buf.1.len() as u64;
        if !covered {
            let fetch_end = (offset + self.window.max(end - offset)).min(self.id.size);
            let mut s = self.store.get_range(
                &self.id.bucket,
                &self.id.key,
                offset..fetch_end,
                Some(self.id.etag.clone()),
            );
            let mut data = bytes::BytesMut::with_capacity((fetch_end - offset) as usize);
            while let Some(chunk) = s.next().await {
                data.extend_from_slice(&chunk?);
            }
            *buf = (offset, data.freeze());
        }
        let start = (offset - buf.0) as usize;
        Ok(buf.1[start..start + (end - offset) as usize].to_vec())
    }
}

pub struct OssFs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    cache: Arc<Cache>,
    ns: Mutex<Namespace>,
    dir_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    pub stats: FsStats,
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

/// One child of a directory as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedChild {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

/// Turns one directory's listing (with delimiter `/`) into children, applying the naming
/// rules; returns the children and the keys that were skipped.
pub fn children_from_listing(prefix: &str, page: &ListPage) -> (Vec<ListedChild>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut dirs: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for cp in &page.common_prefixes {
        let name = cp
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix('/'))
            .unwrap_or("");
        if !valid_name(name) {
            skipped.push(cp.clone());
            continue;
        }
        if dirs.insert(name.to_string()) {
            out.push(ListedChild {
                name: name.to_string(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                etag: String::new(),
            });
        }
    }
    for o in &page.objects {
        let Some(name) = o.key.strip_prefix(prefix) else {
            continue;
        };
        if name.is_empty() {
            continue; // the directory's own marker object
        }
        if !valid_name(name) {
            skipped.push(o.key.clone());
            continue;
        }
        if dirs.contains(name) {
            skipped.push(o.key.clone());
            continue;
        }
        out.push(ListedChild {
            name: name.to_string(),
            kind: Kind::File,
            size: o.size,
            mtime: o.last_modified,
            etag: o.etag.clone(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, skipped)
}

fn eio(context: &str, e: &OssError) -> i32 {
    match e.service() {
        Some(s) => tracing::warn!(code = %s.code, request_id = %s.request_id, "{context}: {e}"),
        None => tracing::warn!("{context}: {e}"),
    }
    libc::EIO
}

impl OssFs {
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, cache: Arc<Cache>) -> OssFs {
        let started = SystemTime::now();
        let mut ns = Namespace {
            next_ino: ROOT_INO + 1,
            ..Default::default()
        };
        ns.nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                key: cfg.prefix.clone(),
                kind: Kind::Dir,
                size: 0,
                mtime: started,
                etag: String::new(),
                identity: None,
                kernel_etag: None,
            },
        );
        OssFs {
            cfg,
            store,
            cache,
            ns: Mutex::new(ns),
            dir_locks: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started,
            stats: FsStats::default(),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    fn attr_of(&self, ino: u64, n: &Node) -> Attr {
        Attr {
            ino,
            kind: n.kind,
            size: n.size,
            mtime: if n.kind == Kind::Dir {
                self.started
            } else {
                n.mtime
            },
            perm: if n.kind == Kind::Dir {
                self.cfg.dir_mode
            } else {
                self.cfg.file_mode
            },
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, i32> {
        let ns = self.ns.lock().unwrap();
        ns.nodes
            .get(&ino)
            .map(|n| self.attr_of(ino, n))
            .ok_or(libc::ENOENT)
    }

    fn listing_fresh(&self, dir: u64) -> bool {
        let ns = self.ns.lock().unwrap();
        ns.listings
            .get(&dir)
            .is_some_and(|l| l.fetched.elapsed() < self.cfg.metadata_ttl)
    }

    /// Makes sure `dir` has a listing no older than the TTL (one request burst per directory
    /// at a time). A failed refresh keeps serving the previous listing, if any.
    async fn ensure_listing(&self, dir: u64) -> Result<(), i32> {
        if self.listing_fresh(dir) {
            return Ok(());
        }
        let prefix = {
            let ns = self.ns.lock().unwrap();
            match ns.nodes.get(&dir) {
                Some(n) if n.kind == Kind::Dir => n.key.clone(),
                Some(_) => return Err(libc::ENOTDIR),
                None => return Err(libc::ENOENT),
            }
        };
        let lock = self
            .dir_locks
            .lock()
            .unwrap()
            .entry(dir)
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if self.listing_fresh(dir) {
            return Ok(());
        }
        self.stats.listings.fetch_add(1, Ordering::Relaxed);
        let page = match crate::store::list_all(&*self.store, &self.cfg.bucket, &prefix, Some("/"))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let has_old = self.ns.lock().unwrap().listings.contains_key(&dir);
                if has_old && (e.is_retryable()) {
                    tracing::warn!("listing {prefix:?} failed, serving the previous listing: {e}");
                    return Ok(());
                }
                return Err(eio(&format!("listing {prefix:?}"), &e));
            }
        };
        let (children, skipped) = children_from_listing(&prefix, &page);
        let mut ns = self.ns.lock().unwrap();
        for key in skipped {
            if ns.logged_skips.insert(key.clone()) {
                tracing::warn!(key = %key, "skipping a key that cannot be a file name here (empty, '.', '..' or over-long component, or hidden by a directory of the same name)");
            }
        }
        let mut entries = Vec::with_capacity(children.len());
        for c in children {
            let is_dir = c.kind == Kind::Dir;
            let name_key = (dir, c.name.clone(), is_dir);
            let ino = match ns.names.get(&name_key) {
                Some(&ino) => ino,
                None => {
                    let ino = ns.next_ino;
                    ns.next_ino += 1;
                    ns.names.insert(name_key, ino);
                    ino
                }
            };
            let key = if is_dir {
                format!("{prefix}{}/", c.name)
            } else {
                format!("{prefix}{}", c.name)
            };
            let node = ns.nodes.entry(ino).or_insert_with(|| Node {
                parent: dir,
                key,
                kind: c.kind,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                etag: String::new(),
                identity: None,
                kernel_etag: None,
            });
            if c.kind == Kind::File {
                node.size = c.size;
                node.mtime = c.mtime;
                node.etag = c.etag.clone();
            }
            entries.push(DirEntry {
                ino,
                kind: c.kind,
                name: c.name,
            });
        }
        ns.listings.insert(
            dir,
            Listing {
                fetched: Instant::now(),
                entries,
            },
        );
        Ok(())
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, i32> {
        self.ensure_listing(parent).await?;
        let ns = self.ns.lock().unwrap();
        let listing = ns.listings.get(&parent).ok_or(libc::ENOENT)?;
        let entry = listing
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or(libc::ENOENT)?;
        let node = ns.nodes.get(&entry.ino).ok_or(libc::ENOENT)?;
        Ok(self.attr_of(entry.ino, node))
    }

    pub async fn opendir(&self, ino: u64) -> Result<u64, i32> {
        self.ensure_listing(ino).await?;
        let entries = {
            let ns = self.ns.lock().unwrap();
            let parent = ns.nodes.get(&ino).map(|n| n.parent).unwrap_or(ROOT_INO);
            let mut v = vec![
                DirEntry {
                    ino,
                    kind: Kind::Dir,
                    name: ".".into(),
                },
                DirEntry {
                    ino: parent,
                    kind: Kind::Dir,
                    name: "..".into(),
                },
            ];
            v.extend(
                ns.listings
                    .get(&ino)
                    .map(|l| l.entries.clone())
                    .unwrap_or_default(),
            );
            v
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(fh, entries);
        Ok(fh)
    }

    /// Entries from `offset` on, each with the offset of the entry after it.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>, i32> {
        let dirs = self.dirs.lock().unwrap();
        let entries = dirs.get(&fh).ok_or(libc::EBADF)?;
        Ok(entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// The identity to open: the cached one within the TTL, else a HEAD. When the server
    /// cannot be reached, the last known identity (or a complete cache entry's) is used, so
    /// cached files stay readable offline.
    async fn identity_for_open(&self, ino: u64) -> Result<ObjectIdentity, i32> {
        let (key, cached, listed_etag, listed_size) = {
            let ns = self.ns.lock().unwrap();
            let n = ns.nodes.get(&ino).ok_or(libc::ENOENT)?;
            if n.kind == Kind::Dir {
                return Err(libc::EISDIR);
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
                Err(libc::ENOENT)
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
                Err(eio(&format!("HEAD {key}"), &e))
            }
            Err(e) => Err(eio(&format!("HEAD {key}"), &e)),
        }
    }

    /// Opens a file: confirms its version, joins or starts its hydration, and says whether the
    /// kernel may keep its page cache (same version as last time) and, for a complete entry,
    /// which file the kernel could read directly.
    pub async fn open(&self, ino: u64) -> Result<Opened, i32> {
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
                .map_err(|_| libc::EIO)?
                .map_err(|e| {
                    tracing::warn!(key = %id.key, "cannot open the cache entry: {e}");
                    libc::EIO
                })?;
            OpenFile::Cached { ino, hydration }
        };
        let keep_cache = {
            let mut ns = self.ns.lock().unwrap();
            let n = ns.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
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
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let h = match self.files.lock().unwrap().get(&fh).ok_or(libc::EBADF)? {
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
                return Err(libc::EIO);
            }
        }
        let data = tokio::task::spawn_blocking(move || h.read_at(offset, (end - offset) as usize))
            .await
            .map_err(|_| libc::EIO)?
            .map_err(|e| {
                tracing::warn!("reading the cache file failed: {e}");
                libc::EIO
            })?;
        self.stats
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn read_direct(&self, r: &DirectReader, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let end = (offset + size as u64).min(r.id.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
        match r.read(offset, end).await {
            Ok(d) => {
                self.stats
                    .read_bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                Ok(d)
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if e.is_precondition_failed() {
                    tracing::warn!(key = %r.id.key, "the object changed while it was being read");
                    return Err(libc::EIO);
                }
                Err(eio(&format!("read {}", r.id.key), &e))
            }
        }
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

    /// Extended attributes of a file: `user.ossmount.hydration` ("37/128 parts"),
    /// `user.ossmount.cached` (complete, partial, none) and `user.ossmount.etag`.
    pub fn xattr(&self, ino: u64, name: &str) -> Option<Vec<u8>> {
        let (key, etag) = {
            let ns = self.ns.lock().unwrap();
            let n = ns.nodes.get(&ino).filter(|n| n.kind == Kind::File)?;
            (n.key.clone(), n.etag.clone())
        };
        let state = self.cache.entry_state(&self.cfg.bucket, &key);
        let value = match name {
            "user.ossmount.etag" => etag,
            "user.ossmount.hydration" => match &state {
                Some(s) => format!("{}/{} parts", s.parts_present, s.parts_total),
                None => "0 parts".to_string(),
            },
            "user.ossmount.cached" => match &state {
                Some(s) if s.complete => "complete".into(),
                Some(s) if s.parts_present > 0 => "partial".into(),
                _ => "none".into(),
            },
            _ => return None,
        };
        Some(value.into_bytes())
    }

    pub fn xattr_names(&self, ino: u64) -> Vec<&'static str> {
        let is_file = self
            .ns
            .lock()
            .unwrap()
            .nodes
            .get(&ino)
            .is_some_and(|n| n.kind == Kind::File);
        if is_file {
            vec![
                "user.ossmount.cached",
                "user.ossmount.etag",
                "user.ossmount.hydration",
            ]
        } else {
            vec![]
        }
    }

    pub fn stats_line(&self) -> String {
        let c = self.counters();
        format!(
            "{} part requests ({} retries), {} bytes fetched, {} listings, {} HEADs, {} opens ({} passthrough), {} reads ({} bytes served; {} hits, {} misses, {} direct), {} read errors, {} evictions",
            c.part_requests, c.part_retries, c.bytes_fetched, c.listings, c.heads, c.opens, c.passthrough_opens, c.reads, c.bytes_served, c.cache_hits, c.cache_misses, c.direct_reads, c.read_errors, c.evictions
        )
    }

    /// Every counter of the mount, for logs and `status`.
    pub fn counters(&self) -> crate::status::MountCounters {
        let s = &self.stats;
        let e = self.cache.engine_stats();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::status::MountCounters {
            part_requests: l(&e.part_requests),
            part_retries: l(&e.part_retries),
            bytes_fetched: l(&e.bytes_fetched),
            listings: l(&s.listings),
            heads: l(&s.heads),
            opens: l(&s.opens),
            reads: l(&s.reads),
            bytes_served: l(&s.read_bytes),
            cache_hits: l(&s.cache_hits),
            cache_misses: l(&s.cache_misses),
            direct_reads: l(&s.direct_reads),
            passthrough_opens: l(&s.passthrough_opens),
            read_errors: l(&s.read_errors),
            evictions: l(&self.cache.stats().evictions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oss::ListedObject;

    fn obj(key: &str) -> ListedObject {
        ListedObject {
            key: key.into(),
            size: 1,
            etag: "\"E\"".into(),
            last_modified: SystemTime::UNIX_EPOCH,
            storage_class: String::new(),
        }
    }

    #[test]
    fn listing_rules() {
        let page = ListPage {
            objects: vec![
                obj("p/"),
                obj("p/a.txt"),
                obj("p/same"),
                obj("p/."),
                obj("p/.."),
            ],
            common_prefixes: vec!["p/same/".into(), "p/sub/".into(), "p//".into()],
            ..Default::default()
        };
        let (children, skipped) = children_from_listing("p/", &page);
        let names: Vec<(&str, Kind)> = children.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("a.txt", Kind::File),
                ("same", Kind::Dir),
                ("sub", Kind::Dir)
            ]
        );
        let mut skipped = skipped;
        skipped.sort();
        assert_eq!(skipped, vec!["p/.", "p/..", "p//", "p/same"]);
        let long = format!("p/{}", "x".repeat(256));
        let (c, s) = children_from_listing(
            "p/",
            &ListPage {
                objects: vec![obj(&long)],
                ..Default::default()
            },
        );
        assert!(c.is_empty() && s == vec![long]);
    }
}
