//! The OSS read client: HeadObject, ranged GetObject as a resumable byte stream, and
//! ListObjectsV2, signed with V4 (default) or V1, with retries, backoff and connection pooling.
//! It owns HTTP, endpoints, credentials and the wire format; it knows nothing about files,
//! caches or FUSE. Credentials never reach a log line or an error.

pub mod endpoint;
pub mod error;
pub mod sign;
// Shared with the S3 client, so they live below both, in `store`.
pub use crate::store::{time, xml};

use std::sync::Arc;
use std::time::Duration;

mod client;
pub mod credentials;
mod reader;
mod store_impl;
mod wire;

pub use crate::store::{ListPage, ListRequest, ListedObject, ObjectMeta};
pub use client::OssClient;
pub use endpoint::{Addressing, Endpoint, OssUrl};
pub use error::{OssError, ServiceError};
pub use reader::RangeReader;

pub use crate::store::Secret;

#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SignatureVersion {
    #[default]
    V4,
    V1,
}

impl SignatureVersion {
    /// The spellings `FromStr` accepts, for command-line help.
    pub const NAMES: [&'static str; 2] = ["v4", "v1"];
}

impl std::str::FromStr for SignatureVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<SignatureVersion, String> {
        match s.to_ascii_lowercase().as_str() {
            "v4" => Ok(SignatureVersion::V4),
            "v1" => Ok(SignatureVersion::V1),
            _ => Err(format!("{s:?} is not a signature version: use v4 or v1")),
        }
    }
}

// What the client reports of each request: the store's words, so the layers above never
// name an OSS type to observe a request.
pub use crate::store::{RequestKind, RequestObserver};

pub use crate::store::RetryPolicy;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// V4 region; derived from a standard endpoint host when `None`.
    pub region: Option<String>,
    /// `None` means anonymous requests (public-read buckets), unless a provider is set.
    pub credentials: Option<Credentials>,
    /// Where to get the credentials for each request (temporary ones are refreshed); takes
    /// precedence over `credentials`.
    pub credentials_provider: Option<credentials::SharedProvider>,
    /// Sees every request attempt (metrics).
    pub observer: Option<Arc<dyn RequestObserver>>,
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
            credentials_provider: None,
            observer: None,
            signature_version: SignatureVersion::V4,
            addressing: Addressing::Auto,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_idle_connections: 64,
        }
    }
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
}
