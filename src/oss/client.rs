//! The OSS client proper: building, signing (V4 or V1) and sending requests with retries and
//! full-jitter backoff, and the three calls the rest needs (HeadObject, ranged GetObject,
//! ListObjectsV2). Must not know about files, caches or FUSE; never logs a credential.

use std::fmt;
use std::sync::Arc;

use reqwest::{Method, StatusCode};

use super::reader::RangeReader;
use super::wire::{
    describe_reqwest_error, error_from_response, meta_from_headers, parse_list_page,
};
use super::{
    endpoint, sign, time, ClientConfig, Credentials, ListPage, ListRequest, ObjectMeta, OssError,
    RequestKind, SignatureVersion,
};

/// Requests sent again with rotated keys, at most, for one request.
const MAX_KEY_ROTATIONS: u32 = 2;

struct Inner {
    /// The connection pool.
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
        let signed = cfg.credentials.is_some() || cfg.credentials_provider.is_some();
        let region = match (&cfg.region, cfg.signature_version, signed) {
            (Some(r), _, _) => {
                let product = endpoint::derive_region(&cfg.endpoint.host, None)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| "oss".into());
                Some((r.clone(), product))
            }
            (None, SignatureVersion::V4, true) => {
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

    pub(super) fn endpoint_name(&self) -> String {
        self.inner.cfg.endpoint.to_string()
    }

    /// Builds, signs (with `creds`, unless anonymous) and sends one attempt.
    async fn send_once(
        &self,
        method: &Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(String, String)],
        creds: Option<&Credentials>,
    ) -> Result<reqwest::Response, OssError> {
        let cfg = &self.inner.cfg;
        let mut url = endpoint::request_url(&cfg.endpoint, cfg.addressing, bucket, key);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&sign::wire_query(query));
        }
        let now = time::unix_now();
        let mut all_headers: Vec<(String, String)> = headers.to_vec();
        match (creds, cfg.signature_version) {
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
    pub(super) async fn send(
        &self,
        method: Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(String, String)],
    ) -> Result<reqwest::Response, OssError> {
        let policy = &self.inner.cfg.retry;
        let mut attempt = 0;
        let kind = match (&method, key) {
            (&Method::HEAD, _) => RequestKind::Head,
            (_, Some(_)) => RequestKind::Get,
            (_, None) => RequestKind::List,
        };
        // Sends again at once, beside the attempts, when the service refused keys that
        // have since been rotated (bounded: a source that keeps finding other keys the
        // service refuses too gives up after this many).
        let mut key_rotations = 0;
        loop {
            attempt += 1;
            let cfg = &self.inner.cfg;
            let creds = match &cfg.credentials_provider {
                Some(p) => p.credentials().await.map(Some),
                None => Ok(cfg.credentials.clone()),
            };
            let (sent, creds) = match creds {
                Ok(creds) => (
                    self.send_once(&method, bucket, key, query, headers, creds.as_ref())
                        .await,
                    creds,
                ),
                Err(e) => (Err(e), None),
            };
            if let Some(o) = &self.inner.cfg.observer {
                let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                o.request(kind, status, attempt > 1);
            }
            let err = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                    return Err(OssError::NotModified)
                }
                Ok(resp) => error_from_response(resp, method == Method::HEAD).await,
                Err(e) => e,
            };
            if let (Some(provider), Some(used)) = (&cfg.credentials_provider, &creds) {
                if err.is_refused_keys()
                    && key_rotations < MAX_KEY_ROTATIONS
                    && provider.refused(used).await
                {
                    key_rotations += 1;
                    attempt -= 1;
                    tracing::info!(%method, bucket, key, code = err.code(), "the service refused keys that have been rotated since: sending again with the new ones");
                    continue;
                }
            }
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
        RangeReader::new(self.clone(), bucket, key, range, if_match)
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
    ) -> Result<ListPage, crate::store::StoreError> {
        crate::store::list_all(self, bucket, prefix, delimiter).await
    }
}
