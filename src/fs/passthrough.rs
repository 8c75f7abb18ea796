//! When the kernel may read a file directly (FUSE passthrough): the kernel allows one backing
//! file per inode and no mix of passthrough and daemon-served opens on one inode, and this
//! table keeps both rules. It is generic over the kernel's backing id so the policy lives here
//! while only `fs::fuse` creates ids. Must not talk to the kernel.
//!
//! After a takeover (see `fs::resume`), the kernel still holds the earlier server process's
//! backing ids: an inode with an open passthrough handle accepts only that same id for a
//! new passthrough open (another is EBUSY) and no open served through ossmount (ETXTBSY),
//! and one with an open served handle accepts no passthrough open (ETXTBSY). So inherited
//! handles count as the opens they were: a complete file of an inode with an inherited
//! backing id adopts that id (`Adopt`; from then on it lives until the last handle of the
//! inode, old or new, is released, and is closed then), and an open that cannot use it is
//! served with direct I/O (`ServeDirect`), which the kernel allows beside passthrough. An id
//! whose inherited handles are all released before any open adopted it is closed at the next
//! open (`take_unadopted`: closing needs the session, which an open's reply carries).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

/// How to serve one open.
pub enum OpenPlan<B> {
    /// Join the inode's existing backing file.
    Share(Arc<B>),
    /// Ask the kernel for a backing file for this open (complete file, nothing else open).
    CreateBacking,
    /// Serve reads through ossmount.
    Serve,
    /// Refuse: an older version is open in passthrough and the kernel cannot mix the two.
    Busy,
    /// Use the backing id an earlier server process registered for this inode (`adopt`).
    Adopt(u32),
    /// Serve reads through ossmount with direct I/O (no page cache): the inode is held in
    /// passthrough by an earlier process's backing id that this open cannot use.
    ServeDirect,
}

pub struct PassthroughTable<B> {
    /// Every open handle: its inode, and its backing id when it is a passthrough open.
    by_fh: HashMap<u64, (u64, Option<Arc<B>>)>,
    /// The backing id shared by an inode's passthrough opens, while any is open.
    by_ino: HashMap<u64, Weak<B>>,
    /// Opens served through ossmount (partial files), per inode.
    served_opens: HashMap<u64, usize>,
    /// Backing ids of an earlier server process not yet adopted, per inode, with their
    /// handles still open.
    inherited: HashMap<u64, (u32, Vec<u64>)>,
    /// Inherited ids whose handles were all released before any open adopted them.
    unadopted: Vec<u32>,
    /// The kernel's number of each inode's backing id in use (journaled with each handle).
    raw_ids: HashMap<u64, u32>,
    /// Handles served with direct I/O beside an inherited passthrough open.
    direct: HashSet<u64>,
}

impl<B> Default for PassthroughTable<B> {
    fn default() -> Self {
        PassthroughTable {
            by_fh: HashMap::new(),
            by_ino: HashMap::new(),
            served_opens: HashMap::new(),
            inherited: HashMap::new(),
            unadopted: Vec::new(),
            raw_ids: HashMap::new(),
            direct: HashSet::new(),
        }
    }
}

impl<B> PassthroughTable<B> {
    /// The plan for an open of `ino`; `complete` says the kernel could read its cache file.
    pub fn plan(&self, ino: u64, complete: bool) -> OpenPlan<B> {
        if let Some((raw, _)) = self.inherited.get(&ino) {
            return if complete {
                OpenPlan::Adopt(*raw)
            } else {
                OpenPlan::ServeDirect
            };
        }
        let shared = self.by_ino.get(&ino).and_then(Weak::upgrade);
        if complete {
            if let Some(id) = shared {
                return OpenPlan::Share(id);
            }
            if self.served_opens.get(&ino).copied().unwrap_or(0) == 0 {
                return OpenPlan::CreateBacking;
            }
        }
        if shared.is_some() {
            OpenPlan::Busy
        } else {
            OpenPlan::Serve
        }
    }

    /// After `CreateBacking` failed: serve it, unless an old passthrough open forbids it.
    pub fn fallback(&self, ino: u64) -> OpenPlan<B> {
        self.plan(ino, false)
    }

    /// A handle an earlier server process opened: with `backing`, through passthrough.
    pub fn inherit(&mut self, fh: u64, ino: u64, backing: Option<u32>) {
        match backing {
            Some(raw) => {
                let (_, fhs) = self.inherited.entry(ino).or_insert((raw, Vec::new()));
                fhs.push(fh);
            }
            None => self.record_served(fh, ino),
        }
    }

    /// `ino`'s inherited backing id, now owned as `id` (made from it for the open that
    /// planned `Adopt`): its inherited handles hold it as passthrough opens of this process do.
    pub fn adopt(&mut self, ino: u64, id: Arc<B>) {
        if let Some((_, fhs)) = self.inherited.remove(&ino) {
            for fh in fhs {
                self.by_fh.insert(fh, (ino, Some(id.clone())));
            }
        }
        self.by_ino.insert(ino, Arc::downgrade(&id));
    }

