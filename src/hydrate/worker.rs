//! One part from request to record: a ranged GET pinned by If-Match, streamed to the data
//! file in 1 MiB writes with its CRC-64, made durable (fdatasync), and only then recorded in
//! the checkpoint; retries, and the failures that pause or end a hydration. Must not choose
//! which part comes next.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::store::{StoreError, StoreErrorKind};

use super::limiter::ConnectionPermit;
use super::parts::PartWritten;
use super::scheduler::TAIL_SPLIT_MIN;
use super::segments::{self, PartSegments, SegmentControl, SegmentDone};
use super::{HydrateError, Inner};

/// Bytes buffered per part before they are written: memory grows with parts in flight only.
const WRITE_CHUNK: usize = 1 << 20;
/// The first bytes of each GET are written in smaller pieces, so a reader waiting for them
/// does not wait for a whole chunk to arrive.
const FIRST_WRITE: usize = 64 << 10;
const FIRST_WRITES_UNTIL: u64 = 512 << 10;
/// Writes end on page boundaries (but for a segment's last).
const PAGE: u64 = 4096;

impl Inner {
    /// Fetches one part (retrying), records it, and publishes the outcome to waiters.
    /// `connection` is a permit the caller already holds for the first attempt (background
    /// workers take one before they pick a part); others acquire their own.
    pub(super) async fn fetch_and_record(
        self: &Arc<Self>,
        part: usize,
        demand: bool,
        connection: Option<ConnectionPermit>,
    ) -> Result<(), Arc<HydrateError>> {
        let result = self.fetch_part(part, demand, connection).await;
        self.record_outcome(part, demand, result).await
    }

    /// Writes parts from bytes that arrived with the object's metadata (one GET of a small
    /// object) and records them as a fetch would: written, synced, then recorded. `parts` were
    /// marked in flight by the caller; if writing fails they go back to the workers.
    pub(super) async fn supply_and_record(self: &Arc<Self>, parts: Vec<usize>, body: Bytes) {
        let mut written = Vec::new();
        for &part in &parts {
            let range = self.layout.range(part);
            let len = range.end - range.start;
            if let Some(b) = &self.cfg.budget {
                if !b.reserve(&self.id, len) {
                    continue;
                }
            }
            let data = body.slice(range.start as usize..range.end as usize);
            self.bytes_fetched.fetch_add(len, Ordering::Relaxed);
            self.cfg
                .stats
                .bytes_fetched
                .fetch_add(len, Ordering::Relaxed);
            let file = self.file.clone();
            let (crc, wrote) = tokio::task::spawn_blocking(move || {
                (
                    crate::crc64::checksum(&data),
                    file.write_at(&data, range.start),
                )
            })
            .await
            .expect("writer does not panic");
            match wrote {
                Ok(()) => {
                    // Readable now; recorded once synced.
                    self.state
                        .lock()
                        .unwrap()
                        .note_written(part, self.layout.range(part));
                    self.note_part_written(part, crc);
                    written.push((part, crc))
                }
                Err(e) => {
                    tracing::debug!(key = %self.id.key, part, "writing supplied bytes failed: {e}");
                    if let Some(b) = &self.cfg.budget {
                        b.release(&self.id, len);
                    }
                }
            }
        }
        let file = self.file.clone();
        let synced = !written.is_empty()
            && tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .expect("fsync does not panic")
                .is_ok();
        for &part in &parts {
            let crc = written.iter().find(|(p, _)| *p == part).map(|(_, c)| *c);
            match crc.filter(|_| synced) {
                Some(crc) => {
                    if let Some(probe) = &self.cfg.probe {
                        probe.synced(self.layout.range(part));
                    }
                    let _ = self.record_outcome(part, false, Ok(crc)).await;
                }
                None => {
                    // Not reserved, not written or not synced: the workers fetch it as usual.
                    if let (Some(b), Some(_)) = (&self.cfg.budget, crc) {
                        let range = self.layout.range(part);
                        b.release(&self.id, range.end - range.start);
                    }
                    let mut st = self.state.lock().unwrap();
                    st.in_flight[part] = false;
                    if st.unwrite(self.layout, part) {
                        drop(st);
                        self.start_digest_check();
                    }
                }
            }
        }
        self.notify();
        self.restart_workers();
    }

