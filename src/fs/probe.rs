//! Lookups in a directory that was never listed: the name is probed instead of listing a
//! directory that may hold millions of keys — a HEAD of the key and a one-key listing of
//! `name/`, in parallel, so a `stat` costs one round trip and two requests whatever the
//! directory's size. A directory wins over an object of the same name, as in listings. The
//! answer (also "no such name") is kept for the metadata TTL; a later listing of the
//! directory finds the same inode numbers, and a HEAD's identity lets the file open without
//! another request within the TTL.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::hydrate::ObjectIdentity;
use crate::store::ListRequest;

use super::journal::Seen;
use super::namespace::{valid_name, Namespace};
use super::node::Etag;
use super::{Attr, FsError, Kind, OssFs};

impl OssFs {
    pub(super) async fn lookup_unlisted(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let prefix = {
            let mut ns = self.ns.lock().unwrap();
            let dir = ns.nodes.get(&parent).ok_or(FsError::NotFound)?;
            if dir.kind != Kind::Dir {
                return Err(FsError::NotADirectory);
            }
            let prefix = ns.key_of(parent).ok_or(FsError::NotFound)?;
            let recent = ns
                .probes
                .get(&(parent, name.to_string()))
                .filter(|(at, _)| at.elapsed() < self.cfg.metadata_ttl)
                .map(|(_, answer)| *answer);
            if let Some(answer) = recent {
                if let Some(found) = self.answer(&mut ns, answer) {
                    return found;
                }
            }
            prefix
        };
        match self.probe(parent, name, &prefix).await {
            Err(FsError::Store { context, source }) if source.is_retryable() => {
                // The server cannot be reached: the last answer (past its TTL) stands, as a
                // previous listing does, so cached files stay reachable.
                let mut ns = self.ns.lock().unwrap();
                let last = ns.probes.get(&(parent, name.to_string())).map(|(_, a)| *a);
                if let Some(found) = last.and_then(|a| self.answer(&mut ns, a)) {
                    tracing::warn!("{context} failed, using the last answer: {source}");
                    return found;
                }
                // The last answer is swept after twice the TTL; a complete cache entry still
                // names the object (as an open without the server uses it), so a cached file
                // stays reachable however long the server is gone.
                let key = format!("{prefix}{name}");
                if valid_name(name) {
                    if let Some(id) = self.cache.cached_identity(&self.cfg.bucket, &key) {
                        tracing::warn!(
                            "{context} failed, using the complete cache entry: {source}"
                        );
                        let mtime = httpdate::parse_http_date(&id.last_modified)
                            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                        let seen = Seen {
                            size: id.size,
                            mtime,
                            etag: &id.etag,
                        };
                        let ino = ns.child_seen(parent, name, Kind::File, Some(&seen));
                        let node = ns.nodes.get_mut(&ino).expect("just made");
                        node.size = id.size;
                        node.mtime =
                            httpdate::parse_http_date(&id.last_modified).unwrap_or(node.mtime);
                        node.etag = Etag::new(&id.etag);
                        node.lookups += 1;
                        let node = ns.nodes.get(&ino).expect("just made");
                        return Ok(self.attr_of(ino, node));
                    }
                }
                Err(FsError::Store { context, source })
            }
            other => other,
        }
    }

    /// A kept probe answer, as the kernel gets it (it takes a reference to what it finds).
    fn answer(&self, ns: &mut Namespace, answer: Option<u64>) -> Option<Result<Attr, FsError>> {
        let Some(ino) = answer else {
            return Some(Err(FsError::NotFound));
        };
        let n = ns.nodes.get_mut(&ino)?;
        n.lookups += 1;
        Some(Ok(self.attr_of(ino, n)))
    }

    async fn probe(&self, parent: u64, name: &str, prefix: &str) -> Result<Attr, FsError> {
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
            let seen = Seen {
                size: meta.size,
                mtime: meta
                    .last_modified_time()
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                etag: &meta.etag,
            };
            let ino = ns.child_seen(parent, name, Kind::File, Some(&seen));
            let node = ns.nodes.get_mut(&ino).expect("just made");
            node.size = meta.size;
            node.etag = Etag::new(&meta.etag);
            node.mtime = meta.last_modified_time().unwrap_or(node.mtime);
            // The HEAD is fresh: an open within the TTL needs no other.
            node.opened_mut().identity = Some((
                ObjectIdentity::from_meta(&self.cfg.bucket, &key, &meta),
                Instant::now(),
            ));
            Some(ino)
        } else {
            None
        };
        let at = Instant::now();
        ns.probe_fetched(parent, name, at);
        ns.probes.insert((parent, name.to_string()), (at, answer));
        let ino = answer.ok_or(FsError::NotFound)?;
        let node = ns.nodes.get_mut(&ino).expect("just made");
        node.lookups += 1;
        let node = ns.nodes.get(&ino).expect("just made");
        Ok(self.attr_of(ino, node))
    }
}
