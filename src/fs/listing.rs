//! Directory listings that arrive page by page. One listing per directory is in flight at a
//! time (`readdir` handles and lookups share it); each page's children are visible to
//! `readdir` as soon as the page lands, so `ls` of a directory of a million keys starts
//! printing after one round trip and the kernel's work overlaps the rest of the listing. The
//! finished listing becomes the directory's cached listing (for lookups in constant time
//! and later `readdir`s, which share its entries rather than copying them). Must not open
//! or read files.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::store::{ListPage, ListRequest, ListedObject, StoreError, StoreErrorKind};

use super::journal::Seen;
use super::namespace::{children_from_listing, Listing};
use super::node::Etag;
use super::{FsError, Kind, OssFs};

/// Keys per listing page (the most OSS returns).
pub(super) const LIST_PAGE: usize = 1000;

/// One entry of a listing: its name is its node's (stored once, in the namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Listed {
    pub(super) ino: u64,
    pub(super) kind: Kind,
}

/// A directory's entries as they arrive, and how the listing ended.
pub(super) struct Entries {
    state: Mutex<EntriesState>,
    changed: watch::Sender<u64>,
}

struct EntriesState {
    entries: Vec<Listed>,
    /// `None` while pages are still coming.
    ended: Option<Result<(), (String, StoreError)>>,
}

impl Entries {
    pub(super) fn growing() -> Arc<Entries> {
        Arc::new(Entries {
            state: Mutex::new(EntriesState {
                entries: Vec::new(),
                ended: None,
            }),
            changed: watch::channel(0).0,
        })
    }

    fn push(&self, more: Vec<Listed>) {
        self.state.lock().unwrap().entries.extend(more);
        self.changed.send_modify(|v| *v += 1);
    }

    fn end(&self, how: Result<(), (String, StoreError)>) {
        self.state.lock().unwrap().ended = Some(how);
        self.changed.send_modify(|v| *v += 1);
    }

    pub(super) fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    /// Applies `f` to every entry (a new inode number for a renamed version, a sweep).
    pub(super) fn with_entries<T>(&self, f: impl FnOnce(&mut Vec<Listed>) -> T) -> T {
        f(&mut self.state.lock().unwrap().entries)
    }

    /// Up to `max` entries from index `from`, waiting for the pages that hold them; an
    /// empty answer is the end. A listing that failed fails the reads past what arrived.
    pub(super) async fn read(&self, from: usize, max: usize) -> Result<Vec<Listed>, FsError> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self.state.lock().unwrap();
                if st.entries.len() > from {
                    let end = (from + max).min(st.entries.len());
                    return Ok(st.entries[from..end].to_vec());
                }
                match &st.ended {
                    Some(Ok(())) => return Ok(Vec::new()),
                    Some(Err((context, e))) => {
                        return Err(FsError::store(context.clone(), e.clone()))
                    }
                    None => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(FsError::BadHandle);
            }
        }
    }

    /// Waits until the listing ended; its outcome.
    async fn ended(&self) -> Result<(), FsError> {
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(how) = &self.state.lock().unwrap().ended {
                return how
                    .clone()
                    .map_err(|(context, e)| FsError::store(context, e));
            }
            if rx.changed().await.is_err() {
                return Err(FsError::BadHandle);
            }
        }
    }

    /// Waits for the first page (or the end).
    async fn started(&self) -> Result<(), FsError> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self.state.lock().unwrap();
                match &st.ended {
                    Some(Err((context, e))) if st.entries.is_empty() => {
                        return Err(FsError::store(context.clone(), e.clone()))
                    }
                    Some(_) => return Ok(()),
                    None if *rx.borrow_and_update() > 0 => return Ok(()),
                    None => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(FsError::BadHandle);
            }
        }
    }
}

/// Ends a listing whose task ended without ending it (a panic, an abort).
struct Unfinished {
    fs: Option<(Arc<OssFs>, u64)>,
    entries: Arc<Entries>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some((fs, dir)) = self.fs.take() else {
            return;
        };
        let mut in_flight = fs.listings_in_flight.lock().unwrap();
        if in_flight
            .get(&dir)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entries))
        {
            in_flight.remove(&dir);
        }
        drop(in_flight);
        fs.ns.lock().unwrap().let_go_entries(dir, &self.entries);
        self.entries.end(Err((
            "listing".into(),
            StoreError::new(
                StoreErrorKind::Transient,
                "the listing task ended before the listing did".to_string(),
            ),
        )));
    }
}

/// Listings in flight, by directory inode.
pub(super) type InFlight = Mutex<HashMap<u64, Arc<Entries>>>;

