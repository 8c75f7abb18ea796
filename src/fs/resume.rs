//! Taking over from an earlier server process of the same kernel connection: the kernel
//! keeps sending requests about the inode numbers and handles that process gave it. A
//! number this process does not know is looked up in the journal (one record read per
//! ancestor not yet known) and the node is made again with that same number, pinned (see
//! `namespace::PINNED`); a number neither knows is `UnknownInode` (ESTALE). A file handle of
//! the earlier process reads the version it was reading (its journaled identity), through
//! the cache, from its first read on, resuming that entry's hydration from its checkpoint as
//! a remount does; if that version is gone from the server, its reads fail as a live
//! handle's do when its object changes, never with another version's bytes. Directory
//! handles are not journaled: `readdir` of one this process never opened lists the
//! directory again (see `readdir_in` for what offsets mean). A `forget` of a number this
//! process does not know is ignored: nothing here holds it. Must not write the journal's
//! records itself, nor know the kernel.

use std::collections::HashMap;
use std::sync::Arc;

use crate::hydrate::ObjectIdentity;

use super::coverage::Coverage;
use super::handles::OpenFile;
use super::journal::HandleRecord;
use super::node::Etag;
use super::{DirEntry, FsError, OssFs};

/// A handle an earlier server process opened, not yet read or released here.
pub(super) struct Inherited {
    ino: u64,
    identity: ObjectIdentity,
    backing: Option<u32>,
    /// Held by the read that opens the handle's entry, so concurrent first reads open it once.
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// A handle taken over from an earlier process, as the FUSE adapter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedHandle {
    pub fh: u64,
    pub ino: u64,
    /// The kernel's passthrough backing id the earlier process opened it with: still
    /// registered with the kernel, and the only one the kernel accepts for that inode.
    pub backing: Option<u32>,
}

impl OssFs {
    /// Takes over the handles the journal left open: their inodes are made again and hold
    /// their version (a new version opened meanwhile gets a new inode, as beside any open).
    pub(super) fn inherit(&self, handles: Vec<HandleRecord>) {
        let mut inherited = HashMap::new();
        for h in handles {
            if let Err(e) = self.resolve(h.ino) {
                tracing::warn!(
                    fh = h.fh,
                    ino = h.ino,
                    "an open handle's inode is not in the journal: {e}"
                );
            }
            {
                let mut versions = self.open_versions.lock().unwrap();
                let (_, count) = versions
                    .entry(h.ino)
                    .or_insert_with(|| (h.identity.etag.clone(), 0));
                *count += 1;
            }
            if let Some(n) = self.ns.lock().unwrap().nodes.get_mut(&h.ino) {
                let opened = n.opened_mut();
                opened.open_size = Some(h.identity.size);
                // The kernel's page cache of this inode holds this version.
                opened.kernel_etag = Some(Etag::new(&h.identity.etag));
            }
            inherited.insert(
                h.fh,
                Inherited {
                    ino: h.ino,
                    identity: h.identity,
                    backing: h.backing,
                    opening: Default::default(),
                },
            );
        }
        if !inherited.is_empty() {
            tracing::info!(
                handles = inherited.len(),
                "took over the open handles of the previous server process"
            );
        }
        *self.inherited.lock().unwrap() = inherited;
    }

    /// The handles taken over from an earlier process and still open (for the adapter's
    /// passthrough table, once at its start).
    pub fn inherited_handles(&self) -> Vec<InheritedHandle> {
        let mut v: Vec<InheritedHandle> = self
            .inherited
            .lock()
            .unwrap()
            .iter()
            .map(|(fh, h)| InheritedHandle {
                fh: *fh,
                ino: h.ino,
                backing: h.backing,
            })
            .collect();
        v.sort_by_key(|h| h.fh);
        v
    }

    /// Whether this filesystem keeps a journal (then `note_passthrough` is wanted).
    pub fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// The kernel reads handle `fh` through passthrough backing id `backing`: journaled, so a
    /// later process reuses the id for that inode (the kernel refuses another).
    pub fn note_passthrough(&self, fh: u64, backing: u32) {
        if let Some(j) = &self.journal {
            j.backing(fh, backing);
        }
    }

