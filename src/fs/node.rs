//! One inode of the namespace, kept small (a million of them must fit a few hundred MiB):
//! a node stores its own name only (a key is its ancestors' names joined), an ETag as 16
//! bytes when it is an MD5 (as nearly all are), and what only opened files need in one
//! optional box. The name index (`Names`) finds a node by (parent, name, kind) without a
//! second copy of the name. Must not know listings, handles or the store.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Instant, SystemTime};

use hashbrown::HashTable;

use super::Kind;
use crate::hydrate::ObjectIdentity;

#[derive(Debug)]
pub(super) struct Node {
    pub(super) parent: u64,
    /// The name in its parent; the root's is the mount's whole prefix (empty for the bucket).
    pub(super) name: Box<str>,
    pub(super) kind: Kind,
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) etag: Etag,
    /// What an opened file needs (none for the many nodes never opened).
    pub(super) opened: Option<Box<Opened>>,
    /// The listing (by its number) that last showed this name; lookups in a listed directory
    /// find names whose listing is that one or newer.
    pub(super) listed: u64,
    /// References the kernel holds (lookups and readdirplus entries not yet forgotten).
    pub(super) lookups: u64,
    /// Nodes whose parent this is: a directory stays while it has any.
    pub(super) children: u32,
    /// Live listings (`Namespace::listings`) whose entries show this node.
    pub(super) in_listings: u32,
}

#[derive(Debug, Default)]
pub(super) struct Opened {
    /// The identity last confirmed by HEAD (or listing) for opens, and when.
    pub(super) identity: Option<(ObjectIdentity, Instant)>,
    /// The ETag of the content the kernel may hold in its page cache for this inode.
    pub(super) kernel_etag: Option<Etag>,
    /// The size of the version open handles read, while any is open: the kernel is told
    /// that size whatever a newer listing says, or it would end their reads at the new
    /// version's end (a new version is opened on a new inode).
    pub(super) open_size: Option<u64>,
}

impl Node {
    pub(super) fn new(parent: u64, name: &str, kind: Kind, mtime: SystemTime) -> Node {
        Node {
            parent,
            name: name.into(),
            kind,
            size: 0,
            mtime,
            etag: Etag::default(),
            opened: None,
            listed: 0,
            lookups: 0,
            children: 0,
            in_listings: 0,
        }
    }

    pub(super) fn identity(&self) -> Option<&(ObjectIdentity, Instant)> {
        self.opened.as_ref()?.identity.as_ref()
    }

    pub(super) fn open_size(&self) -> Option<u64> {
        self.opened.as_ref()?.open_size
    }

    /// What opens note on this node, made when first needed.
    pub(super) fn opened_mut(&mut self) -> &mut Opened {
        self.opened.get_or_insert_with(Default::default)
    }

    /// Lets go of what opens noted, where nothing is left in it.
    pub(super) fn tidy_opened(&mut self) {
        if self.opened.as_ref().is_some_and(|o| {
            o.identity.is_none() && o.kernel_etag.is_none() && o.open_size.is_none()
        }) {
            self.opened = None;
        }
    }
}

/// An ETag as the server sends it, compact: a quoted 32-digit hex MD5 in one case (nearly
/// every ETag) is kept as its 16 bytes, anything else as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Etag {
    Md5 { digest: [u8; 16], upper: bool },
    Other(Box<str>),
}

impl Default for Etag {
    fn default() -> Etag {
        Etag::Other("".into())
    }
}

impl Etag {
    pub(super) fn new(s: &str) -> Etag {
        Etag::md5(s).unwrap_or_else(|| Etag::Other(s.into()))
    }

    fn md5(s: &str) -> Option<Etag> {
        let hex = s.strip_prefix('"')?.strip_suffix('"')?.as_bytes();
        if hex.len() != 32 {
            return None;
        }
        let lower = hex.iter().any(|c| c.is_ascii_lowercase());
        let upper = hex.iter().any(|c| c.is_ascii_uppercase());
        if lower && upper {
            return None;
        }
        let mut digest = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            digest[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Etag::Md5 {
            digest,
            upper: !lower,
        })
    }

    /// Whether this is the ETag `s` (no allocation).
    pub(super) fn is(&self, s: &str) -> bool {
        match (self, Etag::md5(s)) {
            (Etag::Other(mine), None) => **mine == *s,
            (mine @ Etag::Md5 { .. }, Some(theirs)) => *mine == theirs,
            _ => false,
        }
    }
}

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Etag::Other(s) => f.write_str(s),
            Etag::Md5 { digest, upper } => {
                f.write_str("\"")?;
                for b in digest {
                    if *upper {
                        write!(f, "{b:02X}")?;
                    } else {
                        write!(f, "{b:02x}")?;
                    }
                }
                f.write_str("\"")
            }
        }
    }
}

/// The inodes of a namespace, each boxed: a table of a million holds pointers, not nodes,
/// so its spare capacity costs little.
pub(super) type Nodes = HashMap<u64, Box<Node>>;

