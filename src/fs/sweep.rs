//! What the namespace lets go of, and what that costs: listings and probes expire through a
//! queue ordered by fetch time, and nodes are looked at only when something that held them
//! let go (the kernel forgot them, a handle closed, a listing that showed them went, a
//! child went). Each node counts what holds it for good (kernel references, children, the
//! live listings that show it), so whether it is needed is answered without a walk over the
//! namespace: a sweep costs what was let go, not how many nodes there are. Nodes held only
//! by an open handle or a listing being read are looked at again at the next sweep. Under a
//! memory target (`ListingShare`), listings also go before their time, oldest fetched first,
//! while the entries that every mount's cached listings show together are over the share.
//! Owns no I/O and must not decide what a listing holds; it only counts.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::listing::Entries;
use super::namespace::{Listing, Namespace};
use super::ROOT_INO;

/// Something that expires a TTL after it was fetched.
enum Expiring {
    Listing { dir: u64, number: u64 },
    Probe { parent: u64, name: String },
}

/// The node's share of memory for cached listings, shared by every mount's namespace: how
/// many entries their cached listings show together, and the most before the oldest go.
#[derive(Debug)]
pub struct ListingShare {
    max_entries: u64,
    entries: AtomicU64,
}

impl ListingShare {
    pub fn new(max_entries: u64) -> Arc<ListingShare> {
        Arc::new(ListingShare {
            max_entries,
            entries: AtomicU64::new(0),
        })
    }

    /// Entries every mount's cached listings show now (as of each one's last sweep).
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.entries() > self.max_entries
    }
}

#[derive(Default)]
pub(super) struct Sweep {
    /// Nodes that may have become unneeded since the last sweep.
    candidates: Vec<u64>,
    /// Listings and probes by fetch time (fetch times only grow, so the front expires first).
    expiring: VecDeque<(Instant, Expiring)>,
    /// Expired listings a directory handle still reads: (dir, listing number).
    held: Vec<(u64, u64)>,
    /// Nodes, queue entries and held listings sweeps looked at: what a sweep cost.
    pub(super) looked_at: u64,
    /// Entries the cached listings of this namespace show (`Namespace::listings`).
    listed_entries: u64,
    /// The node's share for listings, if it has a memory target, and what of
    /// `listed_entries` it was last told.
    share: Option<Arc<ListingShare>>,
    told_share: AtomicU64,
    /// Listings let go before their time to stay within the share (dropped at once, or when
    /// the directory handle reading one closes).
    pub(super) dropped_for_memory: u64,
}

impl Sweep {
    /// From now on this namespace's listings count against `share`.
    pub(super) fn share_listings(&mut self, share: Arc<ListingShare>) {
        self.share = Some(share);
        self.tell_share();
    }

    /// Tells the share what this namespace's listings show now (the change since last told).
    fn tell_share(&self) {
        let Some(share) = &self.share else { return };
        let before = self.told_share.swap(self.listed_entries, Ordering::Relaxed);
        if self.listed_entries >= before {
            share
                .entries
                .fetch_add(self.listed_entries - before, Ordering::Relaxed);
        } else {
            share
                .entries
                .fetch_sub(before - self.listed_entries, Ordering::Relaxed);
        }
    }

    /// Whether listings of this namespace must go to bring the node within its share.
    fn over_share(&self) -> bool {
        self.listed_entries > 0 && self.share.as_ref().is_some_and(|s| s.over())
    }
}

impl Drop for Sweep {
    /// A namespace that ends (its mount ended) gives its listings' count back.
    fn drop(&mut self) {
        self.listed_entries = 0;
        self.tell_share();
    }
}

/// Why a node stays, or does not.
enum Verdict {
    Needed,
    /// Held by something with no event of its own when it ends (an open handle, a listing
    /// being read): looked at again next sweep.
    ForNow,
    Unneeded,
}

impl Namespace {
    /// `ino` may be needed no more (a handle on it closed, it lost a reference).
    pub(super) fn let_go(&mut self, ino: u64) {
        self.sweep.candidates.push(ino);
    }

    /// The nodes of `entries` (and their directory) may be needed no more: a directory
    /// handle reading them closed, or a listing that made them failed.
    pub(super) fn let_go_entries(&mut self, dir: u64, entries: &Entries) {
        let candidates = &mut self.sweep.candidates;
        candidates.push(dir);
        entries.with_entries(|v| candidates.extend(v.iter().map(|e| e.ino)));
    }

