//! `OssClient` as an `ObjectStore`, and the translation of the client's errors into the
//! store's kinds. The message is the client's own text (SDK-style, with hints), so what a user
//! reads does not change with the layer that reports it.

use std::ops::Range;

use crate::store::{
    BoxFut, ByteStream, ListPage, ListRequest, ObjectMeta, ObjectStore, StoreError, StoreErrorKind,
};

use super::{OssClient, OssError};

impl From<OssError> for StoreError {
    fn from(e: OssError) -> StoreError {
        let kind = if e.is_precondition_failed() {
            StoreErrorKind::PreconditionFailed
        } else if e.is_not_found() {
            StoreErrorKind::NotFound
        } else if e.service().is_some_and(|s| s.status == 403) {
            StoreErrorKind::AccessDenied
        } else if e.is_retryable() {
            StoreErrorKind::Transient
        } else {
            StoreErrorKind::Permanent
        };
        StoreError {
            kind,
            message: e.to_string(),
            code: e.code().map(str::to_string),
            request_id: e.service().map(|s| s.request_id.clone()),
        }
    }
}

/// A range reader as the store's byte stream.
fn chunks(reader: super::RangeReader) -> ByteStream {
    Box::pin(futures_util::stream::unfold(reader, |mut r| async move {
        match r.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), r)),
            Ok(None) => None,
            // After an error the reader is spent: end the stream behind it.
            Err(e) => Some((Err(e.into()), r.finished())),
        }
    }))
}

impl ObjectStore for OssClient {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, StoreError>> {
        Box::pin(async move { Ok(self.head_object(bucket, key).await?) })
    }

    fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<String>,
    ) -> ByteStream {
        chunks(self.get_object(bucket, key, Some(range), if_match))
    }

    /// One ranged GET: its headers are the HEAD (the whole object's CRC-64 comes with a
    /// ranged answer too), its body the range.
    fn get_range_with_meta<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        range: Range<u64>,
        if_match: String,
    ) -> BoxFut<'a, Result<(ObjectMeta, ByteStream), StoreError>> {
        Box::pin(async move {
            let mut reader = self.get_object(bucket, key, Some(range), Some(if_match));
            reader.start().await?;
            let meta = reader.meta().cloned().ok_or_else(|| {
                StoreError::new(StoreErrorKind::Transient, "a GET ended without an answer")
            })?;
            Ok((meta, chunks(reader)))
        })
    }

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, StoreError>> {
        Box::pin(async move { Ok(self.list_objects_v2(bucket, &req).await?) })
    }

    /// One GET without a range: its headers are the HEAD, its body the object when small.
    /// A larger object's body is dropped after its first chunk (the connection is closed).
    fn get_small<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        limit: u64,
    ) -> BoxFut<'a, Result<(ObjectMeta, Option<bytes::Bytes>), StoreError>> {
        Box::pin(async move {
            let mut reader = self.get_object(bucket, key, None, None);
            let mut body = Vec::new();
            loop {
                let chunk = reader.next_chunk().await?;
                let meta = reader.meta().cloned().ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Transient, "a GET ended without an answer")
                })?;
                if meta.size > limit {
                    return Ok((meta, None));
                }
                match chunk {
                    Some(c) => body.extend_from_slice(&c),
                    None => return Ok((meta, Some(body.into()))),
                }
            }
        })
    }

    fn location(&self) -> String {
        self.config().endpoint.to_string()
    }

    fn principal(&self) -> String {
        let cfg = self.config();
        let who = match (&cfg.credentials_provider, &cfg.credentials) {
            (Some(p), _) => p.principal(),
            (None, Some(c)) => format!("key {}", c.access_key_id),
            (None, None) => "anonymous".into(),
        };
        format!("{} as {who}", cfg.endpoint)
    }
}