/// (parent, name, is a directory) → inode, the name read from the node itself.
#[derive(Default)]
pub(super) struct Names {
    table: HashTable<u64>,
    hasher: RandomState,
}

impl Names {
    fn hash(&self, parent: u64, name: &str, is_dir: bool) -> u64 {
        self.hasher.hash_one((parent, name, is_dir))
    }

    fn hash_of(&self, nodes: &Nodes, ino: u64) -> u64 {
        let n = nodes.get(&ino).expect("every indexed inode has its node");
        self.hash(n.parent, &n.name, n.kind == Kind::Dir)
    }

    pub(super) fn get(&self, nodes: &Nodes, parent: u64, name: &str, is_dir: bool) -> Option<u64> {
        let hash = self.hash(parent, name, is_dir);
        self.table
            .find(hash, |ino| {
                nodes.get(ino).is_some_and(|n| {
                    n.parent == parent && *n.name == *name && (n.kind == Kind::Dir) == is_dir
                })
            })
            .copied()
    }

    /// `ino` (whose node is in `nodes`) is what its name leads to now, in place of any
    /// other inode of that name (an older version's).
    pub(super) fn set(&mut self, nodes: &Nodes, ino: u64) {
        let n = nodes.get(&ino).expect("the node comes first");
        let (parent, is_dir) = (n.parent, n.kind == Kind::Dir);
        let hash = self.hash(parent, &n.name, is_dir);
        let same_name = |other: &u64| {
            nodes.get(other).is_some_and(|o| {
                o.parent == parent && o.name == n.name && (o.kind == Kind::Dir) == is_dir
            })
        };
        if let Some(slot) = self.table.find_mut(hash, same_name) {
            *slot = ino;
            return;
        }
        // Growing the table rehashes every entry from its node.
        let hasher = &self.hasher;
        let rehash = |i: &u64| {
            let n = nodes.get(i).expect("every indexed inode has its node");
            hasher.hash_one((n.parent, &*n.name, n.kind == Kind::Dir))
        };
        self.table.insert_unique(hash, ino, rehash);
    }

    /// `ino`'s node is going: its name no longer leads to it (if it still did).
    pub(super) fn remove(&mut self, nodes: &Nodes, ino: u64) {
        let hash = self.hash_of(nodes, ino);
        if let Ok(entry) = self.table.find_entry(hash, |i| *i == ino) {
            entry.remove();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_come_back_as_they_came() {
        for s in [
            "\"5B3C2A1F00000000000000000000ABCD\"",
            "\"5b3c2a1f00000000000000000000abcd\"",
            "\"01234567890123456789012345678901\"",
            "\"5B3C2A1F00000000000000000000abcd\"", // mixed case: kept as it came
            "\"5B3C2A1F00000000000000000000ABCD-3\"",
            "5B3C2A1F00000000000000000000ABCD",
            "\"E\"",
            "",
        ] {
            let e = Etag::new(s);
            assert_eq!(e.to_string(), s);
            assert!(e.is(s), "{s}");
            assert!(!e.is("\"other\""));
        }
        assert!(matches!(
            Etag::new("\"5B3C2A1F00000000000000000000ABCD\""),
            Etag::Md5 { .. }
        ));
        assert!(!Etag::new("\"5B3C2A1F00000000000000000000ABCD\"")
            .is("\"5b3c2a1f00000000000000000000abcd\""));
    }

    #[test]
    fn names_lead_to_the_newest_inode_of_a_name_and_survive_growth() {
        let mut nodes = Nodes::new();
        let mut names = Names::default();
        let now = SystemTime::now();
        // A file and a directory of each name (a listing hides one; the index keeps both).
        for i in 0..10_000u64 {
            let kind = if i % 2 == 0 { Kind::Dir } else { Kind::File };
            nodes.insert(
                i + 2,
                Box::new(Node::new(1, &format!("n{}", i / 2), kind, now)),
            );
            names.set(&nodes, i + 2);
        }
        for i in 0..10_000u64 {
            let is_dir = i % 2 == 0;
            assert_eq!(
                names.get(&nodes, 1, &format!("n{}", i / 2), is_dir),
                Some(i + 2)
            );
        }
        assert_eq!(names.get(&nodes, 2, "n1", false), None, "another parent");
        // A new version of a name: the name leads to it; the old node's going leaves it be.
        nodes.insert(99_999, Box::new(Node::new(1, "n1", Kind::File, now)));
        let old = names.get(&nodes, 1, "n1", false).unwrap();
        names.set(&nodes, 99_999);
        assert_eq!(names.get(&nodes, 1, "n1", false), Some(99_999));
        names.remove(&nodes, old);
        nodes.remove(&old);
        assert_eq!(names.get(&nodes, 1, "n1", false), Some(99_999));
        names.remove(&nodes, 99_999);
        assert_eq!(names.get(&nodes, 1, "n1", false), None);
        assert_eq!(names.len(), 9_999);
    }
}
