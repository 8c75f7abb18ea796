//! A hydration's state beyond the scheduler: progress snapshots, failures that end it, the
//! whole-object CRC-64 check once every part is present, and the checkpoint record written
//! from the state (serialised, never after shutdown). Must not fetch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Records are made durable together, at most this far apart.
const RECORD_SYNC_EVERY: Duration = Duration::from_secs(1);

use super::parts::DigestCheck;
use super::{Checkpoint, HydrateError, Inner};

/// A snapshot of a hydration's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub parts_total: usize,
    pub parts_present: usize,
    pub parts_in_flight: usize,
    pub bytes_total: u64,
    pub bytes_present: u64,
    /// Body bytes received in this run (including parts that were later retried).
    pub bytes_fetched: u64,
    /// Bytes that were already present when this run started.
    pub bytes_resumed: u64,
    pub part_requests: u64,
    pub complete: bool,
}

impl Inner {
    pub(super) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub(super) fn stopped_error(&self) -> HydrateError {
        HydrateError::Stopped {
            bucket: self.id.bucket.clone(),
            key: self.id.key.clone(),
        }
    }

    /// When every part is present: checks the combined CRC-64 against the server's.
    pub(super) fn finish_if_complete(&self) {
        let mut st = self.state.lock().unwrap();
        if st.complete || st.fatal.is_some() || !st.present.is_full() || !st.recorded.is_full() {
            return;
        }
        if self.id.digest.is_some() && st.digest != DigestCheck::Passed {
            // Complete only once the whole-object digest passed; its check calls back here.
            if st.digest == DigestCheck::NotStarted {
                drop(st);
                self.start_digest_check();
            }
            return;
        }
        let combined = self.layout.combined_crc(|p| st.part_crc[p]);
        match self.id.crc64 {
            Some(expected) if expected != combined => {
                tracing::error!(
                    bucket = %self.id.bucket,
                    key = %self.id.key,
                    expected,
                    actual = combined,
                    "CRC-64 mismatch: the server announced {expected}, the fetched bytes give {combined}; the bytes are not served and the entry is discarded"
                );
                self.cfg
                    .stats
                    .crc_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                self.cfg
                    .stats
                    .hydrations_failed
                    .fetch_add(1, Ordering::Relaxed);
                st.fatal = Some(Arc::new(HydrateError::ChecksumMismatch {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    expected,
                    actual: combined,
                }));
            }
            _ => {
                st.complete = true;
                self.cfg
                    .stats
                    .hydrations_completed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(st);
        self.notify();
    }

    /// Makes records that no later record will sync durable a second from now: "at most a
    /// second apart" holds when the parts stop arriving too. One timer at a time.
    fn sync_records_later(self: &Arc<Self>) {
        if self.sync_timer.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        self.spawn(async move {
            tokio::time::sleep(RECORD_SYNC_EVERY).await;
            let timer = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut records = timer.checkpoint_lock.lock().unwrap();
                timer.sync_timer.store(false, Ordering::SeqCst);
                if let Some(file) = records.as_mut() {
                    if !timer.writes_closed.load(Ordering::SeqCst) {
                        if let Err(e) = file.sync_due(Duration::ZERO, true) {
                            tracing::warn!(key = %timer.id.key, "syncing the checkpoint failed: {e}");
                        }
                    }
                }
            })
            .await;
        });
    }

    pub(super) fn snapshot(&self) -> Checkpoint {
        let st = self.state.lock().unwrap();
        let mut c = Checkpoint::new(
            &self.store_location,
            &self.id,
            self.layout.part_size,
            &self.data_path,
        );
        c.present = st.present.clone();
        c.part_crc64 = st.part_crc.clone();
        c
    }

    /// Records what changed since the last record (parts now present, parts found bad), in
    /// place: constant cost per part. The first write of a hydration writes the whole record
    /// (which also turns a format-1 checkpoint into format 2).
    pub(super) async fn save_checkpoint(self: &Arc<Self>) -> Result<(), HydrateError> {
        let Some(path) = self.checkpoint_path.clone() else {
            return Ok(());
        };
        let inner = self.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            // Serialised, and the changes taken under the lock, so an older record can never
            // overwrite a newer one; nothing is written once the hydration was shut down.
            let mut records = inner.checkpoint_lock.lock().unwrap();
            if inner.writes_closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            inner.write_records(&mut records, &p, false)
        })
        .await
        .expect("checkpoint writer does not panic")
        .map_err(|source| HydrateError::Io { path, source })
    }

    /// Writes the records of parts that changed since the last write (or the whole record
    /// the first time), with `checkpoint_lock` held. `last`: the hydration stops: records are
    /// synced now, and no timer is left behind.
    pub(super) fn write_records(
        self: &Arc<Self>,
        records: &mut Option<super::checkpoint::RecordFile>,
        path: &std::path::Path,
        last: bool,
    ) -> std::io::Result<()> {
        // A one-part object's record is cheap to lose (one GET), not worth an fsync.
        let durable = self.layout.count() > 1;
        match records.as_mut() {
            Some(file) => {
                let (changes, recorded) = {
                    let st = self.state.lock().unwrap();
                    let changes: Vec<(usize, Option<u64>)> = st
                        .present
                        .symmetric_difference(&st.recorded)
                        .map(|part| (part, st.present[part].then(|| st.part_crc[part])))
                        .collect();
                    let mut recorded = st.recorded.clone();
                    for (part, crc) in &changes {
                        recorded.set(*part, crc.is_some());
                    }
                    (changes, recorded)
                };
                if let Some(probe) = &self.cfg.probe {
                    probe.recording(&recorded, self.layout);
                }
                for (part, crc) in &changes {
                    file.set(*part, *crc)?;
                }
                // Records are made durable together, a second apart at most; the one that
                // completes the object at once.
                if durable {
                    file.sync_due(RECORD_SYNC_EVERY, last || recorded.is_full())?;
                    if file.is_unsynced() && !last {
                        self.sync_records_later();
                    }
                }
                let mut st = self.state.lock().unwrap();
                for (part, crc) in changes {
                    st.recorded.set(part, crc.is_some());
                }
            }
            None => {
                let record = self.snapshot();
                if last && record.present.is_clear() {
                    return Ok(()); // nothing worth resuming
                }
                if let Some(probe) = &self.cfg.probe {
                    probe.recording(&record.present, self.layout);
                }
                *records = Some(super::checkpoint::RecordFile::create(
                    &record,
                    path,
                    durable,
                    self.cfg.storage.as_ref(),
                )?);
                self.state.lock().unwrap().recorded = record.present;
            }
        }
        Ok(())
    }
}
