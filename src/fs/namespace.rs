//! The namespace: inode numbers (stable for the life of the mount), directory listings cached
//! for the metadata TTL with one listing per directory in flight, the naming rules that turn
//! keys into names, and lookup/readdir over them. Must not open or read files.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::hydrate::ObjectIdentity;
use crate::store::ListPage;

use super::journal::{NodeLog, NodeRecord, Seen};
use super::listing::{Entries, LIST_PAGE};
use super::node::{Etag, Names, Node, Nodes};
use super::{Attr, DirEntry, FsError, Kind, OssFs, ROOT_INO};

pub(super) struct Listing {
    pub(super) fetched: Instant,
    /// Shared with the `readdir` handles reading it (never copied per handle).
    pub(super) entries: Arc<Entries>,
    /// This listing's number (see `Node::listed`): names are looked up through `names`,
    /// so a listing keeps no second map of its own.
    pub(super) number: u64,
}

#[derive(Default)]
pub(super) struct Namespace {
    pub(super) nodes: Nodes,
    pub(super) names: Names,
    pub(super) listings: HashMap<u64, Listing>,
    pub(super) next_ino: u64,
    /// The number the next listing gets (see `Node::listed`).
    pub(super) next_listing: u64,
    pub(super) logged_skips: HashSet<String>,
    /// Names answered by a probe (HEAD + one-key listing) in a directory that was not
    /// listed, and when: the inode, or `None` for a name that does not exist.
    pub(super) probes: HashMap<(u64, String), (Instant, Option<u64>)>,
    /// What a sweep looks at (see `sweep.rs`).
    pub(super) sweep: super::sweep::Sweep,
    /// The mount's journal, when it keeps one: new nodes are numbered by it (see
    /// `journal.rs`), so their numbers are written down before anything can show them.
    pub(super) log: Option<NodeLog>,
}

/// The kernel references of a node taken over from an earlier server process: how many it
/// holds is unknown, so the node is never swept (it costs its node until the unmount; only
/// numbers the kernel asks about after a takeover are taken over).
pub(super) const PINNED: u64 = 1 << 62;

impl Namespace {
    /// Gives the file `ino` a new inode number carrying `id`, for a new version opened while
    /// handles of the old one are open: the kernel keeps the old inode (its page cache, its
    /// passthrough backing file) for those handles and meets the new version on a new inode,
    /// so the two are never mixed. The old node stays for its handles; names and the listing
    /// now lead to the new one. Returns the new number.
    pub(super) fn renumber(&mut self, ino: u64, id: &ObjectIdentity) -> Option<u64> {
        let old = self.nodes.get(&ino)?;
        let (parent, name) = (old.parent, old.name.clone());
        let mut node = Node::new(
            parent,
            &name,
            Kind::File,
            httpdate::parse_http_date(&id.last_modified).unwrap_or(old.mtime),
        );
        node.size = id.size;
        node.etag = Etag::new(&id.etag);
        node.listed = old.listed;
        node.opened_mut().identity = Some((id.clone(), Instant::now()));
        let seen = Seen {
            size: id.size,
            mtime: node.mtime,
            etag: &id.etag,
        };
        let new_ino = self.number(parent, Kind::File, &name, Some(&seen));
        self.nodes.insert(new_ino, Box::new(node));
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        self.names.set(&self.nodes, new_ino);
        if let Some(l) = self.listings.get_mut(&parent) {
            let moved = l.entries.with_entries(|entries| {
                let mut moved = 0;
                for e in entries.iter_mut().filter(|e| e.ino == ino) {
                    e.ino = new_ino;
                    moved += 1;
                }
                moved
            });
            // The listing now shows the new node, not the old one (which its handles keep).
            if let Some(old) = self.nodes.get_mut(&ino) {
                old.in_listings = old.in_listings.saturating_sub(moved);
            }
            if let Some(new) = self.nodes.get_mut(&new_ino) {
                new.in_listings += moved;
            }
        }
        if let Some((_, answer)) = self.probes.get_mut(&(parent, name.to_string())) {
            *answer = Some(new_ino);
        }
        Some(new_ino)
    }

