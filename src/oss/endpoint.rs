//! Where requests go: endpoint parsing, addressing style (virtual-hosted, path, CNAME),
//! region derivation from standard OSS host names, and `oss://bucket/key` URLs.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    /// Lower-cased host without port.
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    /// Accepts `host`, `host:port`, `http://host[:port]` or `https://host[:port]` (default https).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim().trim_end_matches('/');
        let (scheme, rest) = match s.split_once("://") {
            Some((sch, rest)) => (sch.to_ascii_lowercase(), rest),
            None => ("https".to_string(), s),
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "endpoint {s:?} has scheme {scheme:?}; use http:// or https://"
            ));
        }
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "endpoint {s:?} is not a host name: give e.g. oss-cn-hangzhou.aliyuncs.com or http://127.0.0.1:9000"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("endpoint {s:?} has a bad port {p:?}"))?;
                (h.to_string(), Some(port))
            }
            _ => (rest.to_string(), None),
        };
        Ok(Endpoint {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// IP literals and localhost cannot carry a bucket sub-domain: the SDKs use path style.
    pub fn is_ip_or_localhost(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok()
    }

    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Addressing {
    /// Virtual-hosted for OSS host names, path style for IPs and localhost.
    #[default]
    Auto,
    /// `https://endpoint/bucket/key` (emulators and proxies).
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
    /// The endpoint is a custom domain bound to the bucket: `https://domain/key`.
    Cname,
}

impl Addressing {
    /// The spellings `FromStr` accepts, for command-line help.
    pub const NAMES: [&'static str; 4] = ["auto", "path", "virtual", "cname"];

    pub fn resolve(self, endpoint: &Endpoint) -> Addressing {
        match self {
            Addressing::Auto if endpoint.is_ip_or_localhost() => Addressing::Path,
            Addressing::Auto => Addressing::Virtual,
            other => other,
        }
    }
}

impl std::str::FromStr for Addressing {
    type Err = String;
    fn from_str(s: &str) -> Result<Addressing, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Addressing::Auto,
            "path" => Addressing::Path,
            "virtual" => Addressing::Virtual,
            "cname" => Addressing::Cname,
            _ => {
                return Err(format!(
                    "{s:?} is not an addressing style: use auto, path, virtual or cname"
                ))
            }
        })
    }
}

/// The request URL (without query) for a bucket/key under an addressing style.
pub fn request_url(
    endpoint: &Endpoint,
    addressing: Addressing,
    bucket: Option<&str>,
    key: Option<&str>,
) -> String {
    let enc_key = crate::oss::sign::uri_encode(key.unwrap_or(""), true);
    match (addressing.resolve(endpoint), bucket) {
        (_, None) => format!("{}://{}/", endpoint.scheme, endpoint.authority()),
        (Addressing::Path, Some(b)) => {
            format!(
                "{}://{}/{}/{}",
                endpoint.scheme,
                endpoint.authority(),
                b,
                enc_key
            )
        }
        (Addressing::Cname, Some(_)) => {
            format!("{}://{}/{}", endpoint.scheme, endpoint.authority(), enc_key)
        }
        (_, Some(b)) => format!(
            "{}://{}.{}/{}",
            endpoint.scheme,
            b,
            endpoint.authority(),
            enc_key
        ),
    }
}

