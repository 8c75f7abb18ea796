//! The S3 read client: HeadObject, ranged GetObject as a resumable byte stream pinned by
//! `If-Match`, and ListObjectsV2, signed with SigV4 by `reqsign` (never by hand), with retries,
//! backoff and connection pooling, behind `store::ObjectStore`. It owns S3 endpoints and
//! addressing, AWS credentials (the SDKs' chain, refreshed) and the S3 wire format (headers,
//! XML errors and listings). It must not touch files other than the credential sources' (shared
//! config and token files), caches, FUSE or the OSS client (it shares only `store`'s helpers),
//! and no credential or signature ever reaches a log line or an error.

pub mod chain;
mod client;
pub mod credentials;
mod endpoint;
mod reader;
pub mod refresh;
mod wire;

use std::sync::Arc;
use std::time::Duration;

pub use chain::resolve_chain;
pub use client::S3Client;
pub use credentials::{AwsCredentials, CredentialSource, StaticCredentials};
pub(crate) use endpoint::validate_bucket;
pub use endpoint::{S3Addressing, S3Endpoint, S3Url};

use super::{RequestObserver, RetryPolicy};

/// The region when none is given: the one every S3-compatible server accepts by default.
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: S3Endpoint,
    /// The SigV4 signing region (`us-east-1`, R2's `auto`, an OSS region for OSS's S3 API).
    pub region: String,
    pub addressing: S3Addressing,
    /// `None` sends unsigned requests (public-read buckets).
    pub credentials: Option<Arc<dyn CredentialSource>>,
    /// Sees every request attempt (metrics, and throttling for adaptive downloads).
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_idle_connections: usize,
    /// Whether an ETag of 32 hex digits is the object's MD5, as on AWS, MinIO and R2 for a
    /// single-part upload (`--etag-is-not-md5` for a store where it is not): the object is
    /// then verified by it.
    pub etag_is_md5: bool,
}

impl S3Config {
    pub fn new(endpoint: S3Endpoint) -> S3Config {
        S3Config {
            endpoint,
            region: DEFAULT_REGION.to_string(),
            addressing: S3Addressing::Auto,
            credentials: None,
            observer: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_idle_connections: 64,
            etag_is_md5: true,
        }
    }
}