    /// The inode of `name` in `parent` as a file or a directory, created when new (numbers
    /// stay what a listing or an earlier probe gave them).
    pub(super) fn child(&mut self, parent: u64, name: &str, kind: Kind) -> u64 {
        self.child_seen(parent, name, kind, None)
    }

    /// `child`, with the version a listing or HEAD showed for a file (the journal records
    /// it with a new node; the caller sets it on the node either way).
    pub(super) fn child_seen(
        &mut self,
        parent: u64,
        name: &str,
        kind: Kind,
        seen: Option<&Seen<'_>>,
    ) -> u64 {
        if let Some(ino) = self.names.get(&self.nodes, parent, name, kind == Kind::Dir) {
            return ino;
        }
        // A name an earlier server process numbered keeps its number (the kernel may hold
        // it); not pinned: if it is swept and asked for again, the journal resolves it.
        let earlier = self
            .log
            .as_ref()
            .and_then(|log| log.earlier(parent, kind, name))
            .filter(|ino| !self.nodes.contains_key(ino));
        let ino = match earlier {
            Some(ino) => ino,
            None => self.number(parent, kind, name, seen),
        };
        self.nodes.insert(
            ino,
            Box::new(Node::new(parent, name, kind, SystemTime::UNIX_EPOCH)),
        );
        self.names.set(&self.nodes, ino);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        ino
    }

    /// A number for a new node: its journal record's place, or the next of this process.
    fn number(&mut self, parent: u64, kind: Kind, name: &str, seen: Option<&Seen<'_>>) -> u64 {
        match self.log.as_mut() {
            Some(log) => log.append(parent, kind, name, seen),
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                ino
            }
        }
    }

    /// Writes the journal records a batch of new nodes placed (see `NodeLog::begin_batch`).
    pub(super) fn flush_journal(&mut self) {
        if let Some(log) = self.log.as_mut() {
            log.flush();
        }
    }

    /// Takes over node `rec` that an earlier server process numbered (its parent is here
    /// already), pinned (see `PINNED`). Its name leads to it unless a node of this process
    /// has that name already (then both stay, each reachable by its number).
    pub(super) fn take_over(&mut self, rec: &NodeRecord) {
        if self.nodes.contains_key(&rec.ino) || !self.nodes.contains_key(&rec.parent) {
            return;
        }
        let mut node = Node::new(rec.parent, &rec.name, rec.kind, rec.mtime);
        node.size = rec.size;
        node.etag = Etag::new(&rec.etag);
        node.lookups = PINNED;
        self.nodes.insert(rec.ino, Box::new(node));
        if self
            .names
            .get(&self.nodes, rec.parent, &rec.name, rec.kind == Kind::Dir)
            .is_none()
        {
            self.names.set(&self.nodes, rec.ino);
        }
        if let Some(p) = self.nodes.get_mut(&rec.parent) {
            p.children += 1;
        }
    }

    /// The object key of a file, or the prefix of a directory (ending in `/`, or empty for
    /// the bucket): its ancestors' names joined.
    pub(super) fn key_of(&self, ino: u64) -> Option<String> {
        let mut parts: Vec<(&str, Kind)> = Vec::new();
        let mut at = ino;
        loop {
            let n = self.nodes.get(&at)?;
            if at == ROOT_INO {
                let mut key = n.name.to_string();
                for &(name, kind) in parts.iter().rev() {
                    key.push_str(name);
                    if kind == Kind::Dir {
                        key.push('/');
                    }
                }
                return Some(key);
            }
            parts.push((&*n.name, n.kind));
            at = n.parent;
        }
    }

    /// The version known for `key` is not to be trusted (it changed, or its bytes failed
    /// their check): the next open of any inode of that key asks the server. With
    /// `pages_bad` (bytes failed their check) the kernel's page cache of it is not trusted
    /// either: it may hold bytes served before the check, so the next open drops it even for
    /// the same version. (A walk over the nodes that know an identity, on a failure's path
    /// only.)
    pub(super) fn forget_identity(&mut self, key: &str, pages_bad: bool) {
        let last = key
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let same_key: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| *n.name == *last && n.opened.is_some())
            .map(|(ino, _)| *ino)
            .filter(|ino| self.key_of(*ino).as_deref() == Some(key))
            .collect();
        for ino in same_key {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if let Some(o) = n.opened.as_mut() {
                    o.identity = None;
                    if pages_bad {
                        o.kernel_etag = None;
                    }
                }
                n.tidy_opened();
            }
        }
    }

    /// A namespace holding only the root directory (the mount's prefix).
    pub(super) fn new(root_key: &str, started: SystemTime) -> Namespace {
        let mut ns = Namespace {
            next_ino: ROOT_INO + 1,
            ..Default::default()
        };
        let mut root = Node::new(ROOT_INO, root_key, Kind::Dir, started);
        root.lookups = 1; // the kernel never forgets the root
        ns.nodes.insert(ROOT_INO, Box::new(root));
        ns
    }

    /// The kernel dropped `n` references to `ino`: once it holds none, a sweep may drop it.
    pub(super) fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                self.let_go(ino);
            }
        }
    }
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

