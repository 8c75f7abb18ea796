//! The whole-object digest check, for objects whose store gives a checksum that the parts'
//! CRC-64s cannot be folded into (S3's CRC64NVME, an ETag that is the MD5). One follower per
//! hydration hashes the data file from its first byte as parts become readable in order, so
//! a sequential fetch is hashed as it arrives and the last part costs only its own hashing.
//! Only a match makes the object verified (a read may finish on it) and lets it complete; a
//! mismatch fails it as corrupt, as a CRC-64 mismatch does. A part from an earlier run is
//! checked against its own CRC-64 before it is hashed; a part whose bytes were hashed and are
//! then fetched again (it failed its own check, or its write failed) starts the hashing over.
//! Must not fetch, write or serve bytes.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::parts::{DigestCheck, State};
use super::{HydrateError, Hydration, Inner};
use crate::store::{DigestHasher, WholeDigest};

/// Read back in pieces this large (one buffer per piece of work).
const READ_BACK: u64 = 8 << 20;
/// The most bytes checked and hashed in one step.
const HASH_AT_ONCE: u64 = 64 << 20;

/// Tells one round of hashing from another (`DigestCheck::Running`), across hydrations too.
static ROUNDS: AtomicU64 = AtomicU64::new(1);

/// Clears `Inner::digest_follower` however the follower ends (aborted by a stop too), and
/// starts another if its check was reset as it ended.
struct Following(Arc<Inner>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.digest_follower.store(false, Ordering::SeqCst);
        let again = {
            let st = self.0.state.lock().unwrap();
            st.digest == DigestCheck::NotStarted && !st.stopped && st.fatal.is_none()
        };
        if again {
            self.0.start_digest_check();
        }
    }
}

impl Inner {
    /// Starts the digest follower of an object that has a digest, unless one runs.
    pub(super) fn start_digest_check(&self) {
        if self.id.digest.is_none() {
            return;
        }
        let Some(inner) = self.me.upgrade() else {
            return;
        };
        if self.digest_follower.swap(true, Ordering::SeqCst) {
            return;
        }
        self.spawn(async move {
            let following = Following(inner);
            following.0.follow_digest().await;
        });
    }

