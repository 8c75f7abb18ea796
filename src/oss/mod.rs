//! The OSS read client: HeadObject, ranged GetObject as a resumable byte stream, and
//! ListObjectsV2, signed with V4 (default) or V1, with retries, backoff and connection pooling.
//! It owns HTTP, endpoints, credentials and the wire format; it knows nothing about files,
//! caches or FUSE. Credentials never reach a log line or an error.

pub mod endpoint;
pub mod error;
pub mod sign;
pub mod time;
pub mod xml;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::Rng;
use reqwest::{Method, StatusCode};

pub use endpoint::{Addressing, Endpoint, OssUrl};
pub use error::{OssError, ServiceError};

/// A secret string: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SignatureVersion {
    #[default]
    V4,
    V1,
}

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included, for one request; for a body stream, attempts in a
    /// row that make no progress.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(base * 2^attempt, max)).
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        cap.mul_f64(rand::thread_rng().gen::<f64>())
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// V4 region; derived from a standard endpoint host when `None`.
    pub region: Option<String>,
    /// `None` means anonymous requests (public-read buckets).
    pub credentials: Option<Credentials>,
    pub signature_version: SignatureVersion,
    pub addressing: Addressing,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_idle_connections: usize,
}

impl ClientConfig {
    pub fn new(endpoint: Endpoint) -> ClientConfig {
        ClientConfig {
            endpoint,
            region: None,
            credentials: None,
            signature_version: SignatureVersion::V4,
            addressing: Addressing::Auto,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_idle_connections: 64,
        }
    }
}

/// What HeadObject (or a GET's headers) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// As the server sent it, quotes included.
    pub etag: String,
    /// The Last-Modified header as sent (RFC 1123).
    pub last_modified: String,
    pub crc64: Option<u64>,
    pub content_type: Option<String>,
    pub request_id: String,
}

impl ObjectMeta {
    pub fn last_modified_time(&self) -> Option<SystemTime> {
        httpdate::parse_http_date(&self.last_modified).ok()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: Option<u32>,
    pub continuation_token: Option<String>,
    pub start_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
    pub storage_class: String,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

struct Inner {
    http: reqwest::Client,
    cfg: ClientConfig,
    region: Option<(String, String)>,
}

/// The OSS client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct OssClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for OssClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OssClient({})", self.inner.cfg.endpoint)
    }
}

impl OssClient {
    pub fn new(cfg: ClientConfig) -> Result<OssClient, OssError> {
        let region = match (&cfg.region, cfg.signature_version, &cfg.credentials) {
            (Some(r), _, _) => {
                let product = endpoint::derive_region(&cfg.endpoint.host, None)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| "oss".into());
                Some((r.clone(), product))
            }
            (None, SignatureVersion::V4, Some(_)) => {
                Some(endpoint::derive_region(&cfg.endpoint.host, None).ok_or_else(|| {
                    OssError::Config(format!(
                        "cannot tell the region from endpoint {}: pass --region (e.g. cn-hangzhou) or set OSS_REGION",
                        cfg.endpoint
                    ))
                })?)
            }
            _ => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(cfg.max_idle_connections)
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("ossmount/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OssError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(OssClient {
            inner: Arc::new(Inner { http, cfg, region }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    fn endpoint_name(&self) -> String {
        self.inner.cfg.endpoint.to_string()
    }

    /// Builds, signs and sends one attempt.
    async fn send_once(
        &self,
        method: &Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(String, String)],
    ) -> Result<reqwest::Response, OssError> {
        let cfg = &self.inner.cfg;
        let mut url = endpoint::request_url(&cfg.endpoint, cfg.addressing, bucket, key);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&sign::wire_query(query));
        }
        let now = time::unix_now();
        let mut all_headers: Vec<(String, String)> = headers.to_vec();
        match (&cfg.credentials, cfg.signature_version) {
            (None, _) => {}
            (Some(c), SignatureVersion::V4) => {
                let (region, product) = self.inner.region.as_ref().expect("region set for V4");
                let signed = sign::sign_v4(
                    &c.access_key_id,
                    c.access_key_secret.expose(),
                    c.security_token.as_ref().map(|t| t.expose()),
                    &sign::V4Request {
                        method: method.as_str(),
                        bucket,
                        key,
                        query,
                        headers,
                        additional_headers_requested: &[],
                        region,
                        product,
                        time: now,
                    },
                );
                all_headers.extend(signed.added_headers);
                all_headers.push(("Date".into(), time::http_date(now)));
                all_headers.push(("Authorization".into(), signed.authorization));
            }
            (Some(c), SignatureVersion::V1) => {
                all_headers.push(("Date".into(), time::http_date(now)));
                if let Some(t) = &c.security_token {
                    all_headers.push(("x-oss-security-token".into(), t.expose().to_string()));
                }
                let sts =
                    sign::v1_string_to_sign(method.as_str(), &all_headers, bucket, key, query);
                let sig = sign::v1_signature(c.access_key_secret.expose(), &sts);
                all_headers.push((
                    "Authorization".into(),
                    sign::v1_authorization(&c.access_key_id, &sig),
                ));
            }
        }
        let mut rb = self.inner.http.request(method.clone(), &url);
        for (k, v) in &all_headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        rb.send().await.map_err(|e| OssError::Transport {
            endpoint: self.endpoint_name(),
            detail: describe_reqwest_error(&e),
        })
    }

