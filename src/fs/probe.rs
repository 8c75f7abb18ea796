//! Lookups in a directory that was never listed. Its first listing page comes first: when it
//! holds the whole directory it becomes the listing (a small directory costs one request, as
//! before, and prefetched files still open with none). When the directory is larger, the
//! name is probed instead of listing every page of a directory that may hold millions of
//! keys: a HEAD of the key and a one-key listing of `name/`, in parallel. A directory wins
//! over an object of the same name, as in listings. The answer (also "no such name") is kept
//! for the metadata TTL; a later listing of the directory finds the same inode numbers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::hydrate::ObjectIdentity;
use crate::store::ListRequest;

use super::namespace::valid_name;
use super::{Attr, FsError, Kind, OssFs};

impl OssFs {
    /// `Ok(None)`: the directory turned out small and is listed now; look the name up there.
    pub(super) async fn lookup_unlisted(
        &self,
        parent: u64,
        name: &str,
    ) -> Result<Option<Attr>, FsError> {
        let prefix = {
            let mut ns = self.ns.lock().unwrap();
            let dir = ns.nodes.get(&parent).ok_or(FsError::NotFound)?;
            if dir.kind != Kind::Dir {
                return Err(FsError::NotADirectory);
            }
            let prefix = dir.key.clone();
            let recent = ns
                .probes
                .get(&(parent, name.to_string()))
                .filter(|(at, _)| at.elapsed() < self.cfg.metadata_ttl)
                .map(|(_, answer)| *answer);
            match recent {
                Some(None) => return Err(FsError::NotFound),
                Some(Some(ino)) => {
                    if let Some(n) = ns.nodes.get_mut(&ino) {
                        n.lookups += 1; // the kernel takes a reference with the answer
                        let n = ns.nodes.get(&ino).expect("just found");
                        return Ok(Some(self.attr_of(ino, n)));
                    }
                }
                None => {}
            }
            prefix
        };
        self.stats.listings.fetch_add(1, Ordering::Relaxed);
        let first = ListRequest {
            prefix: prefix.clone(),
            delimiter: Some("/".into()),
            max_keys: Some(1000),
            ..Default::default()
        };
        match self.store.list_page(&self.cfg.bucket, first).await {
            Ok(page) if !page.is_truncated => {
                self.install_listing(parent, &prefix, &page);
                return Ok(None);
            }
            Ok(_) => {} // more than a page: probe the one name
            Err(e) => return Err(FsError::store(format!("listing {prefix:?}"), e)),
        }
        if !valid_name(name) {
            return Err(FsError::NotFound);
        }
        let key = format!("{prefix}{name}");
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        let one_key = ListRequest {
            prefix: format!("{key}/"),
            max_keys: Some(1),
            ..Default::default()
        };
        let (head, listed) = tokio::join!(
            self.store.head(&self.cfg.bucket, &key),
            self.store.list_page(&self.cfg.bucket, one_key)
        );
        let is_dir = match listed {
            Ok(page) => !page.objects.is_empty() || !page.common_prefixes.is_empty(),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(FsError::store(format!("listing {key}/"), e)),
        };
        let meta = match head {
            Ok(meta) => Some(meta),
            Err(e) if e.is_not_found() => None,
            Err(_) if is_dir => None,
            Err(e) => return Err(FsError::store(format!("HEAD {key}"), e)),
        };
        let mut ns = self.ns.lock().unwrap();
        let answer = if is_dir {
            Some(ns.child(parent, name, Kind::Dir))
        } else if let Some(meta) = meta {
            let ino = ns.child(parent, name, Kind::File);
            let node = ns.nodes.get_mut(&ino).expect("just made");
            node.size = meta.size;
            node.etag = meta.etag.clone();
            node.mtime = meta.last_modified_time().unwrap_or(node.mtime);
            // The HEAD is fresh: an open within the TTL needs no other.
            node.identity = Some((
                ObjectIdentity::from_meta(&self.cfg.bucket, &key, &meta),
                Instant::now(),
            ));
            Some(ino)
        } else {
            None
        };
        ns.probes
            .insert((parent, name.to_string()), (Instant::now(), answer));
        let ino = answer.ok_or(FsError::NotFound)?;
        let node = ns.nodes.get_mut(&ino).expect("just made");
        node.lookups += 1;
        let node = ns.nodes.get(&ino).expect("just made");
        Ok(Some(self.attr_of(ino, node)))
    }
}