    /// Whether the node's cached listings are over its share and some of this namespace's
    /// could go (which this tells the share first).
    pub(super) fn listings_over_share(&self) -> bool {
        self.sweep.tell_share();
        self.sweep.over_share()
    }

    /// A listing was fetched and becomes `dir`'s: the nodes it shows count it, and those of
    /// the listing it replaces may be needed no more.
    pub(super) fn install_listing(&mut self, dir: u64, listing: Listing) {
        self.count_listing(&listing.entries, 1);
        self.sweep.expiring.push_back((
            listing.fetched,
            Expiring::Listing {
                dir,
                number: listing.number,
            },
        ));
        if let Some(old) = self.listings.insert(dir, listing) {
            self.forget_listing(dir, &old);
        }
    }

    /// `dir`'s listing is stale (something it showed is gone on the server): dropped.
    pub(super) fn drop_listing(&mut self, dir: u64) {
        if let Some(old) = self.listings.remove(&dir) {
            self.forget_listing(dir, &old);
        }
    }

    /// A probe's answer fetched at `at` (dropped from `at` + the TTL on).
    pub(super) fn probe_fetched(&mut self, parent: u64, name: &str, at: Instant) {
        self.sweep.expiring.push_back((
            at,
            Expiring::Probe {
                parent,
                name: name.to_string(),
            },
        ));
    }

    fn count_listing(&mut self, entries: &Arc<Entries>, by: i32) {
        let nodes = &mut self.nodes;
        let listed = &mut self.sweep.listed_entries;
        entries.with_entries(|v| {
            let len = v.len() as u64;
            *listed = if by > 0 {
                *listed + len
            } else {
                listed.saturating_sub(len)
            };
            for e in v.iter() {
                if let Some(n) = nodes.get_mut(&e.ino) {
                    n.in_listings = n.in_listings.saturating_add_signed(by);
                }
            }
        });
    }

    fn forget_listing(&mut self, dir: u64, old: &Listing) {
        self.count_listing(&old.entries, -1);
        self.let_go_entries(dir, &old.entries.clone());
    }

    /// Whether a sweep has anything to do: something was let go, a listing or probe is
    /// older than `keep`, an expired listing waits for its handles, or listings are over the
    /// node's share (which this tells the share first).
    pub(super) fn sweep_wanted(&self, keep: Duration) -> bool {
        let s = &self.sweep;
        s.tell_share();
        s.over_share()
            || !s.candidates.is_empty()
            || !s.held.is_empty()
            || s.expiring
                .front()
                .is_some_and(|(at, _)| at.elapsed() >= keep)
    }

    /// Drops listings and probes older than `keep` (a listing a directory handle reads stays
    /// until the handle closes), then every node let go that nothing holds. `open_inos` are
    /// inodes with open handles; `reading_dirs` are directories whose listing a handle reads
    /// or that is still arriving.
    pub(super) fn sweep(
        &mut self,
        keep: Duration,
        open_inos: &HashSet<u64>,
        reading_dirs: &HashSet<u64>,
    ) {
        let held = std::mem::take(&mut self.sweep.held);
        self.sweep.looked_at += held.len() as u64;
        for (dir, number) in held {
            self.expire_listing(dir, number, open_inos);
        }
        while let Some((at, _)) = self.sweep.expiring.front() {
            if at.elapsed() < keep {
                break;
            }
            let (at, what) = self.sweep.expiring.pop_front().expect("front exists");
            self.sweep.looked_at += 1;
            match what {
                Expiring::Listing { dir, number } => self.expire_listing(dir, number, open_inos),
                Expiring::Probe { parent, name } => {
                    let key = (parent, name);
                    if self.probes.get(&key).is_some_and(|(t, _)| *t == at) {
                        self.probes.remove(&key);
                    }
                }
            }
        }
        self.drop_listings_over_share(open_inos);
        let mut for_now = Vec::new();
        // Dropping a node lets go of its parent, which this same loop then looks at.
        while let Some(ino) = self.sweep.candidates.pop() {
            self.sweep.looked_at += 1;
            match self.verdict(ino, open_inos, reading_dirs) {
                Verdict::Needed => {}
                Verdict::ForNow => for_now.push(ino),
                Verdict::Unneeded => self.drop_node(ino),
            }
        }
        for_now.sort_unstable();
        for_now.dedup();
        self.sweep.candidates = for_now;
    }

