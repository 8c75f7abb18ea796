//! The seam between the engine and the network: `ObjectStore` is what the download engine, the
//! cache and the filesystem need from object storage (HEAD, a ranged GET as a byte stream, one
//! listing page), written in this module's own types and error, so any store (the OSS client,
//! an in-memory double in a test) can stand behind it without faking another's errors.
//! It must not name OSS types: `oss` implements this trait, not the other way round.

pub mod memory;
pub mod s3;
pub mod time;
pub mod xml;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use rand::Rng;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

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

/// A bucket and a key (or prefix), with the scheme it was written in (`oss`, `s3`): what a
/// mount, a prefetch and their reports name, whichever store serves them. Parsing and
/// checking a URL is each store's (`oss::OssUrl`, `s3::S3Url`, which convert into this);
/// this only carries the result, so the layers above the stores need no store's types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub scheme: &'static str,
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}", self.scheme, self.bucket, self.key)
    }
}

/// What a HEAD (or a GET's headers) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// As the server sent it, quotes included.
    pub etag: String,
    /// The Last-Modified header as sent (RFC 1123).
    pub last_modified: String,
    pub crc64: Option<u64>,
    /// A whole-object checksum that parts' CRC-64s cannot be folded into (S3's CRC64NVME, or
    /// an ETag the store vouches is the MD5): checked over the whole object once it is in.
    pub digest: Option<WholeDigest>,
    pub content_type: Option<String>,
    pub request_id: String,
}

impl ObjectMeta {
    pub fn last_modified_time(&self) -> Option<SystemTime> {
        httpdate::parse_http_date(&self.last_modified).ok()
    }
}

/// A checksum of a whole object that is checked by reading the whole object back, not by
/// folding its parts' CRC-64s: what S3 offers where OSS offers CRC-64/ECMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeDigest {
    /// `x-amz-checksum-crc64nvme`: a full-object checksum (AWS adds it to new objects).
    Crc64Nvme(u64),
    /// An ETag that is the MD5 of the bytes (S3: a single-part upload without SSE-KMS/C).
    Md5([u8; 16]),
}

impl WholeDigest {
    pub fn algorithm(&self) -> &'static str {
        match self {
            WholeDigest::Crc64Nvme(_) => "CRC64NVME",
            WholeDigest::Md5(_) => "MD5",
        }
    }

    /// The value as logs and errors show it (hex).
    pub fn hex(&self) -> String {
        match self {
            WholeDigest::Crc64Nvme(v) => format!("{v:016x}"),
            WholeDigest::Md5(d) => hex::encode(d),
        }
    }

    /// The same algorithm's digest of `data`, streamed in.
    pub fn hasher(&self) -> DigestHasher {
        match self {
            WholeDigest::Crc64Nvme(_) => {
                DigestHasher::Crc64Nvme(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
            }
            WholeDigest::Md5(_) => DigestHasher::Md5(md5::Md5::default()),
        }
    }
}

/// Computes a `WholeDigest` of the same algorithm as bytes stream in.
pub enum DigestHasher {
    Crc64Nvme(crc_fast::Digest),
    Md5(md5::Md5),
}

impl DigestHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            DigestHasher::Crc64Nvme(d) => d.update(data),
            DigestHasher::Md5(d) => md5::Digest::update(d, data),
        }
    }

    pub fn finish(self) -> WholeDigest {
        match self {
            DigestHasher::Crc64Nvme(d) => WholeDigest::Crc64Nvme(d.finalize()),
            DigestHasher::Md5(d) => WholeDigest::Md5(md5::Digest::finalize(d).into()),
        }
    }
}

/// One listing request (ListObjectsV2 semantics).
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

/// What kind of failure a store reports: the engine and the filesystem decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object or bucket does not exist.
    NotFound,
    /// The object changed since its ETag was pinned (If-Match failed).
    PreconditionFailed,
    /// The credentials may not do this.
    AccessDenied,
    /// Worth another attempt: server errors, throttling, a broken connection, a short body.
    Transient,
    /// Will not change by asking again (bad request, bad configuration, not modified).
    Permanent,
}

