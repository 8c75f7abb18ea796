//! Objects larger than the whole cache: sequential ranged reads through a memory window,
//! never kept on disk. Must not touch the cache directory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::hydrate::ObjectIdentity;
use crate::store::{ObjectStore, StoreError};

use super::{FsError, OssFs};

/// Sequential ranged reads through a memory window of `window` bytes, for objects that do not
/// fit the cache. Memory per handle is bounded by the window.
pub struct DirectReader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) id: ObjectIdentity,
    pub(super) window: u64,
    pub(super) buf: tokio::sync::Mutex<(u64, bytes::Bytes)>,
}

impl DirectReader {
    async fn read(&self, offset: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        use futures_util::StreamExt;
        let mut buf = self.buf.lock().await;
        let covered = offset >= buf.0 && end <= buf.0 + buf.1.len() as u64;
        if !covered {
            let fetch_end = (offset + self.window.max(end - offset)).min(self.id.size);
            let mut s = self.store.get_range(
                &self.id.bucket,
                &self.id.key,
                offset..fetch_end,
                Some(self.id.etag.clone()),
            );
            let mut data = bytes::BytesMut::with_capacity((fetch_end - offset) as usize);
            while let Some(chunk) = s.next().await {
                data.extend_from_slice(&chunk?);
            }
            *buf = (offset, data.freeze());
        }
        let start = (offset - buf.0) as usize;
        Ok(buf.1[start..start + (end - offset) as usize].to_vec())
    }
}

impl OssFs {
    pub(super) async fn read_direct(
        &self,
        r: &DirectReader,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let end = (offset + size as u64).min(r.id.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.direct_reads.fetch_add(1, Ordering::Relaxed);
        match r.read(offset, end).await {
            Ok(d) => {
                self.stats
                    .read_bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                Ok(d)
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                if e.is_precondition_failed() {
                    tracing::warn!(key = %r.id.key, "the object changed while it was being read");
                    return Err(FsError::ObjectChanged);
                }
                Err(FsError::store(format!("read {}", r.id.key), e))
            }
        }
    }
}