    /// Publishes a part's outcome: recorded (then the checkpoint is written) or failed.
    async fn record_outcome(
        self: &Arc<Self>,
        part: usize,
        demand: bool,
        result: Result<u64, HydrateError>,
    ) -> Result<(), Arc<HydrateError>> {
        let outcome = match result {
            Ok(crc) => {
                {
                    let mut st = self.state.lock().unwrap();
                    st.present.insert(part);
                    st.checked.insert(part);
                    st.in_flight[part] = false;
                    st.written.remove(&part);
                    st.crc_known.remove(&part);
                    st.part_crc[part] = crc;
                    st.failed[part] = None;
                }
                // The part's bytes are durable and readable; a record that could not be
                // written (a full disk) pauses the background work until a reader asks again,
                // and the next recorded part writes the record again.
                if let Err(e) = self.save_checkpoint().await {
                    tracing::warn!(bucket = %self.id.bucket, key = %self.id.key, "{e}");
                    let mut st = self.state.lock().unwrap();
                    st.paused.get_or_insert_with(|| Arc::new(e));
                }
                Ok(())
            }
            Err(e) => {
                if demand {
                    self.open_pending_readahead();
                }
                // Only a changed object ends the hydration; a full disk or a failed write fails
                // this part and pauses until a reader asks again (the cause may clear).
                let fatal = matches!(e, HydrateError::ObjectChanged { .. });
                let e = Arc::new(e);
                let mut st = self.state.lock().unwrap();
                st.in_flight[part] = false;
                let rehash = st.unwrite(self.layout, part);
                if fatal {
                    if st.fatal.is_none() {
                        self.cfg
                            .stats
                            .hydrations_failed
                            .fetch_add(1, Ordering::Relaxed);
                        st.fatal = Some(e.clone());
                    }
                } else {
                    st.failed[part] = Some(e.clone());
                }
                drop(st);
                if rehash {
                    self.start_digest_check();
                }
                if let Some(se) = e.store_error() {
                    tracing::warn!(bucket = %self.id.bucket, key = %self.id.key, part, code = se.code().unwrap_or(""), request_id = se.request_id().unwrap_or(""), "part failed: {e}");
                } else {
                    tracing::warn!(bucket = %self.id.bucket, key = %self.id.key, part, "part failed: {e}");
                }
                Err(e)
            }
        };
        if outcome.is_ok() {
            self.finish_if_complete();
        }
        self.notify();
        outcome
    }

    pub(super) async fn fetch_part(
        &self,
        part: usize,
        demand: bool,
        connection: Option<ConnectionPermit>,
    ) -> Result<u64, HydrateError> {
        let range = self.layout.range(part);
        let len = range.end - range.start;
        if let Some(b) = &self.cfg.budget {
            if !b.reserve(&self.id, len) {
                return Err(HydrateError::NoSpace {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    part,
                });
            }
        }
        let result = self
            .fetch_part_reserved(part, range, demand, connection)
            .await;
        if result.is_err() {
            if let Some(b) = &self.cfg.budget {
                b.release(&self.id, len);
            }
        }
        result
    }

