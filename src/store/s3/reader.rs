//! A ranged S3 GET as a stream of chunks that reopens itself after resets and short bodies,
//! pinned by `If-Match` to the ETag it first saw, and checked against it on every answer (a
//! server or proxy that ignores `If-Match` must not splice two versions). Writes nothing: the
//! caller owns the bytes.

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use super::client::S3Client;
use super::wire::{
    describe_reqwest_error, header_str, meta_from_headers, parse_content_range, protocol_error,
    transport_error,
};
use crate::store::{ObjectMeta, StoreError, StoreErrorKind};

pub(super) struct RangeReader {
    client: S3Client,
    bucket: String,
    key: String,
    next: u64,
    /// Exclusive end; `None` until the first answer tells the size (whole-object reads).
    end: Option<u64>,
    if_match: Option<String>,
    resp: Option<reqwest::Response>,
    /// Bytes to drop from a 200 answer that ignored the range.
    skip: u64,
    failures_in_a_row: u32,
    meta: Option<ObjectMeta>,
}

impl RangeReader {
    pub(super) fn new(
        client: S3Client,
        bucket: &str,
        key: &str,
        range: Option<std::ops::Range<u64>>,
        if_match: Option<String>,
    ) -> RangeReader {
        RangeReader {
            client,
            bucket: bucket.to_string(),
            key: key.to_string(),
            next: range.as_ref().map(|r| r.start).unwrap_or(0),
            end: range.map(|r| r.end),
            if_match,
            resp: None,
            skip: 0,
            failures_in_a_row: 0,
            meta: None,
        }
    }

    pub(super) fn meta(&self) -> Option<&ObjectMeta> {
        self.meta.as_ref()
    }

    /// Ends the stream: further `next_chunk` calls return `None`.
    pub(super) fn finished(mut self) -> Self {
        self.end = Some(self.next);
        self.resp = None;
        self
    }

    async fn open(&mut self) -> Result<(), StoreError> {
        // The full-object checksum, where the service keeps one (CRC64NVME on new AWS
        // objects), comes back with the answer.
        let mut headers = vec![("x-amz-checksum-mode", "ENABLED".to_string())];
        if self.next > 0 || self.end.is_some() {
            let last = self.end.map(|e| (e - 1).to_string()).unwrap_or_default();
            headers.push(("range", format!("bytes={}-{last}", self.next)));
        }
        if let Some(tag) = &self.if_match {
            headers.push(("if-match", tag.clone()));
        }
        let resp = self
            .client
            .send(Method::GET, &self.bucket, Some(&self.key), &[], &headers)
            .await?;
        let endpoint = self.client.endpoint_name();
        let total = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let cr = header_str(resp.headers(), "content-range").unwrap_or_default();
            let (first, total) = parse_content_range(&cr)
                .ok_or_else(|| protocol_error(&endpoint, format!("bad Content-Range {cr:?}")))?;
            if first != self.next {
                return Err(protocol_error(
                    &endpoint,
                    format!("asked for bytes from {} but got from {first}", self.next),
                ));
            }
            self.skip = 0;
            total
        } else {
            // 200: the whole object from byte 0, whatever was asked; without a length its
            // size is unknown: an error, never an empty file.
            self.skip = self.next;
            header_str(resp.headers(), "content-length")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    protocol_error(
                        &endpoint,
                        "a 200 answer without Content-Length: the object's size is unknown",
                    )
                })?
        };
        let meta = meta_from_headers(
            resp.headers(),
            Some(total),
            &endpoint,
            self.client.config().etag_is_md5,
        )?;
        let expected = self
            .meta
            .as_ref()
            .map(|m| m.etag.as_str())
            .or(self.if_match.as_deref());
        if let Some(expected) = expected {
            if expected.trim_matches('"') != meta.etag.trim_matches('"') {
                return Err(StoreError {
                    kind: StoreErrorKind::PreconditionFailed,
                    message: format!(
                        "s3://{}/{} changed while it was being read (ETag {} is now {})",
                        self.bucket, self.key, expected, meta.etag
                    ),
                    code: Some("PreconditionFailed".into()),
                    request_id: Some(meta.request_id.clone()).filter(|r| !r.is_empty()),
                });
            }
        }
        if self.if_match.is_none() {
            self.if_match = Some(meta.etag.clone());
        }
        if self.end.is_none() {
            self.end = Some(total);
        }
        self.meta = Some(meta);
        self.resp = Some(resp);
        Ok(())
    }

    /// Sends the GET and waits for its headers (then `meta` answers) without reading the
    /// body. Its failure is final: the request itself was already retried.
    pub(super) async fn start(&mut self) -> Result<(), StoreError> {
        if self.resp.is_none() && self.end.is_none_or(|e| self.next < e) {
            self.open().await?;
        }
        Ok(())
    }

    /// The next chunk of the range, `None` at its end.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        loop {
            if self.end.is_some_and(|e| self.next >= e) {
                return Ok(None);
            }
            let step = match self.resp.as_mut() {
                // Opening retries as a request does: its failure is final here, or the two
                // retry loops would multiply.
                None => {
                    self.open().await?;
                    continue;
                }
                Some(resp) => match resp.chunk().await {
                    Ok(Some(mut chunk)) => {
                        if self.skip > 0 {
                            let drop = (self.skip as usize).min(chunk.len());
                            chunk = chunk.slice(drop..);
                            self.skip -= drop as u64;
                        }
                        let remaining = self.end.unwrap_or(u64::MAX) - self.next;
                        if chunk.len() as u64 > remaining {
                            chunk.truncate(remaining as usize);
                        }
                        Ok(chunk)
                    }
                    Ok(None) => Err(transport_error(
                        &self.client.endpoint_name(),
                        format!(
                            "the body ended early, at byte {} of {}",
                            self.next,
                            self.end.unwrap_or(0)
                        ),
                    )),
                    Err(e) => Err(transport_error(
                        &self.client.endpoint_name(),
                        describe_reqwest_error(&e),
                    )),
                },
            };
            match step {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    self.next += chunk.len() as u64;
                    self.failures_in_a_row = 0;
                    return Ok(Some(chunk));
                }
                Err(e) => {
                    self.resp = None;
                    self.failures_in_a_row += 1;
                    let policy = &self.client.config().retry;
                    if !e.is_retryable() || self.failures_in_a_row >= policy.max_attempts {
                        return Err(e);
                    }
                    let delay = policy.delay(self.failures_in_a_row);
                    tracing::debug!(bucket = %self.bucket, key = %self.key, at = self.next, ?delay, error = %e, "resuming S3 body");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