impl OssFs {
    /// The entries of `dir`: its cached listing within the TTL, else the listing in flight,
    /// else a new one (started here). Returns once the first page is in.
    pub(super) async fn dir_entries(self: &Arc<Self>, dir: u64) -> Result<Arc<Entries>, FsError> {
        if let Some(e) = self.fresh_listing(dir) {
            return Ok(e);
        }
        let (entries, old) = self.listing_in_flight(dir)?;
        match entries.started().await {
            Ok(()) => Ok(entries),
            // A failed refresh keeps serving the previous listing, if any.
            Err(FsError::Store { source, .. }) if source.is_retryable() && old.is_some() => {
                tracing::warn!(
                    dir,
                    "listing failed, serving the previous listing: {source}"
                );
                Ok(old.expect("checked"))
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure `dir` has a whole listing no older than the TTL (for lookups).
    pub(super) async fn ensure_listing(self: &Arc<Self>, dir: u64) -> Result<(), FsError> {
        if self.fresh_listing(dir).is_some() {
            return Ok(());
        }
        let (entries, old) = self.listing_in_flight(dir)?;
        match entries.ended().await {
            Err(FsError::Store { source, .. }) if source.is_retryable() && old.is_some() => {
                tracing::warn!(
                    dir,
                    "listing failed, serving the previous listing: {source}"
                );
                Ok(())
            }
            other => other,
        }
    }

    fn fresh_listing(&self, dir: u64) -> Option<Arc<Entries>> {
        let ns = self.ns.lock().unwrap();
        ns.listings
            .get(&dir)
            .filter(|l| l.fetched.elapsed() < self.cfg.metadata_ttl)
            .map(|l| l.entries.clone())
    }

    /// The listing of `dir` in flight (started when there is none), and the previous one.
    #[allow(clippy::type_complexity)]
    fn listing_in_flight(
        self: &Arc<Self>,
        dir: u64,
    ) -> Result<(Arc<Entries>, Option<Arc<Entries>>), FsError> {
        let prefix = {
            let ns = self.ns.lock().unwrap();
            match ns.nodes.get(&dir) {
                Some(n) if n.kind == Kind::Dir => ns.key_of(dir).ok_or(FsError::NotFound)?,
                Some(_) => return Err(FsError::NotADirectory),
                None => return Err(FsError::NotFound),
            }
        };
        let old = self
            .ns
            .lock()
            .unwrap()
            .listings
            .get(&dir)
            .map(|l| l.entries.clone());
        let mut in_flight = self.listings_in_flight.lock().unwrap();
        if let Some(e) = in_flight.get(&dir) {
            return Ok((e.clone(), old));
        }
        let entries = Entries::growing();
        in_flight.insert(dir, entries.clone());
        drop(in_flight);
        let number = {
            let mut ns = self.ns.lock().unwrap();
            ns.next_listing += 1;
            ns.next_listing
        };
        let (fs, e) = (self.clone(), entries.clone());
        tokio::spawn(async move {
            // A listing task that panics (or is aborted) still ends its listing, with an
            // error, and leaves the in-flight map: its directory is never stuck waiting.
            let mut unfinished = Unfinished {
                fs: Some((fs.clone(), dir)),
                entries: e.clone(),
            };
            let outcome = fs.list_pages(dir, number, &prefix, &e).await;
            unfinished.fs = None;
            // Installed before it leaves the in-flight map, so no one starts a second.
            {
                let mut ns = fs.ns.lock().unwrap();
                // A failed listing leaves nodes its pages made; a new one replaces the old
                // listing's: either way a sweep has something to look at.
                if outcome.is_ok() {
                    let listing = Listing {
                        fetched: Instant::now(),
                        entries: e.clone(),
                        number,
                    };
                    ns.install_listing(dir, listing);
                } else {
                    ns.let_go_entries(dir, &e);
                }
            }
            fs.listings_in_flight.lock().unwrap().remove(&dir);
            e.end(outcome);
            // Over the node's share for listings (a memory target), the oldest go now, not
            // at the next once-a-second sweep: a `find` lists tens of thousands of keys a
            // second.
            if fs.ns.lock().unwrap().listings_over_share() {
                fs.sweep_namespace();
            }
        });
        Ok((entries, old))
    }

    /// Every page of `dir`'s listing, each published as it lands.
    async fn list_pages(
        &self,
        dir: u64,
        number: u64,
        prefix: &str,
        entries: &Entries,
    ) -> Result<(), (String, StoreError)> {
        self.stats.listings.fetch_add(1, Ordering::Relaxed);
        let context = || format!("listing {prefix:?}");
        let mut token = None;
        // Files a directory on a later page could still hide (a key `x` and keys `x/…`).
        let mut held_back: Vec<ListedObject> = Vec::new();
        loop {
            let req = ListRequest {
                prefix: prefix.to_string(),
                delimiter: Some("/".into()),
                max_keys: Some(LIST_PAGE as u32),
                continuation_token: token.take(),
                start_after: None,
            };
            let mut page = self
                .store
                .list_page(&self.cfg.bucket, req)
                .await
                .map_err(|e| (context(), e))?;
            let more = page.is_truncated;
            let next = page.next_continuation_token.take();
            let mut objects = std::mem::take(&mut held_back);
            objects.append(&mut page.objects);
            if more {
                held_back = hold_back(&mut objects, &page.common_prefixes);
            }
            page.objects = objects;
            self.add_children(dir, number, prefix, &page, entries);
            match (more, next) {
                (false, _) => return Ok(()),
                (true, Some(t)) => token = Some(t),
                (true, None) => {
                    return Err((
                        context(),
                        StoreError::new(
                            StoreErrorKind::Transient,
                            format!(
                                "unexpected answer from {}: listing is truncated but has no NextContinuationToken",
                                self.store.location()
                            ),
                        ),
                    ))
                }
            }
        }
    }

    /// Publishes one page's children to `entries`, numbered (names keep the numbers they
    /// had), naming rules applied; skipped keys are logged once each. Published under the
    /// namespace lock, so a sweep never sees the new nodes without the entries that need them.
    fn add_children(
        &self,
        dir: u64,
        number: u64,
        prefix: &str,
        page: &ListPage,
        entries: &Entries,
    ) {
        let (children, skipped) = children_from_listing(prefix, page);
        let mut ns = self.ns.lock().unwrap();
        for key in skipped {
            if ns.logged_skips.insert(key.clone()) {
                tracing::warn!(key = %key, "skipping a key that cannot be a file name here (empty, '.', '..' or over-long component, or hidden by a directory of the same name)");
            }
        }
        // The page's new nodes are journaled in one write, before the lock is let go.
        if let Some(log) = ns.log.as_mut() {
            log.begin_batch();
        }
        let new: Vec<Listed> = children
            .into_iter()
            .map(|c| {
                let seen = Seen {
                    size: c.size,
                    mtime: c.mtime,
                    etag: &c.etag,
                };
                let seen = (c.kind == Kind::File).then_some(&seen);
                let ino = ns.child_seen(dir, &c.name, c.kind, seen);
                let node = ns.nodes.get_mut(&ino).expect("child() made it");
                node.listed = number;
                if c.kind == Kind::File {
                    node.size = c.size;
                    node.mtime = c.mtime;
                    node.etag = Etag::new(&c.etag);
                }
                Listed { ino, kind: c.kind }
            })
            .collect();
        ns.flush_journal();
        entries.push(new);
        drop(ns);
    }
}

/// Takes the objects off the end of a page whose names a directory on a later page could
/// still hide: the directory `x/` sorts after the key `x` and after every key `x` followed
/// by a byte below `/` (`x-1`, `x.txt`), so a file is held back while the page's last key
/// or prefix lies in that range.
fn hold_back(objects: &mut Vec<ListedObject>, prefixes: &[String]) -> Vec<ListedObject> {
    let last = objects
        .last()
        .map(|o| o.key.as_str())
        .into_iter()
        .chain(prefixes.last().map(String::as_str))
        .max()
        .unwrap_or("")
        .to_string();
    let keep = objects
        .iter()
        .position(|o| format!("{}/", o.key).as_str() > last.as_str())
        .unwrap_or(objects.len());
    objects.split_off(keep)
}

#[cfg(test)]
mod tests {
    use super::super::namespace::tests::obj;
    use super::*;

    #[test]
    fn files_a_later_directory_could_hide_wait_for_the_next_page() {
        let mut objects = vec![obj("p/a"), obj("p/b"), obj("p/b-1"), obj("p/b.txt")];
        let held = hold_back(&mut objects, &[]);
        let names = |v: &[ListedObject]| v.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        // `p/b/` would sort after all of b, b-1 and b.txt: each could still be hidden.
        assert_eq!(names(&objects), vec!["p/a"]);
        assert_eq!(names(&held), vec!["p/b", "p/b-1", "p/b.txt"]);
        // A page that ends with a prefix past them lets them go.
        let mut objects = vec![obj("p/a"), obj("p/b")];
        let held = hold_back(&mut objects, &["p/c/".into()]);
        assert_eq!(names(&objects), vec!["p/a", "p/b"]);
        assert!(held.is_empty());
    }
}