    pub(super) async fn fetch_part_reserved(
        &self,
        part: usize,
        range: Range<u64>,
        demand: bool,
        mut connection: Option<ConnectionPermit>,
    ) -> Result<u64, HydrateError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = {
                let ready = connection
                    .take()
                    .or_else(|| self.opened_connection(&range))
                    .or_else(|| self.limiter.try_acquire(demand))
                    .or_else(|| self.reclaim_opened_connection());
                let _permit = match ready {
                    Some(p) => p,
                    None => self.limiter.acquire(demand).await,
                };
                if attempt > 1 {
                    self.cfg.stats.part_retries.fetch_add(1, Ordering::Relaxed);
                }
                match self.fetch_part_once(part, range.clone(), demand).await {
                    Ok(crc) => return Ok(crc),
                    Err(e) => e,
                }
            };
            let err = match err {
                PartFailure::Io(e) => return Err(e),
                PartFailure::Store(e) if e.is_precondition_failed() => {
                    return Err(HydrateError::ObjectChanged {
                        bucket: self.id.bucket.clone(),
                        key: self.id.key.clone(),
                        etag: self.id.etag.clone(),
                    })
                }
                PartFailure::Store(e) => e,
            };
            if !err.is_retryable() || attempt >= self.cfg.part_attempts {
                return Err(HydrateError::Part {
                    bucket: self.id.bucket.clone(),
                    key: self.id.key.clone(),
                    part,
                    start: range.start,
                    end: range.end,
                    attempts: attempt,
                    source: Box::new(err),
                });
            }
            tracing::debug!(key = %self.id.key, part, attempt, "part attempt failed, retrying: {err}");
            if self.id.digest.is_some() {
                // The retry writes the part again: if the failed attempt had written all of
                // it, the whole-object digest may have hashed those bytes.
                let rehash = {
                    let mut st = self.state.lock().unwrap();
                    let r = self.layout.range(part);
                    let whole = st
                        .written
                        .get(&part)
                        .is_some_and(|ws| ws.iter().any(|w| w.start <= r.start && r.end <= w.end));
                    whole && st.unwrite(self.layout, part)
                };
                if rehash {
                    self.start_digest_check();
                }
            }
            tokio::time::sleep(self.cfg.retry_delay * attempt).await;
        }
    }

    /// The connection the answered first-part GET is counted on, for the fetch of exactly
    /// its range: that fetch reads the GET (in `fetch_segment`) and needs no other.
    fn opened_connection(&self, range: &Range<u64>) -> Option<ConnectionPermit> {
        let mut opened = self.opened_part.lock().unwrap();
        opened
            .as_mut()
            .filter(|o| o.range == *range)
            .and_then(|o| o.connection.take())
    }

    /// The connection of an answered first-part GET that nobody has come to read, its GET
    /// dropped: a fetch of another part that finds the limiter full takes it rather than
    /// waiting out the GET's grace (a footer read at `--max-connections 1`).
    fn reclaim_opened_connection(&self) -> Option<ConnectionPermit> {
        let mut opened = self.opened_part.lock().unwrap();
        if opened.as_ref().is_some_and(|o| o.connection.is_some()) {
            return opened.take().and_then(|o| o.connection);
        }
        None
    }

    /// The part's bytes, streamed to the data file; returns the part's CRC-64 after they are
    /// durable. A demanded part whose reader is inside it is fetched from the reader's
    /// offset first and its head after; a read landing far ahead of a stream splits it
    /// (`segments`). Either way the segments' CRCs are combined in order.
    pub(super) async fn fetch_part_once(
        &self,
        part: usize,
        range: Range<u64>,
        demand: bool,
    ) -> Result<u64, PartFailure> {
        let start_at = self.state.lock().unwrap().start_at.remove(&part);
        let inline = match start_at.filter(|k| range.start < *k && *k < range.end) {
            Some(k) => {
                // Neither segment is the answered first-part GET's range: it is dropped
                // now, not left streaming beside them.
                let mut opened = self.opened_part.lock().unwrap();
                if opened.as_ref().is_some_and(|o| o.range == range) {
                    opened.take();
                }
                vec![(k..range.end, demand), (range.start..k, false)]
            }
            None => vec![(range.clone(), demand)],
        };
        // The end of a whole-object fetch: the part's second half is left unasked for a
        // connection that would otherwise idle (never the answered first-part GET's range,
        // which is one GET already).
        let in_halves = !demand
            && inline.len() == 1
            && !self
                .opened_part
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|o| o.range == range)
            && self.fetches_in_halves(&range);
        let (segments, mut split_off) = PartSegments::new();
        self.state.lock().unwrap().segments.insert(part, segments);
        let _registered = Registered { inner: self, part };
        let mut done = Vec::new();
        for (r, d) in inline {
            let control = if in_halves {
                SegmentControl::in_halves(r.clone(), TAIL_SPLIT_MIN)
            } else {
                SegmentControl::new(r.clone())
            };
            if let Some(s) = self.state.lock().unwrap().segments.get_mut(&part) {
                s.add(control.clone());
            }
            done.push(self.fetch_segment(part, r, &control, d).await?);
        }
        loop {
            done.sort_by_key(|(r, _): &SegmentDone| r.start);
            if segments::tiles(&done, &range) {
                break;
            }
            // A split hands its GET over before the stream it cut can end.
            let Some(task) = split_off.recv().await else {
                return Err(PartFailure::Store(
                    self.protocol_error(format!("part {part}'s segments do not cover it")),
                ));
            };
            let joined = task.join().await.map_err(|e| {
                PartFailure::Store(StoreError::new(
                    StoreErrorKind::Transient,
                    format!("a split segment's GET ended: {e}"),
                ))
            })?;
            done.push(joined?);
        }
        let crc = segments::combined_crc(&done);
        self.note_part_written(part, crc);
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .expect("fsync does not panic")
            .map_err(|source| self.io_failure(source))?;
        if let Some(probe) = &self.cfg.probe {
            probe.synced(range);
        }
        Ok(crc)
    }

    /// A GET for a segment split off a part's stream (`Hydration::want`), on the demand
    /// connection taken for it when it was split.
    pub(super) async fn fetch_split_segment(
        self: Arc<Self>,
        part: usize,
        control: Arc<SegmentControl>,
        _connection: ConnectionPermit,
    ) -> Result<SegmentDone, PartFailure> {
        self.cfg.stats.part_splits.fetch_add(1, Ordering::Relaxed);
        let range = control.start()..control.end();
        self.fetch_segment(part, range, &control, true).await
    }

    /// The GETs of `range` (within `part`: one, or two for a segment in halves), written as it arrives — in small writes at first,
    /// so a waiting reader gets its bytes within a round trip, then in 1 MiB writes — each
    /// noted as readable. Stops early where a split cut it (`control`). Returns the range
    /// fetched and its CRC-64.
    async fn fetch_segment(
        &self,
        part: usize,
        range: Range<u64>,
        control: &SegmentControl,
        demand: bool,
    ) -> Result<SegmentDone, PartFailure> {
        let _finished = FinishOnDrop(control);
        let mut asked = range.start..control.asked_to();
        // The GET that told the identity at open, when it asked for exactly this range.
        let opened = {
            let mut opened = self.opened_part.lock().unwrap();
            match opened.take() {
                // Its connection (if still there) goes with it: this fetch holds its own.
                Some(o) if o.range == asked => Some(o.stream),
                other => {
                    *opened = other;
                    None
                }
            }
        };
        let mut stream = match opened {
            Some(stream) => {
                self.count_part_request();
                stream
            }
            None => self.get_segment_range(asked.clone()),
        };
        // Computed with each write, off the async workers.
        let mut crc = Some(crate::crc64::Digest::default());
        let mut offset = range.start;
        // The chunks received and not yet written, as they came (written with one vectored
        // write: a copy into one buffer first cost 7% of the server's CPU on loopback).
        let mut pending: Vec<bytes::Bytes> = Vec::new();
        let mut pending_len = 0usize;
        let mut buf_start = offset;
        loop {
            let chunk = stream.next().await;
            let mut done = chunk.is_none();
            if done && offset == asked.end {
                // The first half's GET ended: the rest nobody claimed is this stream's too.
                if let Some(end) = control.ask_rest(offset) {
                    asked = offset..end;
                    // The ended GET goes before the next is asked for: never two at once on
                    // this fetch's one connection.
                    drop(stream);
                    stream = self.get_segment_range(asked.clone());
                    done = false;
                }
            }
            if let Some(chunk) = chunk {
                let mut chunk = chunk.map_err(PartFailure::Store)?;
                if demand && offset == range.start {
                    self.open_pending_readahead();
                }
                if offset + chunk.len() as u64 > asked.end {
                    return Err(PartFailure::Store(
                        self.protocol_error(format!("part body ran past byte {}", asked.end)),
                    ));
                }
                self.bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.cfg
                    .stats
                    .bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let (keep, ended) = control.arrived(offset, chunk.len() as u64);
                chunk.truncate(keep as usize);
                if !chunk.is_empty() {
                    pending_len += chunk.len();
                    pending.push(chunk);
                }
                offset += keep;
                // Cut by a split: the rest is another GET's.
                done |= ended && offset < range.end;
            }
            let flush_at = if buf_start - range.start < FIRST_WRITES_UNTIL {
                FIRST_WRITE
            } else {
                WRITE_CHUNK
            };
            // Whole pages only, but at the end: a page written in two pieces is dirtied twice,
            // and written to disk twice when a sync (of another part) comes in between.
            let cut = if done { offset } else { offset & !(PAGE - 1) };
            if (pending_len >= flush_at || done) && cut > buf_start {
                let data = take_front(&mut pending, (cut - buf_start) as usize);
                pending_len -= (cut - buf_start) as usize;
                let file = self.file.clone();
                let at = buf_start;
                let mut digest = crc.take().expect("the digest comes back with each write");
                let (digest, wrote) = tokio::task::spawn_blocking(move || {
                    for b in &data {
                        digest.update(b);
                    }
                    (digest, file.write_all_vectored_at(&data, at))
                })
                .await
                .expect("writer does not panic");
                crc = Some(digest);
                wrote.map_err(|source| self.io_failure(source))?;
                self.state
                    .lock()
                    .unwrap()
                    .note_written(part, buf_start..cut);
                self.notify();
                buf_start = cut;
            }
            if done {
                break;
            }
        }
        let end = control.end();
        if offset != end {
            return Err(PartFailure::Store(self.protocol_error(format!(
                "part body ended at byte {offset}, expected {end}"
            ))));
        }
        let crc = crc
            .expect("the digest is back after the last write")
            .value();
        Ok((range.start..offset, crc))
    }

    /// One GET of a segment's range, pinned to the opened version, counted as a part request.
    fn get_segment_range(&self, range: Range<u64>) -> crate::store::ByteStream {
        self.count_part_request();
        self.store.get_range(
            &self.id.bucket,
            &self.id.key,
            range,
            Some(self.id.etag.clone()),
        )
    }

    fn count_part_request(&self) {
        self.part_requests.fetch_add(1, Ordering::Relaxed);
        self.cfg.stats.part_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that `part` is wholly written with `crc` and wakes readers when that made
    /// the object verified (or starts the whole-object digest's check that will).
    fn note_part_written(&self, part: usize, crc: u64) {
        let written = self.state.lock().unwrap().note_part_written(
            self.layout,
            part,
            crc,
            self.id.crc64,
            self.id.digest.is_some(),
        );
        match written {
            PartWritten::Verified => self.notify(),
            PartWritten::CheckDigest => self.start_digest_check(),
            PartWritten::Noted => {}
        }
    }

    /// A body that does not match its range: worth another attempt, like any broken answer.
    pub(super) fn protocol_error(&self, detail: String) -> StoreError {
        StoreError::new(
            StoreErrorKind::Transient,
            format!("unexpected answer from {}: {detail}", self.store_location),
        )
    }

    pub(super) fn io_failure(&self, source: std::io::Error) -> PartFailure {
        PartFailure::Io(HydrateError::Io {
            path: self.data_path.clone(),
            source,
        })
    }
}