    /// Sends with retries; returns a success (2xx or 304) response or the final error.
    async fn send(
        &self,
        method: Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(String, String)],
    ) -> Result<reqwest::Response, OssError> {
        let policy = &self.inner.cfg.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.send_once(&method, bucket, key, query, headers).await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                    return Err(OssError::NotModified)
                }
                Ok(resp) => error_from_response(resp, method == Method::HEAD).await,
                Err(e) => e,
            };
            if !err.is_retryable() || attempt >= policy.max_attempts {
                tracing::debug!(%method, bucket, key, attempt, error = %err, "request failed");
                return Err(err);
            }
            let delay = policy.delay(attempt);
            tracing::debug!(%method, bucket, key, attempt, ?delay, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OssError> {
        let resp = self
            .send(Method::HEAD, Some(bucket), Some(key), &[], &[])
            .await?;
        meta_from_headers(resp.headers(), None, &self.endpoint_name())
    }

    /// Opens a ranged GET of `[start, end)` (or the whole object when `range` is `None`) as a
    /// stream that resumes by itself after resets and short bodies, pinned to one ETag.
    pub fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<std::ops::Range<u64>>,
        if_match: Option<String>,
    ) -> RangeReader {
        RangeReader {
            client: self.clone(),
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

    pub async fn list_objects_v2(
        &self,
        bucket: &str,
        req: &ListRequest,
    ) -> Result<ListPage, OssError> {
        let mut query: Vec<(String, String)> = vec![
            ("list-type".into(), "2".into()),
            ("encoding-type".into(), "url".into()),
            ("prefix".into(), req.prefix.clone()),
        ];
        if let Some(d) = &req.delimiter {
            query.push(("delimiter".into(), d.clone()));
        }
        if let Some(m) = req.max_keys {
            query.push(("max-keys".into(), m.to_string()));
        }
        if let Some(t) = &req.continuation_token {
            query.push(("continuation-token".into(), t.clone()));
        }
        if let Some(s) = &req.start_after {
            query.push(("start-after".into(), s.clone()));
        }
        let resp = self
            .send(Method::GET, Some(bucket), None, &query, &[])
            .await?;
        let endpoint = self.endpoint_name();
        let body = resp.bytes().await.map_err(|e| OssError::Transport {
            endpoint: endpoint.clone(),
            detail: describe_reqwest_error(&e),
        })?;
        parse_list_page(&body).map_err(|detail| OssError::Protocol { endpoint, detail })
    }

    /// Every page of a listing, concatenated (see [`crate::store::list_all`]).
    pub async fn list_all(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<ListPage, OssError> {
        crate::store::list_all(self, bucket, prefix, delimiter).await
    }
}

fn describe_reqwest_error(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL, never headers; walk the sources for the cause.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn header_str(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn meta_from_headers(
    h: &reqwest::header::HeaderMap,
    size_override: Option<u64>,
    endpoint: &str,
) -> Result<ObjectMeta, OssError> {
    let missing = |what: &str| OssError::Protocol {
        endpoint: endpoint.to_string(),
        detail: format!("the answer has no {what} header"),
    };
    let size = match size_override {
        Some(s) => s,
        None => header_str(h, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| missing("Content-Length"))?,
    };
    Ok(ObjectMeta {
        size,
        etag: header_str(h, "etag").ok_or_else(|| missing("ETag"))?,
        last_modified: header_str(h, "last-modified").unwrap_or_default(),
        crc64: header_str(h, "x-oss-hash-crc64ecma").and_then(|v| v.parse().ok()),
        content_type: header_str(h, "content-type"),
        request_id: header_str(h, "x-oss-request-id").unwrap_or_default(),
    })
}

/// Builds the typed error from a failed response: the XML body, or for bodiless answers
/// (HEAD) the `x-oss-err` header, or at least the status and request id.
async fn error_from_response(resp: reqwest::Response, is_head: bool) -> OssError {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut err = ServiceError {
        status,
        request_id: header_str(&headers, "x-oss-request-id").unwrap_or_default(),
        ec: header_str(&headers, "x-oss-ec").unwrap_or_default(),
        ..Default::default()
    };
    let body = if is_head {
        Bytes::new()
    } else {
        resp.bytes().await.unwrap_or_default()
    };
    let body = if body.is_empty() {
        use base64::Engine;
        header_str(&headers, "x-oss-err")
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(Bytes::from)
            .unwrap_or_default()
    } else {
        body
    };
    match xml::parse(&body) {
        Ok(root) if root.name == "Error" => {
            let t = |n: &str| root.child_text(n).unwrap_or("").to_string();
            err.code = t("Code");
            err.message = t("Message");
            if err.request_id.is_empty() {
                err.request_id = t("RequestId");
            }
            err.host_id = t("HostId");
            if err.ec.is_empty() {
                err.ec = t("EC");
            }
            err.string_to_sign = root.child_text("StringToSign").map(str::to_string);
        }
        _ => {
            let (code, message) = match status {
                404 => (
                    "NoSuchKey",
                    "The specified key does not exist (HEAD answers carry no body).",
                ),
                403 => (
                    "AccessDenied",
                    "Access denied (HEAD answers carry no body).",
                ),
                412 => (
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold.",
                ),
                416 => ("InvalidRange", "The requested range is not satisfiable."),
                _ if body.is_empty() => ("", "no error document in the answer"),
                _ => ("BadErrorResponse", "the error document could not be parsed"),
            };
            err.code = if code.is_empty() {
                format!("HTTP{status}")
            } else {
                code.to_string()
            };
            err.message = message.to_string();
        }
    }
    OssError::Service(Box::new(err))
}

fn parse_list_page(body: &[u8]) -> Result<ListPage, String> {
    let root = xml::parse(body)?;
    if root.name != "ListBucketResult" {
        return Err(format!("expected ListBucketResult, got {}", root.name));
    }
    let encoded = root.child_text("EncodingType") == Some("url");
    let decode = |s: &str| -> Result<String, String> {
        if encoded {
            sign::percent_decode(s).ok_or_else(|| format!("bad percent-encoding in {s:?}"))
        } else {
            Ok(s.to_string())
        }
    };
    let mut page = ListPage {
        is_truncated: root.child_text("IsTruncated") == Some("true"),
        ..Default::default()
    };
    if let Some(t) = root.child_text("NextContinuationToken") {
        page.next_continuation_token = Some(decode(t)?);
    }
    for c in root.children_named("Contents") {
        let lm = c.child_text("LastModified").unwrap_or("");
        page.objects.push(ListedObject {
            key: decode(c.child_text("Key").ok_or("Contents without Key")?)?,
            size: c
                .child_text("Size")
                .and_then(|s| s.parse().ok())
                .ok_or("Contents without a numeric Size")?,
            etag: c.child_text("ETag").unwrap_or("").to_string(),
            last_modified: time::parse_iso8601_extended(lm)
                .ok_or_else(|| format!("bad LastModified {lm:?}"))?,
            storage_class: c.child_text("StorageClass").unwrap_or("").to_string(),
        });
    }
    for p in root.children_named("CommonPrefixes") {
        page.common_prefixes.push(decode(
            p.child_text("Prefix")
                .ok_or("CommonPrefixes without Prefix")?,
        )?);
    }
    Ok(page)
}

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
            // 200: the whole object from byte 0, whatever was asked.
            self.skip = self.next;
            header_str(resp.headers(), "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let meta = meta_from_headers(resp.headers(), Some(total), &endpoint)?;
        if let Some(first) = &self.meta {
            if first.etag != meta.etag {
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
                    let policy = &self.client.inner.cfg.retry;
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

/// `bytes a-b/total` → (a, total).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _b) = range.split_once('-')?;
    Some((a.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            access_key_id: "ak".into(),
            access_key_secret: Secret::new("topsecret"),
            security_token: Some(Secret::new("tok")),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("topsecret") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn list_page_decodes_url_encoded_keys() {
        let body = br#"<ListBucketResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>a%2Bb%3D</NextContinuationToken><Contents><Key>dir%2Fa%20b%2Bc</Key><LastModified>2024-03-01T10:00:00.000Z</LastModified><ETag>"E"</ETag><Size>5</Size></Contents><CommonPrefixes><Prefix>dir%2Fsub%2F</Prefix></CommonPrefixes></ListBucketResult>"#;
        let p = parse_list_page(body).unwrap();
        assert_eq!(p.objects[0].key, "dir/a b+c");
        assert_eq!(p.common_prefixes, vec!["dir/sub/"]);
        assert_eq!(p.next_continuation_token.as_deref(), Some("a+b="));
        assert!(p.is_truncated);
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