    /// While the node's listings are over its share, drops this namespace's listings before
    /// their time, oldest fetched first (one a directory handle reads goes when it closes).
    /// Probes met on the way stay in the queue, in their order.
    fn drop_listings_over_share(&mut self, open_inos: &HashSet<u64>) {
        self.sweep.tell_share();
        let mut probes = Vec::new();
        while self.sweep.over_share() {
            let Some((at, what)) = self.sweep.expiring.pop_front() else {
                break;
            };
            self.sweep.looked_at += 1;
            match what {
                Expiring::Listing { dir, number } => {
                    if self.listings.get(&dir).is_some_and(|l| l.number == number) {
                        self.sweep.dropped_for_memory += 1;
                    }
                    self.expire_listing(dir, number, open_inos);
                    self.sweep.tell_share();
                }
                probe => probes.push((at, probe)),
            }
        }
        for p in probes.into_iter().rev() {
            self.sweep.expiring.push_front(p);
        }
    }

    fn expire_listing(&mut self, dir: u64, number: u64, open_inos: &HashSet<u64>) {
        if self.listings.get(&dir).is_none_or(|l| l.number != number) {
            return; // replaced or dropped since
        }
        if open_inos.contains(&dir) {
            self.sweep.held.push((dir, number));
        } else {
            self.drop_listing(dir);
        }
    }

    fn verdict(&self, ino: u64, open_inos: &HashSet<u64>, reading_dirs: &HashSet<u64>) -> Verdict {
        let Some(n) = self.nodes.get(&ino) else {
            return Verdict::Needed; // gone already
        };
        if ino == ROOT_INO
            || n.lookups > 0
            || n.children > 0
            || n.in_listings > 0
            || self.listings.contains_key(&ino)
        {
            Verdict::Needed
        } else if open_inos.contains(&ino)
            || reading_dirs.contains(&ino)
            || reading_dirs.contains(&n.parent)
        {
            Verdict::ForNow
        } else {
            Verdict::Unneeded
        }
    }