/// Region and product for V4 from a standard OSS host (spec §1.1), or from an OSS
/// accelerator host (`<zone>[-internal].oss-data-acc.aliyuncs.com`, whose zone names the
/// region); `None` for hosts that do not say (CNAME, IP, the global transfer-acceleration
/// endpoints): those need `--region`.
pub fn derive_region(host: &str, bucket: Option<&str>) -> Option<(String, String)> {
    let mut host = host.to_ascii_lowercase();
    if let Some(b) = bucket {
        if let Some(rest) = host.strip_prefix(&format!("{b}.")) {
            host = rest.to_string();
        }
    }
    let labels: Vec<&str> = host.split('.').collect();
    if (host.ends_with(".oss-cloudbox.aliyuncs.com")
        || host.ends_with(".oss-cloudbox-control.aliyuncs.com"))
        && labels.len() == 5
        && labels[0].starts_with("cb-")
    {
        return Some((labels[0].to_string(), "oss-cloudbox".into()));
    }
    if host == "oss.aliyuncs.com" || host == "oss-internal.aliyuncs.com" {
        return Some(("cn-hangzhou".into(), "oss".into()));
    }
    let valid = |r: &str| {
        !r.is_empty()
            && r.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    };
    if let Some(zone) = host.strip_suffix(".oss-data-acc.aliyuncs.com") {
        let zone = zone.strip_suffix("-internal").unwrap_or(zone);
        return region_of_zone(zone)
            .filter(|r| valid(r) && !r.contains('.'))
            .map(|r| (r, "oss".into()));
    }
    if let Some(name) = host.strip_suffix(".aliyuncs.com") {
        if let Some(r) = name.strip_prefix("oss-") {
            let r = r.strip_suffix("-internal").unwrap_or(r);
            let not_regions = ["accelerate", "accelerate-overseas", "data-acc"];
            if !not_regions.contains(&r) && valid(r) && !r.contains('.') {
                return Some((r.to_string(), "oss".into()));
            }
        }
        if let Some(r) = name.strip_suffix(".oss") {
            if valid(r) && !r.contains('.') {
                return Some((r.to_string(), "oss".into()));
            }
        }
    }
    None
}

/// The region of an availability zone (`cn-hangzhou-j` → `cn-hangzhou`, `ap-southeast-1c` →
/// `ap-southeast-1`); a region name without a zone letter is itself.
fn region_of_zone(zone: &str) -> Option<String> {
    let (head, last) = zone.rsplit_once('-')?;
    if head.is_empty() || last.is_empty() {
        return None;
    }
    let letter = |c: u8| c.is_ascii_lowercase();
    let region = match last.as_bytes() {
        // `cn-hangzhou-j`: the zone is a letter of its own.
        [c] if letter(*c) => head.to_string(),
        // `ap-southeast-1c`: the zone letter follows the region's number.
        [digits @ .., c] if letter(*c) && digits.iter().all(u8::is_ascii_digit) => {
            zone[..zone.len() - 1].to_string()
        }
        // `cn-hangzhou`, `ap-southeast-1`: no zone given.
        _ => zone.to_string(),
    };
    region.contains('-').then_some(region)
}

/// `oss://bucket/key` or `oss://bucket/prefix/`. The key is taken literally: no
/// percent-decoding, so `oss://b/a%41.txt` names the key `a%41.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OssUrl {
    pub bucket: String,
    pub key: String,
}

