//! The S3 client proper: building each request for its addressing style, signing it with
//! SigV4 (`reqsign`'s signer, `UNSIGNED-PAYLOAD`: every request here is a bodiless GET or
//! HEAD), sending it with retries and full-jitter backoff, and the three calls the store needs
//! (HeadObject, ranged GetObject, ListObjectsV2), with `ObjectStore` on top. Must not know
//! about files, caches or FUSE; never logs a credential or a signature.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use reqwest::Method;

use super::credentials::AwsCredentials;
use super::reader::RangeReader;
use super::wire::{
    describe_reqwest_error, meta_from_headers, parse_list_page, protocol_error, service_error,
    transport_error,
};
use super::S3Config;
use crate::store::{
    BoxFut, ByteStream, ListPage, ListRequest, ObjectMeta, ObjectStore, RequestKind, StoreError,
    StoreErrorKind,
};

struct Inner {
    /// The connection pool.
    http: reqwest::Client,
    cfg: S3Config,
    signer: reqsign::AwsV4Signer,
}

/// The S3 client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Client({})", self.inner.cfg.endpoint)
    }
}

impl S3Client {
    pub fn new(cfg: S3Config) -> Result<S3Client, StoreError> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(cfg.max_idle_connections)
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("ossmount/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Permanent,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        let signer = reqsign::AwsV4Signer::new("s3", &cfg.region);
        Ok(S3Client {
            inner: Arc::new(Inner { http, cfg, signer }),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    pub(super) fn endpoint_name(&self) -> String {
        self.inner.cfg.endpoint.to_string()
    }

    /// Builds, signs (unless anonymous) and sends one attempt.
    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        credentials: Option<&AwsCredentials>,
    ) -> Result<reqwest::Response, StoreError> {
        let endpoint = self.endpoint_name();
        let mut builder = self.inner.http.request(method.clone(), url);
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let mut request = builder
            .build()
            .map_err(|e| transport_error(&endpoint, describe_reqwest_error(&e)))?;
        if let Some(c) = credentials {
            let signing = reqsign::AwsCredential {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.expose().to_string(),
                session_token: c.session_token.as_ref().map(|t| t.expose().to_string()),
                expires_in: None,
            };
            // The signer's errors name what was malformed, never the keys.
            self.inner
                .signer
                .sign(&mut request, &signing)
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Permanent,
                        format!("cannot sign the request to {endpoint}: {e}"),
                    )
                })?;
        }
        self.inner
            .http
            .execute(request)
            .await
            .map_err(|e| transport_error(&endpoint, describe_reqwest_error(&e)))
    }

    /// Sends with retries; returns a success (2xx) answer or the final error.
    pub(super) async fn send(
        &self,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, String)],
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response, StoreError> {
        let cfg = &self.inner.cfg;
        let url = cfg.endpoint.request_url(cfg.addressing, bucket, key, query);
        let kind = match (&method, key) {
            (&Method::HEAD, _) => RequestKind::Head,
            (_, Some(_)) => RequestKind::Get,
            (_, None) => RequestKind::List,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let credentials = match &cfg.credentials {
                Some(source) => source.credentials().await.map(Some),
                None => Ok(None),
            };
            let sent = match credentials {
                Ok(c) => self.send_once(&method, &url, headers, c.as_ref()).await,
                Err(e) => Err(e),
            };
            if let Some(o) = &cfg.observer {
                let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                o.request(kind, status, attempt > 1);
            }
            let err = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let body = if method == Method::HEAD {
                        bytes::Bytes::new()
                    } else {
                        resp.bytes().await.unwrap_or_default()
                    };
                    service_error(status, &headers, &body)
                }
                Err(e) => e,
            };
            if !err.is_retryable() || attempt >= cfg.retry.max_attempts {
                tracing::debug!(%method, bucket, key, attempt, error = %err, "S3 request failed");
                return Err(err);
            }
            let delay = cfg.retry.delay(attempt);
            tracing::debug!(%method, bucket, key, attempt, ?delay, error = %err, "retrying S3 request");
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        // The full-object checksum (CRC64NVME) comes back only when asked for.
        let checksum_mode = [("x-amz-checksum-mode", "ENABLED".to_string())];
        match self
            .send(Method::HEAD, bucket, Some(key), &[], &checksum_mode)
            .await
        {
            Ok(resp) => meta_from_headers(
                resp.headers(),
                None,
                &self.endpoint_name(),
                self.inner.cfg.etag_is_md5,
            ),
            Err(refused)
                if matches!(
                    refused.kind,
                    StoreErrorKind::AccessDenied | StoreErrorKind::Permanent
                ) =>
            {
                // A HEAD answer has no body, so a refusal comes without its reason: one GET of
                // the first byte fetches the error document that names it
                // (SignatureDoesNotMatch, InvalidAccessKeyId, ...). Anything else it answers
                // leaves the HEAD's error as it was.
                let range = [("range", "bytes=0-0".to_string())];
                match self.send(Method::GET, bucket, Some(key), &[], &range).await {
                    Err(with_reason) if with_reason.kind == refused.kind => Err(with_reason),
                    _ => Err(refused),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn list_objects_v2(
        &self,
        bucket: &str,
        req: &ListRequest,
    ) -> Result<ListPage, StoreError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        // S3 wants the query sorted only in the signature; on the wire any order goes.
        if let Some(t) = &req.continuation_token {
            query.push(("continuation-token", t.clone()));
        }
        if let Some(d) = &req.delimiter {
            query.push(("delimiter", d.clone()));
        }
        query.push(("encoding-type", "url".into()));
        query.push(("list-type", "2".into()));
        if let Some(m) = req.max_keys {
            query.push(("max-keys", m.to_string()));
        }
        query.push(("prefix", req.prefix.clone()));
        if let Some(s) = &req.start_after {
            query.push(("start-after", s.clone()));
        }
        let resp = self.send(Method::GET, bucket, None, &query, &[]).await?;
        let endpoint = self.endpoint_name();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&endpoint, describe_reqwest_error(&e)))?;
        parse_list_page(&body).map_err(|detail| protocol_error(&endpoint, detail))
    }

    fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<String>,
    ) -> RangeReader {
        RangeReader::new(self.clone(), bucket, key, range, if_match)
    }
}

/// A range reader as the store's byte stream.
fn chunks(reader: RangeReader) -> ByteStream {
    Box::pin(futures_util::stream::unfold(reader, |mut r| async move {
        match r.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), r)),
            Ok(None) => None,
            // After an error the reader is spent: end the stream behind it.
            Err(e) => Some((Err(e), r.finished())),
        }
    }))
}

impl ObjectStore for S3Client {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, StoreError>> {
        Box::pin(self.head_object(bucket, key))
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

    /// One ranged GET: its headers are the HEAD, its body the range.
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
        Box::pin(async move { self.list_objects_v2(bucket, &req).await })
    }

    /// `s3+` and the endpoint: the OSS client's location is its bare endpoint, and OSS
    /// answers S3 requests too, so without the kind one endpoint's object read through both
    /// APIs would be one cache entry (its checkpoint, ETag and checksums are not the same
    /// between them).
    fn location(&self) -> String {
        format!("s3+{}", self.endpoint_name())
    }

    fn principal(&self) -> String {
        let who = match &self.inner.cfg.credentials {
            Some(source) => source.principal(),
            None => "anonymous".into(),
        };
        format!("{} as {who}", self.location())
    }
}
