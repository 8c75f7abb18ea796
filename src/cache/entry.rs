//! An entry a handle holds open: the cache's face to the filesystem. It offers what a reader
//! needs of the entry's hydration (wait for bytes, check the cached ones, read them, the
//! whole-object verdict) and one way to let go (`Cache::close`), so the filesystem never
//! drives the engine itself nor decides when an entry's hydration may stop, and the cache
//! keeps its count of open handles right. Must not know inodes, handles or the kernel.

use std::ops::Range;
use std::sync::Arc;

use crate::hydrate::{HydrateError, Hydration, ObjectIdentity, Progress};

use super::Cache;

/// An open cache entry (one per open handle; clones share it).
#[derive(Clone)]
pub struct OpenEntry {
    pub(super) hydration: Hydration,
}

impl OpenEntry {
    /// The version this entry holds.
    pub fn identity(&self) -> &ObjectIdentity {
        self.hydration.identity()
    }

    /// Every part is present and the whole-object check (where the server gave a CRC-64)
    /// passed: the file can be handed to the kernel as it is.
    pub fn is_complete(&self) -> bool {
        self.hydration.is_complete()
    }

    /// The cache file, for passthrough of a complete entry.
    pub fn file(&self) -> Option<Arc<std::fs::File>> {
        self.hydration.file()
    }

    /// Whether the bytes of `range` are present and checked; cached bytes from an earlier run
    /// are checked against their part's CRC-64 first (false: wait with `wait_range`).
    pub async fn verify_cached(&self, range: Range<u64>) -> Result<bool, HydrateError> {
        self.hydration.verify_cached(range).await
    }

    /// Waits until the parts holding `range` are present (fetched first if nobody is).
    pub async fn wait_range(&self, range: Range<u64>) -> Result<(), Arc<HydrateError>> {
        self.hydration.wait_range(range).await
    }

    /// Waits for the whole-object verdict (or the end of the hydration).
    pub async fn wait_verified(&self) -> Result<(), Arc<HydrateError>> {
        self.hydration.wait_verified().await
    }

    /// Waits until every part is present.
    pub async fn wait_complete(&self) -> Result<(), Arc<HydrateError>> {
        self.hydration.wait_complete().await
    }

    /// Tells the engine a reader read `range` (in `auto` mode, sequential reading switches
    /// to fetching the whole object).
    pub fn note_read(&self, range: Range<u64>) {
        self.hydration.note_read(range)
    }

    /// The whole object is being fetched (not only what readers ask for).
    pub fn fetches_all(&self) -> bool {
        self.hydration.fetches_all()
    }

    /// Every part has arrived (checked or not).
    pub fn all_fetched(&self) -> bool {
        self.hydration.all_fetched()
    }

    /// What ended the hydration, if something did.
    pub fn failure(&self) -> Option<Arc<HydrateError>> {
        self.hydration.failure()
    }

    /// `len` bytes from `offset` out of the cache file (blocking I/O).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.hydration.read_at(offset, len)
    }

    /// Parts and bytes so far.
    pub fn progress(&self) -> Progress {
        self.hydration.progress()
    }
}

impl Cache {
    /// A handle let go of `entry`. The entry may be evicted once no handle has it open, and
    /// its hydration stops when it has nothing more to do: at once, or (when it still writes
    /// its last records) as soon as it is done, not at the next periodic reap, so thousands
    /// of small files a second do not pile up descriptors.
    pub fn close(self: &Arc<Cache>, entry: OpenEntry) {
        self.close_entry(entry.identity());
        let hydration = entry.hydration;
        if !hydration.continues_after_close() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let cache = self.clone();
            rt.spawn(async move {
                let _ = hydration.wait_complete().await;
                // Stopping it syncs its records: off the async workers.
                let _ = tokio::task::spawn_blocking(move || cache.reap()).await;
            });
        }
    }
}