/// A store's error: its kind, the message to show (the store's own words, which say what to
/// change), and the service's error code and request id when there are any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    pub code: Option<String>,
    pub request_id: Option<String>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            code: None,
            request_id: None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }

    pub fn is_precondition_failed(&self) -> bool {
        self.kind == StoreErrorKind::PreconditionFailed
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

pub trait ObjectStore: Send + Sync + 'static {
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<ObjectMeta, StoreError>>;

    /// The bytes `[range.start, range.end)`, pinned to `if_match` when given. The stream ends
    /// after exactly `range.end - range.start` bytes or yields an error.
    fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        if_match: Option<String>,
    ) -> ByteStream;

    /// The bytes `[range.start, range.end)` pinned to `if_match`, with the object's metadata
    /// from the same answer (a GET's headers are a HEAD's, the whole object's CRC-64
    /// included): what opening a listed file needs, in one round trip. An object that is no
    /// longer `if_match` fails with `PreconditionFailed`. A store that can answer both with
    /// one GET should (the OSS client does); this default asks twice (HEAD, then the GET
    /// pinned to the HEAD's ETag).
    fn get_range_with_meta<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        range: Range<u64>,
        if_match: String,
    ) -> BoxFut<'a, Result<(ObjectMeta, ByteStream), StoreError>> {
        Box::pin(async move {
            let meta = self.head(bucket, key).await?;
            if meta.etag.trim_matches('"') != if_match.trim_matches('"') {
                return Err(StoreError::new(
                    StoreErrorKind::PreconditionFailed,
                    format!("{key} changed: its ETag is no longer {if_match}"),
                ));
            }
            let stream = self.get_range(bucket, key, range, Some(if_match));
            Ok((meta, stream))
        })
    }

    fn list_page<'a>(
        &'a self,
        bucket: &'a str,
        req: ListRequest,
    ) -> BoxFut<'a, Result<ListPage, StoreError>>;

    /// A HEAD and, when the object is no larger than `limit`, its whole body: what opening a
    /// small file needs. A store that can answer both with one GET should (the OSS client
    /// does: a small file then costs one round trip); this default asks twice, the body pinned
    /// to the HEAD's ETag. A larger object answers with its metadata only.
    fn get_small<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        limit: u64,
    ) -> BoxFut<'a, Result<(ObjectMeta, Option<Bytes>), StoreError>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            let meta = self.head(bucket, key).await?;
            if meta.size > limit {
                return Ok((meta, None));
            }
            let mut body = Vec::with_capacity(meta.size as usize);
            let mut stream = self.get_range(bucket, key, 0..meta.size, Some(meta.etag.clone()));
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk?);
            }
            Ok((meta, Some(Bytes::from(body))))
        })
    }

    /// Where the objects come from, to tell caches of different stores apart: a cache entry
    /// is named by it, the bucket and the key, and its checkpoint holds it. It must name the
    /// kind of store as well as the endpoint wherever two kinds could share an endpoint: the
    /// OSS client's is its bare endpoint URL (as before there was any other kind, so caches
    /// written then stay valid), the S3 client's `s3+` and its endpoint.
    fn location(&self) -> String;

    /// Who this store reads as (its endpoint and its credentials' principal, never a
    /// secret): mounts of different principals on one cache must each prove access to an
    /// object before they are served it from the cache.
    fn principal(&self) -> String {
        self.location()
    }
}

/// The URL scheme of the store a location (`ObjectStore::location`, as a checkpoint records
/// it) belongs to: `s3` for the S3 client's `s3+` locations; `oss` for the bare endpoints
/// the OSS client has always recorded.
pub fn scheme_of_location(location: &str) -> &'static str {
    if location.starts_with("s3+") {
        "s3"
    } else {
        "oss"
    }
}

/// Every page of a listing, concatenated. A truncated page without a continuation token is
/// an error rather than a silently short listing.
pub async fn list_all<S: ObjectStore + ?Sized>(
    store: &S,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
) -> Result<ListPage, StoreError> {
    let mut all = ListPage::default();
    let mut token = None;
    loop {
        let page = store
            .list_page(
                bucket,
                ListRequest {
                    prefix: prefix.to_string(),
                    delimiter: delimiter.map(str::to_string),
                    max_keys: Some(1000),
                    continuation_token: token.take(),
                    start_after: None,
                },
            )
            .await?;
        all.objects.extend(page.objects);
        all.common_prefixes.extend(page.common_prefixes);
        match (page.is_truncated, page.next_continuation_token) {
            (true, Some(t)) => token = Some(t),
            (true, None) => {
                return Err(StoreError::new(
                    StoreErrorKind::Transient,
                    format!(
                        "unexpected answer from {}: listing is truncated but has no NextContinuationToken",
                        store.location()
                    ),
                ))
            }
            _ => return Ok(all),
        }
    }
}

/// What a request asked for, for metrics (any store's client reports in these words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Head,
    Get,
    List,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Head => "head",
            RequestKind::Get => "get",
            RequestKind::List => "list",
        }
    }
}

/// Sees every request attempt: its kind, the HTTP status (0 when no answer came), and
/// whether it repeated an earlier attempt.
pub trait RequestObserver: Send + Sync {
    fn request(&self, kind: RequestKind, status: u16, retry: bool);
}

impl fmt::Debug for dyn RequestObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestObserver")
    }
}
