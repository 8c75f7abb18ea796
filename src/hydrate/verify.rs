//! Cached bytes are checked, not trusted: the first time in a mount's life that a part that
//! came from an earlier run is needed, its bytes are read back and compared with the CRC-64
//! the checkpoint recorded for it. A part that no longer matches (bit rot, a truncated or
//! rewritten file, pages a crash lost) is marked missing, recorded so, and fetched again.
//! Each check is claimed under the state lock (`State::claim_checks`), so concurrent readers
//! of one part wait for one verdict rather than passing a part nobody has checked. Must not
//! serve bytes itself.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fixedbitset::FixedBitSet;

use super::parts::{CheckStep, DigestCheck};
use super::{HydrateError, Hydration, Inner};

/// What a hydration checked in its life (`Hydration::checked`): its parts, and whether the
/// whole object passed its digest.
#[derive(Debug, Clone)]
pub struct Checked {
    pub parts: FixedBitSet,
    pub digest_passed: bool,
}

impl Hydration {
    /// Checks every present part holding bytes of `range` that was not checked in this
    /// mount's life yet. `Ok(true)`: every byte of `range` may be served. `Ok(false)`: some
    /// byte is missing (never fetched, or its part just failed its check): wait for it
    /// (`wait_range`) and ask again.
    pub async fn verify_cached(&self, range: Range<u64>) -> Result<bool, HydrateError> {
        let mut changed = self.inner.changed.subscribe();
        loop {
            let step = {
                let mut st = self.inner.state.lock().unwrap();
                // Seen under the lock: a verdict published after this wakes the wait below.
                changed.borrow_and_update();
                if st.stopped {
                    // Stopped (its entry replaced by a new version, evicted, unmounted): a
                    // handle open on it keeps the bytes it holds checked (its file is
                    // unlinked, not rewritten); anything else would need work that ended.
                    return if st.servable_as_is(self.inner.layout, range.clone()) {
                        Ok(true)
                    } else {
                        Err(self.inner.stopped_error())
                    };
                }
                st.claim_checks(self.inner.layout, range.clone())
            };
            let todo = match step {
                CheckStep::Checked => return Ok(true),
                CheckStep::Missing => return Ok(false),
                CheckStep::Wait => {
                    if changed.changed().await.is_err() {
                        return Err(self.inner.stopped_error());
                    }
                    continue;
                }
                CheckStep::Check(todo) => todo,
            };
            let mut claim = Claim {
                inner: &self.inner,
                parts: todo.iter().map(|&(p, _)| p).collect(),
            };
            self.inner
                .cfg
                .stats
                .parts_checked
                .fetch_add(todo.len() as u64, Ordering::Relaxed);
            let inner = self.inner.clone();
            let verdicts = tokio::task::spawn_blocking(move || inner.read_back(&todo))
                .await
                .expect("verification does not panic");
            // The verdicts settle the claim (no await comes between).
            claim.parts.clear();
            drop(claim);
            let failed = self.inner.state.lock().unwrap().finish_checks(&verdicts);
            self.inner.notify();
            if !failed.is_empty() {
                for &part in &failed {
                    self.inner
                        .cfg
                        .stats
                        .parts_failed_check
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        bucket = %self.inner.id.bucket,
                        key = %self.inner.id.key,
                        part,
                        "cached part failed its CRC-64 check (the cache file changed since it was written); fetching it again"
                    );
                }
                self.inner.save_checkpoint().await?;
                self.inner.restart_workers();
                // Their bytes come again: so does the whole object's digest.
                self.inner.start_digest_check();
            }
        }
    }

    /// What was checked in this hydration's life, for the cache to keep beyond it.
    pub fn checked(&self) -> Checked {
        let st = self.inner.state.lock().unwrap();
        Checked {
            parts: st.checked.clone(),
            digest_passed: st.digest == DigestCheck::Passed,
        }
    }

    /// What an earlier hydration of the same entry checked in this mount's life: its bytes
    /// have not changed since (only this mount writes its cache), so neither those parts
    /// nor (when every part is still present) the whole object's digest are read back again
    /// at the next open.
    pub(super) fn trust_checked(&self, checked: &Checked) {
        let mut st = self.inner.state.lock().unwrap();
        if checked.parts.len() != st.present.len() {
            return;
        }
        let mut trusted = checked.parts.clone();
        trusted.intersect_with(&st.present);
        st.checked.union_with(&trusted);
        let digest_trusted = checked.digest_passed
            && self.inner.id.digest.is_some()
            && st.present.is_full()
            && st.digest != DigestCheck::Passed
            && st.fatal.is_none();
        if digest_trusted {
            st.digest = DigestCheck::Passed;
            st.verified = true;
        }
    }
}