pub(super) enum PartFailure {
    Store(StoreError),
    Io(HydrateError),
}

/// Takes a part's segments out of the shared state when its fetch ends, however it ends:
/// no split can then hand a GET to a fetch that is gone.
struct Registered<'a> {
    inner: &'a Inner,
    part: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.inner.state.lock().unwrap().segments.remove(&self.part);
    }
}

struct FinishOnDrop<'a>(&'a SegmentControl);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The first `len` bytes of `chunks`, taken off its front (the chunk they end in is split;
/// no byte is copied).
fn take_front(chunks: &mut Vec<bytes::Bytes>, len: usize) -> Vec<bytes::Bytes> {
    let mut taken = Vec::new();
    let mut left = len;
    let mut whole = 0;
    for c in chunks.iter_mut() {
        if left == 0 {
            break;
        }
        if c.len() <= left {
            left -= c.len();
            whole += 1;
        } else {
            taken.push(c.split_to(left));
            break;
        }
    }
    let mut front: Vec<bytes::Bytes> = chunks.drain(..whole).collect();
    front.append(&mut taken);
    front
}

#[cfg(test)]
mod tests {
    use super::take_front;
    use bytes::Bytes;

    #[test]
    fn take_front_splits_the_chunk_it_ends_in_and_keeps_the_order() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut chunks: Vec<Bytes> = [3000, 1, 4000, 2999]
            .iter()
            .scan(0usize, |at, &n| {
                let c = Bytes::copy_from_slice(&data[*at..*at + n]);
                *at += n;
                Some(c)
            })
            .collect();
        for take in [0usize, 3000, 1, 5000, 1999] {
            let before: Vec<u8> = chunks.concat();
            let front = take_front(&mut chunks, take);
            assert_eq!(front.concat(), before[..take]);
            assert_eq!(chunks.concat(), before[take..]);
        }
        assert!(chunks.is_empty());
    }
}
