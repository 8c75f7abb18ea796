//! When the kernel may read a file directly (FUSE passthrough): the kernel allows one backing
//! file per inode and no mix of passthrough and daemon-served opens on one inode, and this
//! table keeps both rules. It is generic over the kernel's backing id so the policy lives here
//! while only `fs::fuse` creates ids. Must not talk to the kernel.

use std::collections::HashMap;
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
}

pub struct PassthroughTable<B> {
    /// Every open handle: its inode, and its backing id when it is a passthrough open.
    by_fh: HashMap<u64, (u64, Option<Arc<B>>)>,
    /// The backing id shared by an inode's passthrough opens, while any is open.
    by_ino: HashMap<u64, Weak<B>>,
    /// Opens served through ossmount (partial files), per inode.
    served_opens: HashMap<u64, usize>,
}

impl<B> Default for PassthroughTable<B> {
    fn default() -> Self {
        PassthroughTable {
            by_fh: HashMap::new(),
            by_ino: HashMap::new(),
            served_opens: HashMap::new(),
        }
    }
}

impl<B> PassthroughTable<B> {
    /// The plan for an open of `ino`; `complete` says the kernel could read its cache file.
    pub fn plan(&self, ino: u64, complete: bool) -> OpenPlan<B> {
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

    pub fn record_passthrough(&mut self, fh: u64, ino: u64, id: Arc<B>) {
        self.by_ino.insert(ino, Arc::downgrade(&id));
        self.by_fh.insert(fh, (ino, Some(id)));
    }

    pub fn record_served(&mut self, fh: u64, ino: u64) {
        *self.served_opens.entry(ino).or_default() += 1;
        self.by_fh.insert(fh, (ino, None));
    }

    pub fn release(&mut self, fh: u64) {
        match self.by_fh.remove(&fh) {
            // The last passthrough open of the inode: its backing id goes with it.
            Some((ino, Some(id))) if Arc::strong_count(&id) == 1 => {
                self.by_ino.remove(&ino);
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
}
