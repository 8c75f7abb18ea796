//! Request signing for OSS: Signature V4 (`OSS4-HMAC-SHA256`) and V1 (`OSS AK:Signature`), as pure
//! functions over strings. This module owns canonicalisation (URI encoding, canonical query,
//! canonical headers, V1 resources) and the HMAC chains. It must not do I/O or know about HTTP
//! clients: the client signs what it is about to send, and the emulator re-derives the same
//! strings from what it received, so both can only agree if both follow the protocol.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// The V4 algorithm name, as it appears in the Authorization header and the string to sign.
pub const V4_ALGORITHM: &str = "OSS4-HMAC-SHA256";
/// The only payload hash the SDKs send: the body is never hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Percent-encodes `s` the way OSS canonicalises it: UTF-8 bytes, unreserved
/// `A-Z a-z 0-9 - _ . ~` kept, everything else `%XX` with upper-case hex. With `keep_slash`, `/`
/// is kept (object paths); without it `/` becomes `%2F` (query values, listed keys).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[(b >> 4) as usize]));
            out.push(char::from(HEX_UPPER[(b & 0xf) as usize]));
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Plain percent-decoding (`+` stays `+`), as the listing's `encoding-type=url` requires.
/// Returns `None` for a malformed escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The V4 canonical URI: `/bucket/key` encoded with `/` kept; `/bucket/` for bucket-level
/// requests and `/` when there is no bucket. The key is taken verbatim (no normalisation).
pub fn v4_canonical_uri(bucket: Option<&str>, key: Option<&str>) -> String {
    match bucket {
        None => "/".to_string(),
        Some(b) => uri_encode(&format!("/{}/{}", b, key.unwrap_or("")), true),
    }
}

/// The V4 canonical query from decoded `(name, value)` pairs: both encoded, sorted by
/// (encoded name, encoded value), `name` alone when the value is empty, joined by `&`.
pub fn v4_canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The wire query string for decoded pairs, in the given order, with the same encoding as the
/// canonical query (so what is signed is what is sent). Empty values are sent as `name=`, as
/// the v2 SDKs do; the canonical form is `name` either way.
pub fn wire_query(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

fn is_default_signed_v4(lower_name: &str) -> bool {
    lower_name == "content-type" || lower_name == "content-md5" || lower_name.starts_with("x-oss-")
}

/// The effective AdditionalHeaders list: requested names lower-cased, minus those signed by
/// default, minus those absent from the request, de-duplicated and sorted.
pub fn v4_additional_headers(requested: &[String], headers: &[(String, String)]) -> Vec<String> {
    let present: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    let mut out: Vec<String> = requested
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| !is_default_signed_v4(h) && present.contains(h))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The V4 canonical headers block: every `name:value\n` for the signed headers, names
/// lower-cased and sorted.
pub fn v4_canonical_headers(headers: &[(String, String)], additional: &[String]) -> String {
    let mut signed: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| is_default_signed_v4(k) || additional.contains(k))
        .collect();
    signed.sort();
    signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect()
}

/// Everything a V4 signature covers, already in canonical form.
#[derive(Debug, Clone)]
pub struct V4Canonical<'a> {
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    /// Decoded query pairs.
    pub query: &'a [(String, String)],
    /// All request headers (names in any case), including x-oss-date and x-oss-content-sha256.
    pub headers: &'a [(String, String)],
    /// The effective AdditionalHeaders (see [`v4_additional_headers`]).
    pub additional: &'a [String],
}

impl V4Canonical<'_> {
    pub fn canonical_request(&self) -> String {
        let payload = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-oss-content-sha256"))
            .map(|(_, v)| v.as_str())
            .unwrap_or(UNSIGNED_PAYLOAD);
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            v4_canonical_uri(self.bucket, self.key),
            v4_canonical_query(self.query),
            v4_canonical_headers(self.headers, self.additional),
            self.additional.join(";"),
            payload
        )
    }
}

/// `<date>/<region>/<product>/aliyun_v4_request`.
pub fn v4_scope(date8: &str, region: &str, product: &str) -> String {
    format!("{date8}/{region}/{product}/aliyun_v4_request")
}

