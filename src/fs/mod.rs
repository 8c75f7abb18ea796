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
mod journal;
mod kernel;
pub(crate) use kernel::connected;
mod listing;
mod namespace;
mod node;
pub mod passthrough;
mod probe;
mod resume;
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
pub use journal::JournalConfig;
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
    /// Refuse objects that cannot be verified (no CRC-64, no whole-object digest).
    pub require_crc: bool,
    /// The longest a read waits for its bytes before it fails with EIO.
    pub read_deadline: Duration,
    /// The most bytes the windows of every reader of objects larger than the cache hold
    /// together (`DEFAULT_DIRECT_MEMORY` unless set); readahead stops at it.
    pub direct_memory: u64,
    /// Where this mount writes what the kernel holds (inode numbers, open handles), so a
    /// new server process taking over the same kernel connection can honour them (see
    /// `journal`). `None`: nothing is written, and the mount ends with its process.
    pub journal: Option<JournalConfig>,
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
    /// What the kernel holds from this and earlier server processes of the connection.
    journal: Option<Arc<journal::Journal>>,
    /// Handles an earlier server process opened and the kernel has not released: opened
    /// here at their first read (see `resume.rs`).
    inherited: Mutex<HashMap<u64, resume::Inherited>>,
    started: SystemTime,
    pub stats: FsStats,
}

impl OssFs {
    /// A filesystem over `store` and `cache`. With `cfg.journal`, a journal that cannot be
    /// opened is logged and the mount runs without one (it then ends with its process); use
    /// `try_new` to fail instead.
    pub fn new(cfg: FsConfig, store: Arc<dyn ObjectStore>, cache: Arc<Cache>) -> OssFs {
        match OssFs::try_new(cfg.clone(), store.clone(), cache.clone()) {
            Ok(fs) => fs,
            Err(e) => {
                tracing::error!("{e}: this mount runs without a journal and will not survive a restart of its server");
                let cfg = FsConfig {
                    journal: None,
                    ..cfg
                };
                OssFs::try_new(cfg, store, cache).expect("nothing to fail without a journal")
            }
        }
    }

    /// A filesystem over `store` and `cache`, with the journal of `cfg.journal` opened (and,
    /// with `resume`, the previous server process's inode numbers and open handles taken
    /// over). Fails only when the journal cannot be opened.
    pub fn try_new(
        cfg: FsConfig,
        store: Arc<dyn ObjectStore>,
        cache: Arc<Cache>,
    ) -> std::io::Result<OssFs> {
        let opened = match &cfg.journal {
            Some(jc) => Some(journal::Journal::open(jc)?),
            None => None,
        };
        // Directories show when the mount started: the same to every server generation.
        let started = opened
            .as_ref()
            .map_or_else(SystemTime::now, |(j, _, _)| j.started());
        let mut ns = Namespace::new(&cfg.prefix, started);
        let (journal, inherited) = match opened {
            Some((journal, log, inherited)) => {
                tracing::info!(
                    dir = %journal.dir().display(),
                    generation = journal.generation(),
                    resumed = journal.resumed(),
                    "the mount's journal"
                );
                ns.log = Some(log);
                (Some(Arc::new(journal)), inherited)
            }
            None => (None, Vec::new()),
        };
        let first_fh = journal.as_ref().map_or(1, |j| j.first_fh());
        let direct = Arc::new(direct::Shared {
            store: store.clone(),
            limiter: cache.limiter().clone(),
            budget: direct::WindowBudget::new(cfg.direct_memory, direct::WINDOW),
        });
        let fs = OssFs {
            cfg,
            store,
            cache,
            ns: Mutex::new(ns),
            files: Mutex::new(HashMap::new()),
            open_versions: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            listings_in_flight: Default::default(),
            direct,
            next_fh: AtomicU64::new(first_fh),
            journal,
            inherited: Mutex::new(HashMap::new()),
            started,
            stats: FsStats::default(),
        };
        fs.inherit(inherited);
        Ok(fs)
    }

    /// Which server process of this mount's kernel connection this is, counted by its
    /// journal (1 for the first; a takeover adds one), or `None` without a journal.
    pub fn server_generation(&self) -> Option<u64> {
        self.journal.as_ref().map(|j| j.generation())
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
