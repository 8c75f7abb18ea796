//! Cached bytes are checked, not trusted: the first time a part that came from an earlier run
//! is needed, its bytes are read back and compared with the CRC-64 the checkpoint recorded for
//! it. A part that no longer matches (bit rot, a truncated or rewritten file, pages a crash
//! lost) is marked missing, recorded so, and fetched again. Must not serve bytes itself.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::{HydrateError, Hydration};

impl Hydration {
    /// Checks every present, not yet checked part that holds bytes of `range`; returns how
    /// many failed (they are missing again, so `wait_range` fetches them).
    pub async fn verify_cached(&self, range: Range<u64>) -> Result<usize, HydrateError> {
        let parts = self.inner.layout.parts_for(range);
        let todo: Vec<(usize, u64)> = {
            let st = self.inner.state.lock().unwrap();
            parts
                .filter(|&p| st.present[p] && !st.checked[p])
                .map(|p| (p, st.part_crc[p]))
                .collect()
        };
        if todo.is_empty() {
            return Ok(0);
        }
        let inner = self.inner.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let mut out = Vec::with_capacity(todo.len());
            for (p, recorded) in todo {
                let r = inner.layout.range(p);
                buf.resize((r.end - r.start) as usize, 0);
                let ok = match inner.file.read_exact_at(&mut buf, r.start) {
                    Ok(()) => crate::crc64::update(0, &buf) == recorded,
                    Err(_) => false,
                };
                out.push((p, ok));
            }
            out
        })
        .await
        .expect("verification does not panic");
        let mut bad = 0;
        {
            let mut st = self.inner.state.lock().unwrap();
            for (p, ok) in verdicts {
                if ok {
                    st.checked.insert(p);
                } else if st.present[p] && !st.checked[p] {
                    bad += 1;
                    st.present.set(p, false);
                    st.complete = false;
                    self.inner
                        .cfg
                        .stats
                        .parts_failed_check
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        bucket = %self.inner.id.bucket,
                        key = %self.inner.id.key,
                        part = p,
                        "cached part failed its CRC-64 check (the cache file changed since it was written); fetching it again"
                    );
                }
            }
        }
        if bad > 0 {
            self.inner.save_checkpoint().await?;
            self.inner.restart_workers();
        }
        Ok(bad)
    }
}