    /// Makes sure the namespace knows `ino`: a number of an earlier process is taken over
    /// from the journal, its unknown ancestors first. Without a journal, unknown numbers are
    /// left to the caller (`NotFound`, as ever).
    pub(super) fn resolve(&self, ino: u64) -> Result<(), FsError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let mut chain = Vec::new();
        let mut at = ino;
        // Records are read outside the namespace lock (a `pread` each).
        while !self.ns.lock().unwrap().nodes.contains_key(&at) {
            let rec = journal
                .node(at)
                // A parent is always journaled before its children: this also ends any walk.
                .filter(|r| r.parent < r.ino)
                .ok_or(FsError::UnknownInode(ino))?;
            at = rec.parent;
            chain.push(rec);
        }
        if chain.is_empty() {
            return Ok(());
        }
        let mut ns = self.ns.lock().unwrap();
        for rec in chain.iter().rev() {
            ns.take_over(rec);
        }
        tracing::debug!(
            ino,
            taken_over = chain.len(),
            "inode of an earlier server process"
        );
        if ns.nodes.contains_key(&ino) {
            Ok(())
        } else {
            Err(FsError::UnknownInode(ino))
        }
    }

    /// Opens the entry of handle `fh` if an earlier process opened it (its first read here).
    pub(super) async fn adopt(&self, fh: u64) -> Result<(), FsError> {
        let opening = match self.inherited.lock().unwrap().get(&fh) {
            Some(h) => h.opening.clone(),
            None => return Err(FsError::BadHandle),
        };
        let _only_one = opening.lock().await;
        if self.files.lock().unwrap().contains_key(&fh) {
            return Ok(()); // a concurrent first read opened it
        }
        let (ino, id) = {
            let inherited = self.inherited.lock().unwrap();
            let h = inherited.get(&fh).ok_or(FsError::BadHandle)?;
            (h.ino, h.identity.clone())
        };
        let file = self.open_file(ino, &id, None).await?;
        // The earlier process served this handle what it read: this one sees only part of
        // it, so the read at the end waits for the whole-object check (`Coverage`).
        if let OpenFile::Cached { served, .. } = &file {
            *served.lock().unwrap() = Coverage::kernel_cached();
        }
        self.files.lock().unwrap().insert(fh, file);
        self.inherited.lock().unwrap().remove(&fh);
        tracing::debug!(fh, key = %id.key, "a handle of the previous server process reads again");
        Ok(())
    }

    /// Releases handle `fh` if an earlier process opened it and it was never read here.
    pub(super) fn release_inherited(&self, fh: u64) -> bool {
        let Some(h) = self.inherited.lock().unwrap().remove(&fh) else {
            return false;
        };
        self.unreserve(h.ino);
        self.ns.lock().unwrap().let_go(h.ino);
        true
    }

    /// The inodes of handles taken over and not yet read (a sweep keeps them).
    pub(super) fn inherited_inos(&self) -> Vec<u64> {
        self.inherited
            .lock()
            .unwrap()
            .values()
            .map(|h| h.ino)
            .collect()
    }

    /// `readdir` given the directory's inode too. A handle this process never opened (the
    /// kernel opened it from an earlier process) gets the directory listed again under that
    /// handle. An offset is a place in the directory's listing in name order (1 and 2 are
    /// after `.` and `..`, `n + 3` after the entry at index `n`), which a listing made again
    /// keeps as long as the directory did not change: a reader continues where it was.
    pub async fn readdir_in(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, DirEntry)>, FsError> {
        self.reopen_dir(ino, fh).await?;
        self.readdir(fh, offset, max).await
    }

    /// `readdirplus`, given the directory's inode (see `readdir_in`).
    pub async fn readdirplus_in(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, DirEntry, super::Attr)>, FsError> {
        self.reopen_dir(ino, fh).await?;
        self.readdirplus(fh, offset, max).await
    }

    async fn reopen_dir(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), FsError> {
        if self.journal.is_none() || self.dirs.lock().unwrap().contains_key(&fh) {
            return Ok(());
        }
        self.resolve(ino)?;
        self.open_dir_as(ino, fh).await
    }
}