    fn drop_node(&mut self, ino: u64) {
        if !self.nodes.contains_key(&ino) {
            return;
        }
        // Its name stops leading to it (if it still did: a newer version may have it).
        self.names.remove(&self.nodes, ino);
        let node = self.nodes.remove(&ino).expect("just looked");
        if let Some(parent) = self.nodes.get_mut(&node.parent) {
            parent.children = parent.children.saturating_sub(1);
            if parent.children == 0 {
                self.sweep.candidates.push(node.parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant, SystemTime};

    use super::super::namespace::{Listing, Namespace};
    use super::super::{Kind, ROOT_INO};
    use super::Entries;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const KEEP: Duration = Duration::from_secs(3600);

    fn sweep(ns: &mut Namespace) {
        if ns.sweep_wanted(KEEP) {
            ns.sweep(KEEP, &HashSet::new(), &HashSet::new());
        }
    }

    #[test]
    fn a_sweep_costs_what_was_let_go_not_the_size_of_the_namespace() {
        let mut ns = Namespace::new("", SystemTime::now());
        const N: u64 = 100_000;
        for i in 0..N {
            let ino = ns.child(ROOT_INO, &format!("f{i}"), Kind::File);
            ns.nodes.get_mut(&ino).unwrap().lookups = 1;
        }
        // A probe within the TTL, the kernel holding every node: nothing to drop.
        ns.probe_fetched(ROOT_INO, "f0", Instant::now());
        for _ in 0..10 {
            sweep(&mut ns);
        }
        assert_eq!(ns.sweep.looked_at, 0, "idle sweeps looked at nodes");
        // The kernel forgets one: the next sweep looks at it (and its parent) and drops it;
        // the ones after look at nothing again.
        ns.forget(ROOT_INO + 1, 1);
        sweep(&mut ns);
        let looked = ns.sweep.looked_at;
        assert!(looked <= 2, "the sweep after a forget looked at {looked}");
        assert_eq!(ns.nodes.len() as u64, N, "the forgotten node went");
        assert_eq!(ns.names.get(&ns.nodes, ROOT_INO, "f0", false), None);
        for _ in 0..10 {
            sweep(&mut ns);
        }
        assert_eq!(
            ns.sweep.looked_at, looked,
            "idle sweeps after it looked at nodes"
        );
        // An expired probe makes a sweep look at it, and at nothing else.
        ns.probe_fetched(ROOT_INO, "f1", Instant::now() - KEEP);
        ns.sweep.expiring.rotate_right(1);
        sweep(&mut ns);
        assert!(ns.sweep.looked_at > looked && ns.sweep.looked_at <= looked + 2);
    }

    /// A namespace built, used and let go at random: nothing still held is ever dropped,
    /// and once everything is let go and expired, only the root is left (nothing leaks).
    #[test]
    fn nodes_stay_while_held_and_all_go_once_let_go() {
        let mut rng = StdRng::seed_from_u64(7);
        for _case in 0..200 {
            let mut ns = Namespace::new("", SystemTime::now());
            let mut open: HashSet<u64> = HashSet::new();
            let mut reading: HashSet<u64> = HashSet::new();
            let mut number = 0;
            let dirs = [ROOT_INO, ns.child(ROOT_INO, "d", Kind::Dir)];
            ns.nodes.get_mut(&dirs[1]).unwrap().lookups = 1;
            for _step in 0..40 {
                let dir = dirs[rng.gen_range(0..2)];
                match rng.gen_range(0..6u8) {
                    0 => {
                        // A listing of a few names, some new, some seen before.
                        number += 1;
                        let entries = Entries::growing();
                        let mut v = Vec::new();
                        for _ in 0..rng.gen_range(0..5) {
                            let name = format!("n{}", rng.gen_range(0..8u8));
                            let ino = ns.child(dir, &name, Kind::File);
                            ns.nodes.get_mut(&ino).unwrap().listed = number;
                            v.push(super::super::listing::Listed {
                                ino,
                                kind: Kind::File,
                            });
                        }
                        v.dedup_by_key(|e| e.ino);
                        entries.with_entries(|e| *e = v);
                        let fetched = Instant::now() - KEEP * rng.gen_range(0..2u32);
                        let listing = Listing {
                            fetched,
                            entries,
                            number,
                        };
                        ns.install_listing(dir, listing);
                    }
                    1 => {
                        let ino = ns.child(dir, &format!("n{}", rng.gen_range(0..8u8)), Kind::File);
                        ns.nodes.get_mut(&ino).unwrap().lookups += 1;
                    }
                    2 => {
                        if let Some(&ino) = ns.nodes.keys().nth(rng.gen_range(0..ns.nodes.len())) {
                            let n = ns.nodes[&ino].lookups.min(1);
                            if ino != ROOT_INO && ino != dirs[1] {
                                ns.forget(ino, n);
                            }
                        }
                    }
                    3 => {
                        let ino = ns.child(dir, &format!("n{}", rng.gen_range(0..8u8)), Kind::File);
                        if !open.insert(ino) {
                            open.remove(&ino);
                            ns.let_go(ino);
                        }
                    }
                    4 => {
                        if !reading.insert(dir) {
                            reading.remove(&dir);
                            ns.let_go(dir);
                            let inos: Vec<u64> = ns
                                .nodes
                                .iter()
                                .filter(|(_, n)| n.parent == dir)
                                .map(|(i, _)| *i)
                                .collect();
                            inos.into_iter().for_each(|i| ns.let_go(i));
                        }
                    }
                    _ => {
                        if ns.sweep_wanted(KEEP) {
                            ns.sweep(KEEP, &open, &reading);
                        }
                    }
                }
                // Nothing held went.
                for (ino, n) in &ns.nodes {
                    assert!(ns.nodes.contains_key(&n.parent), "{ino}'s parent went");
                }
                for ino in open.iter() {
                    assert!(ns.nodes.contains_key(ino), "open {ino} went");
                }
                for l in ns.listings.values() {
                    l.entries.with_entries(|v| {
                        for e in v.iter() {
                            assert!(ns.nodes.contains_key(&e.ino), "listed {} went", e.ino);
                        }
                    });
                }
                let held: Vec<u64> = ns
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.lookups > 0)
                    .map(|(i, _)| *i)
                    .collect();
                for ino in held {
                    assert!(ns.nodes.contains_key(&ino));
                }
            }
            // Let everything go: handles close, the kernel forgets, listings expire.
            for ino in std::mem::take(&mut open) {
                ns.let_go(ino);
            }
            for dir in std::mem::take(&mut reading) {
                ns.let_go(dir);
                let inos: Vec<u64> = ns.nodes.keys().copied().collect();
                inos.into_iter().for_each(|i| ns.let_go(i));
            }
            let inos: Vec<(u64, u64)> = ns.nodes.iter().map(|(i, n)| (*i, n.lookups)).collect();
            for (ino, lookups) in inos {
                if ino != ROOT_INO {
                    ns.forget(ino, lookups);
                }
            }
            let dirs_listed: Vec<u64> = ns.listings.keys().copied().collect();
            for dir in dirs_listed {
                ns.drop_listing(dir);
            }
            ns.sweep(KEEP, &HashSet::new(), &HashSet::new());
            assert_eq!(
                ns.nodes.keys().copied().collect::<Vec<_>>(),
                vec![ROOT_INO],
                "nodes leaked"
            );
            assert_eq!(ns.names.len(), 0, "names leaked");
        }
    }

    /// A listing of `n` new files in a new directory `name`, fetched now, installed.
    fn install_dir_listing(ns: &mut Namespace, name: &str, n: usize) -> u64 {
        let dir = ns.child(ROOT_INO, name, Kind::Dir);
        ns.nodes.get_mut(&dir).unwrap().lookups = 1;
        ns.next_listing += 1;
        let number = ns.next_listing;
        let entries = Entries::growing();
        let v = (0..n)
            .map(|i| {
                let ino = ns.child(dir, &format!("f{i}"), Kind::File);
                ns.nodes.get_mut(&ino).unwrap().listed = number;
                super::super::listing::Listed {
                    ino,
                    kind: Kind::File,
                }
            })
            .collect();
        entries.with_entries(|e| *e = v);
        let listing = Listing {
            fetched: Instant::now(),
            entries,
            number,
        };
        ns.install_listing(dir, listing);
        dir
    }

    #[test]
    fn over_the_share_the_oldest_listings_go_first_and_a_read_one_when_closed() {
        let share = super::ListingShare::new(250);
        let mut ns = Namespace::new("", SystemTime::now());
        ns.sweep.share_listings(share.clone());
        let a = install_dir_listing(&mut ns, "a", 100);
        ns.probe_fetched(ROOT_INO, "probed", Instant::now());
        let b = install_dir_listing(&mut ns, "b", 100);
        sweep(&mut ns);
        assert_eq!(share.entries(), 200, "within the share: nothing goes");
        assert!(ns.listings.contains_key(&a) && ns.listings.contains_key(&b));
        // A third listing brings the node over: the oldest (a) goes, with its nodes.
        let c = install_dir_listing(&mut ns, "c", 100);
        assert!(ns.sweep_wanted(KEEP), "over the share, a sweep is wanted");
        sweep(&mut ns);
        assert!(!ns.listings.contains_key(&a), "the oldest listing stayed");
        assert!(ns.listings.contains_key(&b) && ns.listings.contains_key(&c));
        assert_eq!(share.entries(), 200);
        assert_eq!(
            ns.names.get(&ns.nodes, a, "f0", false),
            None,
            "a's nodes stayed"
        );
        assert_eq!(ns.sweep.dropped_for_memory, 1);
        // The probe met on the way is still queued, before the listings.
        assert!(matches!(
            ns.sweep.expiring.front(),
            Some((_, super::Expiring::Probe { .. }))
        ));
        // A listing larger than the whole share is kept while a handle reads it, and goes
        // when the handle closes.
        let huge = install_dir_listing(&mut ns, "huge", 300);
        let reading: HashSet<u64> = [huge].into();
        ns.sweep(KEEP, &reading, &reading);
        assert!(ns.listings.contains_key(&huge), "a listing being read went");
        assert!(!ns.listings.contains_key(&b) && !ns.listings.contains_key(&c));
        assert!(ns.sweep_wanted(KEEP));
        ns.sweep(KEEP, &HashSet::new(), &HashSet::new());
        assert!(!ns.listings.contains_key(&huge));
        assert_eq!(share.entries(), 0);
        // Another namespace's listings count against the same share; a namespace that
        // ends gives its count back.
        let mut other = Namespace::new("", SystemTime::now());
        other.sweep.share_listings(share.clone());
        install_dir_listing(&mut other, "x", 200);
        assert!(!other.sweep_wanted(KEEP));
        install_dir_listing(&mut ns, "d", 100);
        assert!(ns.sweep_wanted(KEEP), "the node's total is over the share");
        drop(other);
        assert_eq!(share.entries(), 100);
    }

    #[test]
    fn without_a_share_listings_go_only_by_age() {
        let mut ns = Namespace::new("", SystemTime::now());
        let dirs: Vec<u64> = (0..5)
            .map(|i| install_dir_listing(&mut ns, &format!("d{i}"), 1000))
            .collect();
        sweep(&mut ns);
        assert!(dirs.iter().all(|d| ns.listings.contains_key(d)));
        assert_eq!(ns.sweep.dropped_for_memory, 0);
    }
}