    /// The kernel's number of `ino`'s backing id (see `set_raw`).
    pub fn raw_of(&self, ino: u64) -> Option<u32> {
        self.raw_ids.get(&ino).copied()
    }

    /// `ino`'s backing id is number `raw` to the kernel (kept while the id lives).
    pub fn set_raw(&mut self, ino: u64, raw: u32) {
        self.raw_ids.insert(ino, raw);
    }

    /// A handle served with direct I/O (`ServeDirect`): it holds no io mode of the inode.
    pub fn record_served_direct(&mut self, fh: u64) {
        self.direct.insert(fh);
    }

    /// Inherited backing ids nothing uses any more: the caller closes them.
    pub fn take_unadopted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.unadopted)
    }

    pub fn record_passthrough(&mut self, fh: u64, ino: u64, id: Arc<B>) {
        self.by_ino.insert(ino, Arc::downgrade(&id));
        self.by_fh.insert(fh, (ino, Some(id)));
    }

    pub fn record_served(&mut self, fh: u64, ino: u64) {
        *self.served_opens.entry(ino).or_default() += 1;
        self.by_fh.insert(fh, (ino, None));
    }

    pub fn release(&mut self, fh: u64) {
        let inherited_ino = self
            .inherited
            .iter()
            .find(|(_, (_, fhs))| fhs.contains(&fh))
            .map(|(ino, _)| *ino);
        if let Some(ino) = inherited_ino {
            let (raw, fhs) = self.inherited.get_mut(&ino).expect("just found");
            fhs.retain(|f| *f != fh);
            if fhs.is_empty() {
                self.unadopted.push(*raw);
                self.inherited.remove(&ino);
            }
            return;
        }
        if self.direct.remove(&fh) {
            return;
        }
        match self.by_fh.remove(&fh) {
            // The last passthrough open of the inode: its backing id goes with it.
            Some((ino, Some(id))) if Arc::strong_count(&id) == 1 => {
                self.by_ino.remove(&ino);
                self.raw_ids.remove(&ino);
            }
            Some((_, Some(_))) => {}
            Some((ino, None)) => {
                if let Some(n) = self.served_opens.get_mut(&ino) {
                    *n -= 1;
                    if *n == 0 {
                        self.served_opens.remove(&ino);
                    }
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_backing_per_inode_and_no_mix() {
        let mut t: PassthroughTable<u32> = PassthroughTable::default();
        assert!(matches!(t.plan(5, true), OpenPlan::CreateBacking));
        t.record_passthrough(1, 5, Arc::new(7));
        assert!(matches!(t.plan(5, true), OpenPlan::Share(id) if *id == 7));
        // A partial (new) version while the old one is open in passthrough.
        assert!(matches!(t.plan(5, false), OpenPlan::Busy));
        t.release(1);
        assert!(matches!(t.plan(5, false), OpenPlan::Serve));
        t.record_served(2, 5);
        // Served opens keep a complete file from passthrough on that inode.
        assert!(matches!(t.plan(5, true), OpenPlan::Serve));
        t.release(2);
        assert!(matches!(t.plan(5, true), OpenPlan::CreateBacking));
    }

    #[test]
    fn inherited_backing_ids_are_adopted_kept_while_used_and_then_closed() {
        let mut t: PassthroughTable<u32> = PassthroughTable::default();
        // Inode 5 was open in passthrough with id 9 (two handles), inode 6 served.
        t.inherit(100, 5, Some(9));
        t.inherit(101, 5, Some(9));
        t.inherit(102, 6, None);
        assert!(matches!(t.plan(5, true), OpenPlan::Adopt(9)));
        assert!(matches!(t.plan(5, false), OpenPlan::ServeDirect));
        assert!(
            matches!(t.plan(6, true), OpenPlan::Serve),
            "served opens forbid passthrough"
        );
        let id = Arc::new(9);
        t.adopt(5, id.clone());
        t.record_passthrough(1, 5, id);
        assert!(matches!(t.plan(5, true), OpenPlan::Share(id) if *id == 9));
        // The id lives while any handle of the inode, old or new, is open.
        t.release(100);
        t.release(1);
        assert!(matches!(t.plan(5, true), OpenPlan::Share(_)));
        t.release(101);
        assert!(matches!(t.plan(5, true), OpenPlan::CreateBacking));
        assert!(t.take_unadopted().is_empty());
        // Inherited handles released before any open adopted their id: it is to be closed.
        t.inherit(200, 7, Some(11));
        t.release(200);
        assert_eq!(t.take_unadopted(), vec![11]);
        assert!(matches!(t.plan(7, true), OpenPlan::CreateBacking));
        t.release(102);
        assert!(matches!(t.plan(6, true), OpenPlan::CreateBacking));
    }
}