pub fn v4_string_to_sign(x_oss_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{V4_ALGORITHM}\n{x_oss_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// The V4 signing key; it depends only on (secret, day, region, product).
pub fn v4_signing_key(secret: &str, date8: &str, region: &str, product: &str) -> Vec<u8> {
    let k1 = hmac256(format!("aliyun_v4{secret}").as_bytes(), date8.as_bytes());
    let k2 = hmac256(&k1, region.as_bytes());
    let k3 = hmac256(&k2, product.as_bytes());
    hmac256(&k3, b"aliyun_v4_request")
}

pub fn v4_signature(signing_key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac256(signing_key, string_to_sign.as_bytes()))
}

/// The Authorization header value, in the v2 SDKs' spelling (comma, no space).
pub fn v4_authorization(
    access_key_id: &str,
    scope: &str,
    additional: &[String],
    signature: &str,
) -> String {
    let mut s = format!("{V4_ALGORITHM} Credential={access_key_id}/{scope}");
    if !additional.is_empty() {
        s.push_str(&format!(",AdditionalHeaders={}", additional.join(";")));
    }
    s.push_str(&format!(",Signature={signature}"));
    s
}

/// Everything a V4 signing produced, for the request and for tests that compare each step.
#[derive(Debug, Clone)]
pub struct V4Signed {
    /// Headers the signer adds to the request (x-oss-date, x-oss-content-sha256, STS token).
    pub added_headers: Vec<(String, String)>,
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    pub authorization: String,
}

/// Inputs of a V4 header signature, as the client holds them before sending.
#[derive(Debug, Clone)]
pub struct V4Request<'a> {
    pub method: &'a str,
    pub bucket: Option<&'a str>,
    pub key: Option<&'a str>,
    pub query: &'a [(String, String)],
    /// Headers already on the request (Range, If-Match, x-oss-range-behavior, ...).
    pub headers: &'a [(String, String)],
    pub additional_headers_requested: &'a [String],
    pub region: &'a str,
    pub product: &'a str,
    /// Unix seconds of the signing time.
    pub time: i64,
}

/// Signs a request with V4: adds the signer's headers, then computes every step.
pub fn sign_v4(
    access_key_id: &str,
    access_key_secret: &str,
    security_token: Option<&str>,
    req: &V4Request<'_>,
) -> V4Signed {
    let x_oss_date = crate::oss::time::iso8601_basic(req.time);
    let mut added = vec![("x-oss-date".to_string(), x_oss_date.clone())];
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-oss-content-sha256"))
    {
        added.push(("x-oss-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
    }
    if let Some(token) = security_token {
        added.push(("x-oss-security-token".into(), token.to_string()));
    }
    let mut all: Vec<(String, String)> = req.headers.to_vec();
    all.extend(added.iter().cloned());
    let additional = v4_additional_headers(req.additional_headers_requested, &all);
    let canonical_request = V4Canonical {
        method: req.method,
        bucket: req.bucket,
        key: req.key,
        query: req.query,
        headers: &all,
        additional: &additional,
    }
    .canonical_request();
    let date8 = &x_oss_date[..8];
    let scope = v4_scope(date8, req.region, req.product);
    let string_to_sign = v4_string_to_sign(&x_oss_date, &scope, &canonical_request);
    let key = v4_signing_key(access_key_secret, date8, req.region, req.product);
    let signature = v4_signature(&key, &string_to_sign);
    let authorization = v4_authorization(access_key_id, &scope, &additional, &signature);
    V4Signed {
        added_headers: added,
        canonical_request,
        string_to_sign,
        signature,
        authorization,
    }
}

/// The query parameters (name, decoded value) that V1 signs as sub-resources.
const V1_SUBRESOURCES: &[&str] = &[
    "acl",
    "uploadId",
    "partNumber",
    "uploads",
    "logging",
    "website",
    "location",
    "lifecycle",
    "referer",
    "cors",
    "delete",
    "append",
    "position",
    "security-token",
    "x-oss-process",
    "response-content-type",
    "response-content-language",
    "response-expires",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "restore",
    "qos",
    "tagging",
    "stat",
    "bucketInfo",
    "objectMeta",
    "symlink",
    "replication",
    "replicationProgress",
    "replicationLocation",
    "versioning",
    "versionId",
    "versions",
    "x-oss-traffic-limit",
    "x-oss-request-payer",
    "sequential",
    "inventory",
    "inventoryId",
    "continuation-token",
    "resourceGroup",
    "regionList",
    "worm",
    "wormId",
    "wormExtend",
    "encryption",
    "policy",
    "requestPayment",
    "vod",
    "startTime",
    "endTime",
    "live",
    "status",
    "comp",
    "img",
    "style",
    "styleName",
    "transferAcceleration",
    "accessPoint",
];

/// The V1 CanonicalizedResource: `/`, `/bucket/` or `/bucket/<raw key>`, then the signed
/// sub-resources sorted by name with decoded values.
pub fn v1_canonical_resource(
    bucket: Option<&str>,
    key: Option<&str>,
    query: &[(String, String)],
) -> String {
    let mut resource = match bucket {
        None => "/".to_string(),
        Some(b) => format!("/{}/{}", b, key.unwrap_or("")),
    };
    let mut subs: Vec<&(String, String)> = query
        .iter()
        .filter(|(k, _)| V1_SUBRESOURCES.contains(&k.as_str()))
        .collect();
    subs.sort();
    if !subs.is_empty() {
        resource.push('?');
        let parts: Vec<String> = subs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        resource.push_str(&parts.join("&"));
    }
    resource
}

/// The V1 string to sign. The date line is `x-oss-date` when the request carries one, else
/// the `Date` header.
pub fn v1_string_to_sign(
    method: &str,
    headers: &[(String, String)],
    bucket: Option<&str>,
    key: Option<&str>,
    query: &[(String, String)],
) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let date = match get("x-oss-date") {
        "" => get("date"),
        d => d,
    };
    let mut oss_headers: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k.starts_with("x-oss-"))
        .collect();
    oss_headers.sort();
    let canonical_headers: String = oss_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();
    format!(
        "{method}\n{}\n{}\n{date}\n{canonical_headers}{}",
        get("content-md5"),
        get("content-type"),
        v1_canonical_resource(bucket, key, query)
    )
}

pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    use base64::Engine;
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn v1_authorization(access_key_id: &str, signature: &str) -> String {
    format!("OSS {access_key_id}:{signature}")
}

/// A parsed Authorization header, as the emulator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedAuthorization {
    V4 {
        access_key_id: String,
        date8: String,
        region: String,
        product: String,
        additional: Vec<String>,
        signature: String,
    },
    V1 {
        access_key_id: String,
        signature: String,
    },
}

/// Parses either spelling of the V4 header (`,` or `, ` separators, any field order) or V1.
pub fn parse_authorization(value: &str) -> Option<ParsedAuthorization> {
    if let Some(rest) = value.strip_prefix("OSS4-HMAC-SHA256 ") {
        let mut credential = None;
        let mut additional = Vec::new();
        let mut signature = None;
        for field in rest.split(',') {
            let (k, v) = field.trim().split_once('=')?;
            match k {
                "Credential" => credential = Some(v.to_string()),
                "AdditionalHeaders" => {
                    additional = v.split(';').map(|s| s.to_string()).collect();
                }
                "Signature" => signature = Some(v.to_string()),
                _ => {}
            }
        }
        let credential = credential?;
        let parts: Vec<&str> = credential.split('/').collect();
        if parts.len() != 5 || parts[4] != "aliyun_v4_request" {
            return None;
        }
        return Some(ParsedAuthorization::V4 {
            access_key_id: parts[0].to_string(),
            date8: parts[1].to_string(),
            region: parts[2].to_string(),
            product: parts[3].to_string(),
            additional,
            signature: signature?,
        });
    }
    let rest = value.strip_prefix("OSS ")?;
    let (ak, sig) = rest.rsplit_once(':')?;
    Some(ParsedAuthorization::V1 {
        access_key_id: ak.to_string(),
        signature: sig.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved() {
        assert_eq!(uri_encode("a b+c/~*", true), "a%20b%2Bc/~%2A");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("文", true), "%E6%96%87");
    }

    #[test]
    fn decoding_keeps_plus_and_rejects_bad_escapes() {
        assert_eq!(percent_decode("a+b%20c%2F").as_deref(), Some("a+b c/"));
        assert_eq!(percent_decode("%E6%96%87").as_deref(), Some("文"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn authorization_parses_both_spellings() {
        let a = "OSS4-HMAC-SHA256 Credential=ak/20240301/cn-hangzhou/oss/aliyun_v4_request,AdditionalHeaders=host,Signature=ab";
        let b = "OSS4-HMAC-SHA256 Credential=ak/20240301/cn-hangzhou/oss/aliyun_v4_request, Signature=ab, AdditionalHeaders=host";
        assert_eq!(parse_authorization(a), parse_authorization(b));
        assert!(matches!(
            parse_authorization("OSS ak:c2ln"),
            Some(ParsedAuthorization::V1 { .. })
        ));
        assert_eq!(parse_authorization("Bearer x"), None);
    }
}