pub(super) fn valid_name(name: &str) -> bool {
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

impl OssFs {
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.resolve(ino)?;
        let ns = self.ns.lock().unwrap();
        ns.nodes
            .get(&ino)
            .map(|n| self.attr_of(ino, n))
            .ok_or(FsError::NotFound)
    }

    /// A name in a directory, in constant time; the kernel holds a reference to what it
    /// returns until it forgets it.
    pub async fn lookup(self: &Arc<Self>, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.resolve(parent)?;
        let listed = self
            .ns
            .lock()
            .unwrap()
            .listings
            .get(&parent)
            .map(|l| (l.fetched.elapsed() < self.cfg.metadata_ttl, l.entries.len()));
        match listed {
            // Not listed: ask for this one name instead of listing every page.
            None => return self.lookup_unlisted(parent, name).await,
            // Listed, but past the TTL, and more than a page long: asking for the one name
            // is one round trip; listing the directory again would be one per 1,000 keys.
            // When the server cannot be reached, the previous listing answers.
            Some((false, entries)) if entries > LIST_PAGE => {
                return match self.lookup_unlisted(parent, name).await {
                    Err(FsError::Store { context, source }) if source.is_retryable() => {
                        tracing::warn!("{context} failed, using the previous listing: {source}");
                        self.lookup_listed(parent, name)
                    }
                    other => other,
                };
            }
            _ => {}
        }
        self.ensure_listing(parent).await?;
        self.lookup_listed(parent, name)
    }

    /// `name` as the directory's cached listing has it.
    fn lookup_listed(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let mut ns = self.ns.lock().unwrap();
        let number = ns.listings.get(&parent).ok_or(FsError::NotFound)?.number;
        // A directory wins over a file of the same name, as in listings.
        let ino = [true, false]
            .into_iter()
            .filter_map(|is_dir| ns.names.get(&ns.nodes, parent, name, is_dir))
            .find(|ino| ns.nodes.get(ino).is_some_and(|n| n.listed >= number))
            .ok_or(FsError::NotFound)?;
        tracing::trace!(parent, name, ino, "lookup");
        let node = ns.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        node.lookups += 1;
        let node = ns.nodes.get(&ino).expect("just found");
        Ok(self.attr_of(ino, node))
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.ns.lock().unwrap().forget(ino, n);
    }

    /// The kernel took a reference through a readdirplus entry.
    pub fn remember(&self, ino: u64) {
        if let Some(node) = self.ns.lock().unwrap().nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// Frees listings and nodes nobody uses (run every second by the mount): nothing to do,
    /// and nothing looked at, unless something was let go or a listing or probe expired.
    pub fn sweep_namespace(&self) {
        let keep = self.cfg.metadata_ttl * 2;
        if !self.ns.lock().unwrap().sweep_wanted(keep) {
            return;
        }
        let mut open: HashSet<u64> = self
            .files
            .lock()
            .unwrap()
            .values()
            .map(|f| f.ino())
            .collect();
        open.extend(self.inherited_inos());
        // Directories that open handles read and listings still arriving: their nodes stay.
        let mut reading: HashSet<u64> = HashSet::new();
        for d in self.dirs.lock().unwrap().values() {
            open.insert(d.ino);
            reading.insert(d.ino);
        }
        reading.extend(self.listings_in_flight.lock().unwrap().keys().copied());
        self.ns.lock().unwrap().sweep(keep, &open, &reading);
    }

    /// Opens a directory for reading once the first page of its listing is in (later pages
    /// keep arriving while the kernel reads the first).
    pub async fn opendir(self: &Arc<Self>, ino: u64) -> Result<u64, FsError> {
        self.resolve(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.open_dir_as(ino, fh).await?;
        Ok(fh)
    }

    /// Opens directory `ino` as handle `fh` (a new one, or one an earlier process opened).
    pub(super) async fn open_dir_as(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), FsError> {
        let entries = self.dir_entries(ino).await?;
        let parent = {
            let ns = self.ns.lock().unwrap();
            ns.nodes.get(&ino).map(|n| n.parent).unwrap_or(ROOT_INO)
        };
        let mut dirs = self.dirs.lock().unwrap();
        // A concurrent first readdir of an earlier process's handle may have opened it.
        dirs.entry(fh).or_insert(DirHandle {
            ino,
            parent,
            entries,
        });
        Ok(())
    }

    /// Up to `max` entries from `offset` on, each with the offset of the entry after it,
    /// waiting for the listing's pages that hold them (a reply buffer holds a few hundred:
    /// copying the rest of a huge directory each time would make a listing quadratic).
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, DirEntry)>, FsError> {
        let (ino, parent, entries) = {
            let dirs = self.dirs.lock().unwrap();
            let h = dirs.get(&fh).ok_or(FsError::BadHandle)?;
            (h.ino, h.parent, h.entries.clone())
        };
        let mut out = Vec::new();
        for (i, (name, ino)) in [(".", ino), ("..", parent)].into_iter().enumerate() {
            if offset <= i as u64 && out.len() < max {
                out.push((
                    i as u64 + 1,
                    DirEntry {
                        ino,
                        kind: Kind::Dir,
                        name: name.into(),
                    },
                ));
            }
        }
        let from = offset.saturating_sub(2) as usize;
        let listed = entries.read(from, max - out.len()).await?;
        // Names live in the nodes (a listing or this handle keeps them).
        let ns = self.ns.lock().unwrap();
        out.extend(listed.into_iter().enumerate().filter_map(|(i, e)| {
            let name = ns.nodes.get(&e.ino)?.name.to_string();
            let entry = DirEntry {
                ino: e.ino,
                kind: e.kind,
                name,
            };
            Some(((from + i) as u64 + 3, entry))
        }));
        Ok(out)
    }

    /// `readdir` with each entry's attributes (readdirplus: `ls -l` needs no lookups).
    pub async fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, DirEntry, Attr)>, FsError> {
        let entries = self.readdir(fh, offset, max).await?;
        let ns = self.ns.lock().unwrap();
        Ok(entries
            .into_iter()
            .filter_map(|(next, e)| {
                let attr = self.attr_of(e.ino, ns.nodes.get(&e.ino)?);
                Some((next, e, attr))
            })
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        let closed = self.dirs.lock().unwrap().remove(&fh);
        if let Some(d) = closed {
            self.ns.lock().unwrap().let_go_entries(d.ino, &d.entries);
        }
    }
}

/// An open directory: the listing it reads (kept alive by the handle).
pub(super) struct DirHandle {
    pub(super) ino: u64,
    parent: u64,
    entries: Arc<Entries>,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::ListedObject;

    pub(in crate::fs) fn obj(key: &str) -> ListedObject {
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