impl Inner {
    /// Reads each part back and compares it with its recorded CRC-64.
    fn read_back(&self, parts: &[(usize, u64)]) -> Vec<(usize, bool)> {
        let mut buf = Vec::new();
        parts
            .iter()
            .map(|&(p, recorded)| {
                let r = self.layout.range(p);
                buf.resize((r.end - r.start) as usize, 0);
                let ok = match self.file.read_at(&mut buf, r.start) {
                    Ok(()) => crate::crc64::update(0, &buf) == recorded,
                    Err(_) => false,
                };
                (p, ok)
            })
            .collect()
    }
}

/// Claimed checks; given back if the verifying read is cancelled (a read past its deadline,
/// an interrupted request), so the parts never stay claimed by nobody.
struct Claim<'a> {
    inner: &'a Arc<Inner>,
    parts: Vec<usize>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.parts.is_empty() {
            return;
        }
        self.inner.state.lock().unwrap().abandon_checks(&self.parts);
        self.inner.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydrate::ObjectIdentity;
    use crate::hydrate::{ConnectionLimiter, FetchMode, HydrationConfig, HydrationFiles};
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;
    use std::time::Duration;

    const PART: u64 = 16 << 10;

    /// A stopped hydration still serves the bytes it holds (checked), and only those: a
    /// handle open on an old version keeps what it has when a new version replaces the entry.
    /// Before, every read of a stopped hydration failed, so an old handle opened before its
    /// entry was complete (not passthrough) got EIO for bytes it had already been served
    /// (`integrity::a_new_version_beside_an_open_old_one_never_mixes`, 4 runs in 8 here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_hydration_serves_what_it_holds_and_fails_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new("mem");
        let bytes = crate::sample::bytes(5, (8 * PART) as usize);
        store.put("b", "k", bytes.clone());
        let meta = store.head("b", "k").await.unwrap();
        let h = Hydration::start(
            store.clone(),
            ObjectIdentity::from_meta("b", "k", &meta),
            HydrationFiles {
                data: dir.path().join("k.data"),
                checkpoint: Some(dir.path().join("k.ckpt")),
                data_mode: 0o600,
            },
            HydrationConfig {
                part_size: PART,
                mode: FetchMode::OnDemand,
                readahead_parts: 0,
                ..Default::default()
            },
            ConnectionLimiter::new(4, 1),
            None,
        )
        .unwrap();
        let bound = Duration::from_secs(30);
        let held = PART..3 * PART;
        tokio::time::timeout(bound, h.wait_range(held.clone()))
            .await
            .expect("the wanted parts arrive")
            .unwrap();
        tokio::time::timeout(bound, h.shutdown())
            .await
            .expect("the hydration stops");
        let ok = tokio::time::timeout(bound, h.verify_cached(held.clone()))
            .await
            .expect("verify_cached answers");
        assert!(
            matches!(ok, Ok(true)),
            "bytes it holds are still served: {ok:?}"
        );
        let got = h
            .read_at(held.start, (held.end - held.start) as usize)
            .unwrap();
        assert!(got == bytes[held.start as usize..held.end as usize]);
        // A part it never fetched (on demand, nobody wanted it) fails: nothing fetches it now.
        let missing = 6 * PART..7 * PART;
        assert!(!h.is_present(missing.clone()), "nobody asked for part 6");
        let err = tokio::time::timeout(bound, h.verify_cached(missing))
            .await
            .expect("verify_cached answers");
        assert!(matches!(err, Err(HydrateError::Stopped { .. })), "{err:?}");
    }
}
