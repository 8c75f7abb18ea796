//! A ranged GET as a stream of chunks that resumes itself after resets and short bodies, pinned
//! by `If-Match` to the ETag it first saw. Must not write anything anywhere: the caller owns the
//! bytes.

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use super::wire::{describe_reqwest_error, header_str, meta_from_headers, parse_content_range};
use super::{ObjectMeta, OssClient, OssError, ServiceError};

/// A ranged GET as a stream of chunks. After a reset or a short body it issues a new GET for
/// the bytes still missing, pinned with `If-Match` to the ETag it first saw, so a resumed
/// stream can never splice two versions of an object.
pub struct RangeReader {
    client: OssClient,
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
    retries: u32,
}

impl RangeReader {
    pub(super) fn new(
        client: OssClient,
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
            retries: 0,
        }
    }

    /// The object's metadata from the first answer (after the first chunk or `open`).
    pub fn meta(&self) -> Option<&ObjectMeta> {
        self.meta.as_ref()
    }

    /// How many times the stream had to be reopened.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Marks the reader as done, so further `next_chunk` calls return `None`.
    pub fn finished(mut self) -> Self {
        self.end = Some(self.next);
        self.resp = None;
        self
    }

    async fn open(&mut self) -> Result<(), OssError> {
        let mut headers = vec![("x-oss-range-behavior".to_string(), "standard".to_string())];
        let range_end = self
            .end
            .map(|e| e - 1)
            .map(|e| e.to_string())
            .unwrap_or_default();
        if self.next > 0 || self.end.is_some() {
            headers.push(("Range".into(), format!("bytes={}-{}", self.next, range_end)));
        }
        if let Some(tag) = &self.if_match {
            headers.push(("If-Match".into(), tag.clone()));
        }
        let resp = self
            .client
            .send(
                Method::GET,
                Some(&self.bucket),
                Some(&self.key),
                &[],
                &headers,
            )
            .await?;
        let endpoint = self.client.endpoint_name();
        let status = resp.status();
        let total = if status == StatusCode::PARTIAL_CONTENT {
            let cr = header_str(resp.headers(), "content-range").unwrap_or_default();
            let (first, total) = parse_content_range(&cr).ok_or_else(|| OssError::Protocol {
                endpoint: endpoint.clone(),
                detail: format!("bad Content-Range {cr:?}"),
            })?;
            if first != self.next {
                return Err(OssError::Protocol {
                    endpoint,
                    detail: format!("asked for bytes from {} but got from {first}", self.next),
                });
            }
            self.skip = 0;
            total
        } else {
            // 200: the whole object from byte 0, whatever was asked. Without a length its
            // size is unknown: an error, never an empty file.
            self.skip = self.next;
            header_str(resp.headers(), "content-length")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| OssError::Protocol {
                    endpoint: endpoint.clone(),
                    detail: "a 200 answer without Content-Length: the object's size is unknown"
                        .into(),
                })?
        };
        let meta = meta_from_headers(resp.headers(), Some(total), &endpoint)?;
        // The version answered must be the one asked for: a server (or a proxy) that ignored
        // If-Match must not mix versions, on the first answer as on later ones.
        let expected = self
            .meta
            .as_ref()
            .map(|m| m.etag.as_str())
            .or(self.if_match.as_deref());
        if let Some(expected) = expected {
            // Quoted or not: the SDKs send If-Match unquoted.
            if expected.trim_matches('"') != meta.etag.trim_matches('"') {
                return Err(OssError::Service(Box::new(ServiceError {
                    status: 412,
                    code: "PreconditionFailed".into(),
                    message: "the object changed while it was being read".into(),
                    request_id: meta.request_id.clone(),
                    ..Default::default()
                })));
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

    /// Sends the GET and waits for its headers (then `meta` answers), without reading the
    /// body; `next_chunk` reads it. Like the first `next_chunk`, its failure is final (the
    /// request itself was already retried).
    pub async fn start(&mut self) -> Result<(), OssError> {
        if self.resp.is_none() && self.end.is_none_or(|e| self.next < e) {
            self.open().await?;
        }
        Ok(())
    }

    /// The next chunk of the range, `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, OssError> {
        loop {
            if self.end.is_some_and(|e| self.next >= e) {
                return Ok(None);
            }
            let step = match self.resp.as_mut() {
                // Opening already retried as a request does: its failure is final here, or
                // the two retry loops would multiply.
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
                    Ok(None) => Err(OssError::Transport {
                        endpoint: self.client.endpoint_name(),
                        detail: format!(
                            "the body ended early, at byte {} of {}",
                            self.next,
                            self.end.unwrap_or(0)
                        ),
                    }),
                    Err(e) => Err(OssError::Transport {
                        endpoint: self.client.endpoint_name(),
                        detail: describe_reqwest_error(&e),
                    }),
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
                    self.retries += 1;
                    let delay = policy.delay(self.failures_in_a_row);
                    tracing::debug!(bucket = %self.bucket, key = %self.key, at = self.next, ?delay, error = %e, "resuming body");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
