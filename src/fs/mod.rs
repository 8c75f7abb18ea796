//! The filesystem's logic, without a kernel: the namespace (stable inode numbers, directory
//! listings cached for the metadata TTL, attributes), open handles bound to hydrations, and
//! reads that wait only for the parts they need. Errors are typed (`FsError`); only
//! `fs::fuse` speaks `fuser` and turns them into errno values. Must not import fuser outside
//! `fs::fuse`, nor issue HTTP itself: bytes come from the cache's hydrations or the store.
//!
//! Naming rules: prefixes are directories and objects are files; a directory marker (a key
//! ending in `/`) is a directory; when a key and a prefix share a name (`a` and `a/b`) the
//! directory wins and the object is hidden (logged once), since hiding one object is better
//! than hiding a subtree. Keys whose components cannot be file names (empty as in `a//b`,
//! `.`, `..`, longer than 255 bytes) are skipped and logged once.

mod counters;
mod coverage;
mod direct;
mod error;
pub mod fuse;
mod handles;
mod kernel;
mod listing;
mod namespace;
mod node;
pub mod passthrough;
mod probe;
mod sweep;
mod xattr;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::cache::Cache;
use crate::store::ObjectStore;

pub use counters::{FsStats, MountCounters};
pub use direct::DEFAULT_DIRECT_MEMORY;
pub use error::FsError;
pub use handles::Opened;
pub use namespace::{children_from_listing, ListedChild};
pub use sweep::ListingShare;

use handles::OpenFile;
use namespace::Namespace;
use node::Node;

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
    /// Refuse objects the server announces no CRC-64 for (they cannot be verified).
    pub require_crc: bool,
    /// The longest a read waits for its bytes before it fails with EIO.
    pub read_deadline: Duration,
    /// The most bytes the windows of every reader of objects larger than the cache hold
    /// together (`DEFAULT_DIRECT_MEMORY` unless set); readahead stops at it.
    pub direct_memory: u64,
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

pub struct OssFs {
    cfg: FsConfig,
    store: Arc<dyn ObjectStore>,
    cache: Arc<Cache>,
    ns: Mutex<Namespace>,
    files: Mutex<HashMap<u64, OpenFile>>,
    /// The version each inode is open as, and by how many handles (opening or open): taken
    /// in one step with the check, so two opens that see different versions can never
    /// both land on one inode (the later one gets a new inode).
    open_versions: Mutex<HashMap<u64, (String, usize)>>,
    dirs: Mutex<HashMap<u64, namespace::DirHandle>>,
    listings_in_flight: listing::InFlight,
    /// What the direct readers of this mount share: the store, the mount's connection
    /// limiter and the window memory budget.
    direct: Arc<direct::Shared>,
    next_fh: AtomicU64,
    started: SystemTime,
    pub stats: FsStats,
}

impl OssFs {
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, cache: Arc<Cache>) -> OssFs {
        let started = SystemTime::now();
        let ns = Namespace::new(&cfg.prefix, started);
        let direct = Arc::new(direct::Shared {
            store: store.clone(),
            limiter: cache.limiter().clone(),
            budget: direct::WindowBudget::new(cfg.direct_memory, direct::WINDOW),
        });
        OssFs {
            cfg,
            store,
            cache,
            ns: Mutex::new(ns),
            files: Mutex::new(HashMap::new()),
            open_versions: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            listings_in_flight: Default::default(),
            direct,
            next_fh: AtomicU64::new(1),
            started,
            stats: FsStats::default(),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// The store this mount reads with (its endpoint and credentials).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Counts this mount's cached listings against the node's share of its memory target:
    /// while every mount's listings together show more entries than the share allows, the
    /// oldest go before their TTL (the next `sweep_namespace` does it).
    pub fn share_listings(&self, share: Arc<ListingShare>) {
        self.ns.lock().unwrap().sweep.share_listings(share);
    }

    /// Listings this mount dropped before their time to stay within the node's share.
    pub fn listings_dropped_for_memory(&self) -> u64 {
        self.ns.lock().unwrap().sweep.dropped_for_memory
    }

    fn attr_of(&self, ino: u64, n: &Node) -> Attr {
        Attr {
            ino,
            kind: n.kind,
            size: n.open_size().unwrap_or(n.size),
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
}