impl OssUrl {
    pub fn parse(s: &str) -> Result<OssUrl, String> {
        let rest = s.strip_prefix("oss://").ok_or_else(|| {
            format!("{s:?} is not an OSS URL: write it as oss://bucket/key or oss://bucket/prefix/")
        })?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket).map_err(|e| format!("{s:?}: {e}"))?;
        if key.len() > 1023 {
            return Err(format!("{s:?}: object keys are at most 1023 bytes"));
        }
        Ok(OssUrl {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl fmt::Display for OssUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oss://{}/{}", self.bucket, self.key)
    }
}

impl From<OssUrl> for crate::store::StoreUrl {
    fn from(u: OssUrl) -> Self {
        crate::store::StoreUrl {
            scheme: "oss",
            bucket: u.bucket,
            key: u.key,
        }
    }
}

pub fn validate_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || bucket.starts_with('-')
        || bucket.ends_with('-')
    {
        return Err(format!(
            "bucket name {bucket:?} is invalid: 3-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_https() {
        let e = Endpoint::parse("oss-cn-hangzhou.aliyuncs.com").unwrap();
        assert_eq!(e.to_string(), "https://oss-cn-hangzhou.aliyuncs.com");
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", Some(9000)));
        assert!(e.is_ip_or_localhost());
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/y").is_err());
    }

    #[test]
    fn regions_derive_from_standard_hosts() {
        let r = |h: &str| derive_region(h, Some("examplebucket")).map(|(r, p)| format!("{r}/{p}"));
        assert_eq!(
            r("oss-cn-hangzhou.aliyuncs.com").as_deref(),
            Some("cn-hangzhou/oss")
        );
        assert_eq!(
            r("oss-cn-hangzhou-internal.aliyuncs.com").as_deref(),
            Some("cn-hangzhou/oss")
        );
        assert_eq!(
            r("examplebucket.oss-ap-southeast-1.aliyuncs.com").as_deref(),
            Some("ap-southeast-1/oss")
        );
        assert_eq!(
            r("cn-shanghai.oss.aliyuncs.com").as_deref(),
            Some("cn-shanghai/oss")
        );
        assert_eq!(r("oss.aliyuncs.com").as_deref(), Some("cn-hangzhou/oss"));
        assert_eq!(
            r("cb-123abc.cn-hangzhou.oss-cloudbox.aliyuncs.com").as_deref(),
            Some("cb-123abc/oss-cloudbox")
        );
        assert_eq!(r("oss-accelerate.aliyuncs.com"), None);
        assert_eq!(r("oss-data-acc.aliyuncs.com"), None);
        assert_eq!(r("static.example.com"), None);
        assert_eq!(r("127.0.0.1"), None);
    }

    #[test]
    fn regions_derive_from_oss_accelerator_hosts() {
        let r = |h: &str| derive_region(h, Some("examplebucket")).map(|(r, p)| format!("{r}/{p}"));
        for (host, region) in [
            (
                "cn-hangzhou-j-internal.oss-data-acc.aliyuncs.com",
                "cn-hangzhou",
            ),
            ("cn-hangzhou-j.oss-data-acc.aliyuncs.com", "cn-hangzhou"),
            (
                "cn-hangzhou-internal.oss-data-acc.aliyuncs.com",
                "cn-hangzhou",
            ),
            ("cn-hangzhou.oss-data-acc.aliyuncs.com", "cn-hangzhou"),
            (
                "cn-beijing-h-internal.oss-data-acc.aliyuncs.com",
                "cn-beijing",
            ),
            (
                "cn-wulanchabu-b-internal.oss-data-acc.aliyuncs.com",
                "cn-wulanchabu",
            ),
            (
                "ap-southeast-1c-internal.oss-data-acc.aliyuncs.com",
                "ap-southeast-1",
            ),
            (
                "ap-southeast-1-internal.oss-data-acc.aliyuncs.com",
                "ap-southeast-1",
            ),
            // Virtual-hosted: the bucket's label goes first.
            (
                "examplebucket.cn-shanghai-g-internal.oss-data-acc.aliyuncs.com",
                "cn-shanghai",
            ),
            (
                "CN-Shenzhen-C-Internal.OSS-Data-Acc.aliyuncs.com",
                "cn-shenzhen",
            ),
        ] {
            assert_eq!(
                r(host).as_deref(),
                Some(&*format!("{region}/oss")),
                "{host}"
            );
        }
        for host in [
            "j-internal.oss-data-acc.aliyuncs.com",
            "-internal.oss-data-acc.aliyuncs.com",
            "a.b-internal.oss-data-acc.aliyuncs.com",
            "cn_hangzhou-j.oss-data-acc.aliyuncs.com",
        ] {
            assert_eq!(r(host), None, "{host}");
        }
    }

    #[test]
    fn urls_by_addressing_style() {
        let real = Endpoint::parse("oss-cn-hangzhou.aliyuncs.com").unwrap();
        let ip = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            request_url(&real, Addressing::Auto, Some("b"), Some("a b/c.txt")),
            "https://b.oss-cn-hangzhou.aliyuncs.com/a%20b/c.txt"
        );
        assert_eq!(
            request_url(&ip, Addressing::Auto, Some("b"), Some("k")),
            "http://127.0.0.1:9000/b/k"
        );
        assert_eq!(
            request_url(&real, Addressing::Cname, Some("b"), Some("k")),
            "https://oss-cn-hangzhou.aliyuncs.com/k"
        );
        assert_eq!(
            request_url(&ip, Addressing::Auto, Some("b"), None),
            "http://127.0.0.1:9000/b/"
        );
    }

    #[test]
    fn oss_urls_take_keys_literally() {
        let u = OssUrl::parse("oss://my-bucket/a%41.txt").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("my-bucket", "a%41.txt")
        );
        assert_eq!(OssUrl::parse("oss://my-bucket").unwrap().key, "");
        assert!(OssUrl::parse("s3://b/k")
            .unwrap_err()
            .contains("oss://bucket/key"));
        assert!(OssUrl::parse("oss://B/k").unwrap_err().contains("invalid"));
    }
}