    /// Hashes the data file in order as its parts become readable, round after round until
    /// the digest passed or the hydration failed or stopped.
    async fn follow_digest(self: &Arc<Self>) {
        let Some(expected) = self.id.digest else {
            return;
        };
        let mut changed = self.changed.subscribe();
        'rounds: loop {
            let round = {
                let mut st = self.state.lock().unwrap();
                if st.stopped || st.fatal.is_some() || st.digest != DigestCheck::NotStarted {
                    return;
                }
                let round = ROUNDS.fetch_add(1, Ordering::Relaxed);
                st.digest = DigestCheck::Running { round };
                round
            };
            let started = Instant::now();
            let mut hasher = Some(expected.hasher());
            let mut at = 0;
            loop {
                let readable_to = {
                    let st = self.state.lock().unwrap();
                    // Seen under the lock: a change published after this wakes the wait below.
                    changed.borrow_and_update();
                    if st.digest != (DigestCheck::Running { round })
                        || st.stopped
                        || st.fatal.is_some()
                    {
                        continue 'rounds;
                    }
                    self.readable_parts_from(&st, at)
                };
                if readable_to > at {
                    // Parts from an earlier run are checked against their own CRC-64 first:
                    // a bad one is fetched again (and this round starts over) rather than
                    // failing the whole object.
                    let parts = Hydration {
                        inner: self.clone(),
                    };
                    match parts.verify_cached(at..readable_to).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => return,
                    }
                    let reader = self.clone();
                    let h = hasher.take().expect("a hasher between pieces");
                    let hashed = tokio::task::spawn_blocking(move || {
                        reader.hash_range(round, h, at..readable_to)
                    })
                    .await
                    .expect("hashing does not panic");
                    match hashed {
                        Ok(Some(h)) => {
                            hasher = Some(h);
                            at = readable_to;
                        }
                        Ok(None) => continue 'rounds,
                        Err(e) => {
                            self.finish_digest_check(round, expected, Err(e), started);
                            return;
                        }
                    }
                } else if at >= self.id.size {
                    let actual = hasher.take().expect("a hasher at the end").finish();
                    self.finish_digest_check(round, expected, Ok(actual), started);
                    continue 'rounds;
                } else if changed.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// The end of the whole parts from `at` (a part boundary) on that are all readable, at
    /// most `HASH_AT_ONCE` bytes of them (one part at least): a resumed run's parts are
    /// claimed for their own check piece by piece, so a reader never waits behind the
    /// read-back of the whole entry.
    fn readable_parts_from(&self, st: &State, at: u64) -> u64 {
        let mut end = at;
        for p in self.layout.parts_for(at..self.id.size) {
            if end > at && end - at >= HASH_AT_ONCE {
                break;
            }
            let r = self.layout.range(p);
            if !st.covers(self.layout, r.clone()) {
                break;
            }
            end = r.end;
        }
        end
    }

    /// Adds `range` of the data file to `hasher`; `None` when the round was called off on the
    /// way (the hydration stopped, a hashed part is fetched again, an earlier check trusted).
    fn hash_range(
        &self,
        round: u64,
        mut hasher: DigestHasher,
        range: Range<u64>,
    ) -> std::io::Result<Option<DigestHasher>> {
        let mut buf = vec![0u8; READ_BACK.min(range.end - range.start) as usize];
        let mut at = range.start;
        while at < range.end {
            let wanted = {
                let st = self.state.lock().unwrap();
                !st.stopped && st.digest == (DigestCheck::Running { round })
            };
            if !wanted {
                return Ok(None);
            }
            let len = READ_BACK.min(range.end - at) as usize;
            self.file.read_at(&mut buf[..len], at)?;
            hasher.update(&buf[..len]);
            at += len as u64;
        }
        Ok(Some(hasher))
    }

    fn finish_digest_check(
        &self,
        round: u64,
        expected: WholeDigest,
        actual: std::io::Result<WholeDigest>,
        started: Instant,
    ) {
        let mut st = self.state.lock().unwrap();
        if st.digest != (DigestCheck::Running { round }) {
            // A hashed part is fetched again (or the check was trusted) meanwhile.
            return;
        }
        match actual {
            Ok(actual) if actual == expected => {
                tracing::debug!(key = %self.id.key, algorithm = expected.algorithm(), since_start = ?started.elapsed(), "whole-object digest matches");
                st.digest = DigestCheck::Passed;
                st.verified = true;
                drop(st);
                self.notify();
                self.finish_if_complete();
                return;
            }
            Ok(actual) => {
                tracing::error!(
                    bucket = %self.id.bucket,
                    key = %self.id.key,
                    algorithm = expected.algorithm(),
                    expected = %expected.hex(),
                    actual = %actual.hex(),
                    "{} mismatch: the bytes are not served and the entry is discarded",
                    expected.algorithm()
                );
                self.cfg
                    .stats
                    .crc_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                st.fatal = Some(Arc::new(HydrateError::DigestMismatch {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    algorithm: expected.algorithm(),
                    expected: expected.hex(),
                    actual: actual.hex(),
                }));
            }
            Err(source) => {
                st.fatal = Some(Arc::new(HydrateError::Io {
                    path: self.data_path.clone(),
                    source,
                }));
            }
        }
        self.cfg
            .stats
            .hydrations_failed
            .fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.notify();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::hydrate::{
        Checked, Checkpoint, ConnectionLimiter, FetchMode, Hydration, HydrationConfig,
        HydrationFiles, ObjectIdentity,
    };
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectStore, WholeDigest};

    const PART: u64 = 64 << 10;
    const SIZE: usize = (PART * 5 + 123) as usize;

    fn digest_of(kind: WholeDigest, data: &[u8]) -> WholeDigest {
        let mut h = kind.hasher();
        h.update(data);
        h.finish()
    }

    /// `b/k` as S3 describes it: no CRC-64, only `digest`.
    async fn s3_object(store: &Arc<MemoryStore>, digest: WholeDigest) -> ObjectIdentity {
        let meta = store.head("b", "k").await.unwrap();
        let mut id = ObjectIdentity::from_meta("b", "k", &meta);
        id.crc64 = None;
        id.digest = Some(digest);
        id
    }

    fn start(
        store: &Arc<MemoryStore>,
        dir: &std::path::Path,
        id: ObjectIdentity,
        resume: Option<&Checkpoint>,
    ) -> Hydration {
        start_trusting(store, dir, id, resume, None)
    }

    fn start_trusting(
        store: &Arc<MemoryStore>,
        dir: &std::path::Path,
        id: ObjectIdentity,
        resume: Option<&Checkpoint>,
        trusted: Option<&Checked>,
    ) -> Hydration {
        let cfg = HydrationConfig {
            part_size: PART,
            threads: 3,
            mode: FetchMode::All,
            ..Default::default()
        };
        Hydration::start_prefetched(
            store.clone(),
            id,
            HydrationFiles {
                data: dir.join("k.data"),
                checkpoint: Some(dir.join("k.ckpt")),
                data_mode: 0o600,
            },
            cfg,
            ConnectionLimiter::new(8, 3),
            resume,
            trusted,
            None,
        )
        .unwrap()
    }

    async fn outcome(h: &Hydration) -> Result<(), Arc<crate::hydrate::HydrateError>> {
        tokio::time::timeout(Duration::from_secs(20), h.wait_complete())
            .await
            .expect("the hydration ends")
    }

    /// The right MD5 or CRC64NVME: the object completes, and a read that ends it is served.
    /// A wrong one: the hydration fails as corrupt, and so does a read of its last byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_bytes_that_match_the_whole_object_digest_complete() {
        let data = crate::sample::bytes(31, SIZE);
        for kind in [WholeDigest::Md5([0; 16]), WholeDigest::Crc64Nvme(0)] {
            let right = digest_of(kind, &data);
            let mut wrong_data = data.clone();
            wrong_data[SIZE / 2] ^= 1;
            let wrong = digest_of(kind, &wrong_data);
            for (digest, good) in [(right, true), (wrong, false)] {
                let dir = tempfile::tempdir().unwrap();
                let store = MemoryStore::new("mem");
                store.put("b", "k", data.clone());
                let h = start(&store, dir.path(), s3_object(&store, digest).await, None);
                let end = SIZE as u64 - 10..SIZE as u64;
                h.note_read(end.clone());
                let last_read = tokio::time::timeout(Duration::from_secs(20), async {
                    h.wait_range(end.clone()).await?;
                    h.wait_verified().await
                })
                .await
                .expect("the last read ends");
                let done = outcome(&h).await;
                if good {
                    last_read.unwrap();
                    done.unwrap();
                    assert!(h.progress().complete);
                    assert_eq!(std::fs::read(dir.path().join("k.data")).unwrap(), data);
                } else {
                    let e = done.expect_err("a wrong digest fails the hydration");
                    assert!(e.is_corrupt(), "{e}");
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!("{} mismatch", kind.algorithm()))
                            && text.contains(&wrong.hex())
                            && text.contains(&right.hex()),
                        "{text}"
                    );
                    assert!(last_read.is_err(), "the read that ends the file fails");
                    assert!(!h.progress().complete);
                }
                h.shutdown().await;
            }
        }
    }

    /// A complete entry from an earlier run is hashed again before it completes, each part
    /// checked against its own CRC-64 first: a part whose bytes changed on disk is fetched
    /// again, alone, and the object completes; what a hydration in this mount's life checked
    /// is trusted by the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_complete_entry_from_an_earlier_run_is_checked_again() {
        let data = crate::sample::bytes(32, SIZE);
        let store = MemoryStore::new("mem");
        store.put("b", "k", data.clone());
        let id = s3_object(&store, digest_of(WholeDigest::Md5([0; 16]), &data)).await;
        let dir = tempfile::tempdir().unwrap();
        let h = start(&store, dir.path(), id.clone(), None);
        outcome(&h).await.unwrap();
        let record = h.inner.snapshot();
        let checked = h.checked();
        h.shutdown().await;
        assert!(checked.digest_passed);
        assert!(record.present.is_full());

        // Intact: the next run completes from disk, without a GET.
        let gets = store
            .counters
            .gets
            .load(std::sync::atomic::Ordering::Relaxed);
        let again = start(&store, dir.path(), id.clone(), Some(&record));
        outcome(&again).await.unwrap();
        again.shutdown().await;
        assert_eq!(
            store
                .counters
                .gets
                .load(std::sync::atomic::Ordering::Relaxed),
            gets
        );

        // A byte of the last part changed on disk since: that part fails its own CRC-64
        // before it is hashed and is fetched again, alone; the object then passes its digest.
        let path = dir.path().join("k.data");
        let flip_last_byte = || {
            let mut on_disk = std::fs::read(&path).unwrap();
            on_disk[SIZE - 1] ^= 0x80;
            std::fs::write(&path, &on_disk).unwrap();
        };
        flip_last_byte();
        let changed = start(&store, dir.path(), id.clone(), Some(&record));
        outcome(&changed).await.unwrap();
        changed.shutdown().await;
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(
            store
                .counters
                .gets
                .load(std::sync::atomic::Ordering::Relaxed),
            gets + 1,
            "the bad part alone is fetched again"
        );

        // What a hydration in this mount's life checked is trusted by the next one (only
        // this mount writes its cache): nothing is read back, so even a flipped byte is not
        // seen here (a reader's read of that part would still check it).
        flip_last_byte();
        let trusted = start_trusting(&store, dir.path(), id, Some(&record), Some(&checked));
        outcome(&trusted).await.unwrap();
        assert!(trusted.checked().digest_passed);
        trusted.shutdown().await;
    }
}
