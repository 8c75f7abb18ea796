//! Where S3 requests go: the endpoint (AWS's regional one by default, any S3-compatible server
//! by URL), the addressing style (virtual-hosted for named hosts, path style for IPs and
//! localhost or on request), and `s3://bucket/key` URLs.

use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What S3 leaves unescaped in a path: the unreserved characters and the separator.
const PATH_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// What S3 leaves unescaped in a query value: the unreserved characters only.
const QUERY_ESCAPED: &AsciiSet = &PATH_ESCAPED.add(b'/');

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    scheme: String,
    /// Lower-cased, without port; IPv6 literals keep their brackets.
    host: String,
    port: Option<u16>,
}

impl S3Endpoint {
    /// Accepts `host`, `host:port`, `http://host[:port]` or `https://host[:port]` (default
    /// https), as `AWS_ENDPOINT_URL` is written.
    pub fn parse(s: &str) -> Result<S3Endpoint, String> {
        let trimmed = s.trim().trim_end_matches('/');
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("https://{trimmed}")
        };
        let bad = || {
            format!(
                "endpoint {s:?} is not an S3 endpoint: give e.g. s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000"
            )
        };
        let url = reqwest::Url::parse(&with_scheme).map_err(|_| bad())?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "endpoint {s:?} has scheme {:?}; use http:// or https://",
                url.scheme()
            ));
        }
        if url.path() != "/"
            || url.query().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(bad());
        }
        let host = url.host_str().ok_or_else(bad)?.to_ascii_lowercase();
        Ok(S3Endpoint {
            scheme: url.scheme().to_string(),
            host,
            port: url.port(),
        })
    }

    /// AWS's own endpoint for `region`.
    pub fn aws(region: &str) -> S3Endpoint {
        S3Endpoint {
            scheme: "https".into(),
            host: format!("s3.{region}.amazonaws.com"),
            port: None,
        }
    }

    /// IP literals and localhost cannot carry a bucket sub-domain: the SDKs use path style.
    pub fn is_ip_or_localhost(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok()
    }

    fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The request URL for `bucket` (and `key`, for object requests), with `query` (name,
    /// value pairs, escaped here).
    pub(super) fn request_url(
        &self,
        addressing: S3Addressing,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, String)],
    ) -> String {
        let key = utf8_percent_encode(key.unwrap_or(""), PATH_ESCAPED);
        // A dotted bucket name as a sub-domain would not match the endpoint's wildcard TLS
        // certificate: the AWS SDKs send those path style unless told otherwise.
        let addressing = match addressing {
            S3Addressing::Auto if bucket.contains('.') => S3Addressing::Path,
            other => other,
        };
        let mut url = match addressing.resolve(self) {
            S3Addressing::Path => {
                format!("{}://{}/{bucket}/{key}", self.scheme, self.authority())
            }
            _ => format!("{}://{bucket}.{}/{key}", self.scheme, self.authority()),
        };
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(value, QUERY_ESCAPED));
        }
        url
    }
}

impl fmt::Display for S3Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Addressing {
    /// Virtual-hosted for named hosts, path style for IPs, localhost and dotted bucket names.
    #[default]
    Auto,
    /// `https://endpoint/bucket/key` (MinIO and most self-hosted servers).
    Path,
    /// `https://bucket.endpoint/key` (AWS, R2, OSS's S3 endpoint).
    Virtual,
}

impl S3Addressing {
    pub fn resolve(self, endpoint: &S3Endpoint) -> S3Addressing {
        match self {
            S3Addressing::Auto if endpoint.is_ip_or_localhost() => S3Addressing::Path,
            S3Addressing::Auto => S3Addressing::Virtual,
            other => other,
        }
    }
}

/// `s3://bucket/key` or `s3://bucket/prefix/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    pub fn parse(s: &str) -> Result<S3Url, String> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            format!("{s:?} is not an S3 URL: write it as s3://bucket/key or s3://bucket/prefix/")
        })?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket).map_err(|e| format!("{s:?}: {e}"))?;
        if key.len() > 1024 {
            return Err(format!("{s:?}: object keys are at most 1024 bytes"));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl From<S3Url> for crate::store::StoreUrl {
    fn from(u: S3Url) -> Self {
        crate::store::StoreUrl {
            scheme: "s3",
            bucket: u.bucket,
            key: u.key,
        }
    }
}

/// S3's bucket naming rules (general purpose buckets): 3-63 characters of a-z, 0-9, '.' and
/// '-', starting and ending with a letter or digit.
pub(crate) fn validate_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ends_ok = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !ends_ok(bucket.bytes().next())
        || !ends_ok(bucket.bytes().last())
    {
        return Err(format!(
            "bucket name {bucket:?} is invalid: 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_hosts_are_virtual_hosted_and_ips_path_style() {
        let aws = S3Endpoint::aws("eu-west-1");
        assert_eq!(
            aws.request_url(S3Addressing::Auto, "data", Some("a b/c+d.bin"), &[]),
            "https://data.s3.eu-west-1.amazonaws.com/a%20b/c%2Bd.bin"
        );
        let local = S3Endpoint::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(
            local.request_url(S3Addressing::Auto, "data", Some("k"), &[]),
            "http://127.0.0.1:9000/data/k"
        );
        assert_eq!(
            aws.request_url(S3Addressing::Auto, "my.data", Some("k"), &[]),
            "https://s3.eu-west-1.amazonaws.com/my.data/k"
        );
        assert_eq!(
            aws.request_url(S3Addressing::Virtual, "my.data", Some("k"), &[]),
            "https://my.data.s3.eu-west-1.amazonaws.com/k"
        );
        let minio = S3Endpoint::parse("minio.internal:9000").unwrap();
        assert_eq!(
            minio.request_url(S3Addressing::Path, "data", None, &[]),
            "https://minio.internal:9000/data/"
        );
    }

    #[test]
    fn query_values_are_escaped_whole() {
        let e = S3Endpoint::parse("http://localhost:1").unwrap();
        let url = e.request_url(
            S3Addressing::Auto,
            "b",
            None,
            &[
                ("prefix", "dir/a b".into()),
                ("continuation-token", "x+y=".into()),
            ],
        );
        assert_eq!(
            url,
            "http://localhost:1/b/?prefix=dir%2Fa%20b&continuation-token=x%2By%3D"
        );
    }

    #[test]
    fn endpoints_and_urls_are_checked() {
        assert!(S3Endpoint::parse("ftp://x").is_err());
        assert!(S3Endpoint::parse("http://x/y").is_err());
        assert!(S3Endpoint::parse("http://user@x").is_err());
        assert_eq!(
            S3Endpoint::parse("http://[::1]:9000").unwrap().to_string(),
            "http://[::1]:9000"
        );
        assert!(S3Endpoint::parse("http://[::1]:9000")
            .unwrap()
            .is_ip_or_localhost());
        let u = S3Url::parse("s3://my.bucket/dir/key").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("my.bucket", "dir/key")
        );
        assert_eq!(S3Url::parse("s3://bucket").unwrap().key, "");
        assert!(S3Url::parse("oss://bucket/k").is_err());
        assert!(S3Url::parse("s3://Bucket/k")
            .unwrap_err()
            .contains("invalid"));
        assert!(S3Url::parse("s3://-bucket/k").is_err());
    }
}
