//! The wire format of S3 answers: object metadata from headers, `StoreError`s from XML error
//! documents (or from the status alone for bodiless HEAD answers), ListObjectsV2 results and
//! Content-Range. Pure parsing: must not send requests. An error keeps the service's code and
//! request id and drops everything else S3 echoes (a SignatureDoesNotMatch document carries
//! the signature and the canonical request: neither is copied).

use reqwest::header::HeaderMap;

use crate::store::{
    time, xml, ListPage, ListedObject, ObjectMeta, StoreError, StoreErrorKind, WholeDigest,
};

pub(super) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn describe_reqwest_error(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL, never headers; the sources say what went wrong.
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

pub(super) fn transport_error(endpoint: &str, detail: String) -> StoreError {
    StoreError::new(
        StoreErrorKind::Transient,
        format!("network error talking to {endpoint}: {detail}"),
    )
}

pub(super) fn protocol_error(endpoint: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Transient,
        format!("unexpected answer from {endpoint}: {detail}"),
    )
}

pub(super) fn meta_from_headers(
    h: &HeaderMap,
    size_override: Option<u64>,
    endpoint: &str,
    etag_is_md5: bool,
) -> Result<ObjectMeta, StoreError> {
    let missing = |what: &str| protocol_error(endpoint, format!("the answer has no {what} header"));
    let size = match size_override {
        Some(s) => s,
        None => header_str(h, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| missing("Content-Length"))?,
    };
    let etag = header_str(h, "etag").ok_or_else(|| missing("ETag"))?;
    Ok(ObjectMeta {
        size,
        // The MD5 when the ETag is one, else the full-object CRC64NVME. The same answer
        // whichever request told it: a ranged GET carries the ETag but never the full-object
        // checksum, so a GET and a HEAD of one version give one identity (and an open needs
        // no HEAD after its first GET when the ETag is an MD5).
        digest: md5_of_etag(&etag, h)
            .filter(|_| etag_is_md5)
            .map(WholeDigest::Md5)
            .or_else(|| crc64nvme_of(h).map(WholeDigest::Crc64Nvme)),
        etag,
        last_modified: header_str(h, "last-modified").unwrap_or_default(),
        // S3's checksums are not CRC-64/ECMA: the parts' CRC-64s are not folded into one.
        crc64: None,
        content_type: header_str(h, "content-type"),
        request_id: header_str(h, "x-amz-request-id").unwrap_or_default(),
    })
}

/// The full-object CRC64NVME (base64 of its 8 big-endian bytes), when the answer carries
/// one. A composite checksum (a checksum of parts' checksums) is not the object's: ignored.
fn crc64nvme_of(h: &HeaderMap) -> Option<u64> {
    use base64::Engine;
    if header_str(h, "x-amz-checksum-type").is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE")) {
        return None;
    }
    let value = header_str(h, "x-amz-checksum-crc64nvme")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The object's MD5 when its ETag is one: 32 hex digits (a multipart upload's ETag has a
/// `-<parts>` suffix), and neither SSE-KMS nor SSE-C, whose ETags are not the MD5 of the
/// bytes.
fn md5_of_etag(etag: &str, h: &HeaderMap) -> Option<[u8; 16]> {
    let kms =
        header_str(h, "x-amz-server-side-encryption").is_some_and(|v| v.starts_with("aws:kms"));
    let customer_key = h.contains_key("x-amz-server-side-encryption-customer-algorithm");
    if kms || customer_key {
        return None;
    }
    let hex_digits = etag.trim_matches('"');
    if hex_digits.len() != 32 {
        return None;
    }
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(hex_digits, &mut md5).ok()?;
    Some(md5)
}

/// The store's kind for an S3 failure: what the engine and the filesystem decide by.
pub(super) fn error_kind(status: u16, code: &str) -> StoreErrorKind {
    match (status, code) {
        (_, "NoSuchKey" | "NoSuchBucket") | (404, _) => StoreErrorKind::NotFound,
        (412, _) => StoreErrorKind::PreconditionFailed,
        (403, _) => StoreErrorKind::AccessDenied,
        (_, "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            StoreErrorKind::Transient
        }
        (408 | 429, _) | (500..=599, _) => StoreErrorKind::Transient,
        _ => StoreErrorKind::Permanent,
    }
}

fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "SignatureDoesNotMatch" => {
            "check AWS_SECRET_ACCESS_KEY (or the profile's aws_secret_access_key) and --region: \
             the secret does not match the access key id"
        }
        "InvalidAccessKeyId" | "NotSignedUp" => {
            "check AWS_ACCESS_KEY_ID (or the profile's aws_access_key_id): the service does not know it"
        }
        "NoSuchBucket" => "check the bucket name in the s3:// URL, --endpoint and --region",
        "NoSuchKey" => "the object was not found: check the key (it is case-sensitive)",
        "RequestTimeTooSkewed" => "this machine's clock is more than 15 minutes off",
        "AuthorizationHeaderMalformed" => "check --region (AWS_REGION): it must be the bucket's",
        "PermanentRedirect" => "the bucket is in another region: pass its --region",
        "ExpiredToken" => "the session token in AWS_SESSION_TOKEN has expired",
        "AccessDenied" => "the credentials lack permission, or the endpoint or region is wrong",
        _ => return None,
    })
}

/// The error for a failed answer: its XML error document, or for a bodiless one (HEAD) a
/// code told by the status, marked as such.
pub(super) fn service_error(status: u16, headers: &HeaderMap, body: &[u8]) -> StoreError {
    let mut request_id = header_str(headers, "x-amz-request-id").unwrap_or_default();
    let (code, message) = match xml::parse(body) {
        Ok(root) if root.name == "Error" => {
            if request_id.is_empty() {
                request_id = root.child_text("RequestId").unwrap_or("").to_string();
            }
            (
                root.child_text("Code").unwrap_or("").to_string(),
                root.child_text("Message").unwrap_or("").to_string(),
            )
        }
        _ => {
            let guessed = match status {
                404 => "NoSuchKey",
                403 => "AccessDenied",
                412 => "PreconditionFailed",
                416 => "InvalidRange",
                503 => "SlowDown",
                _ => "",
            };
            let why = if body.is_empty() {
                "the answer carries no error document"
            } else {
                "the error document could not be parsed"
            };
            let code = if guessed.is_empty() {
                format!("HTTP{status}")
            } else {
                guessed.to_string()
            };
            (code, format!("{why} (code told by the HTTP status)"))
        }
    };
    let mut text = format!("S3 error {code}: {message} (HTTP {status}");
    if !request_id.is_empty() {
        text.push_str(&format!(", RequestId {request_id}"));
    }
    text.push(')');
    if let Some(h) = hint(&code) {
        text.push_str(&format!("\nhint: {h}"));
    }
    StoreError {
        kind: error_kind(status, &code),
        message: text,
        code: Some(code),
        request_id: (!request_id.is_empty()).then_some(request_id),
    }
}

pub(super) fn parse_list_page(body: &[u8]) -> Result<ListPage, String> {
    let root = xml::parse(body)?;
    if root.name != "ListBucketResult" {
        return Err(format!("expected ListBucketResult, got {}", root.name));
    }
    let encoded = root.child_text("EncodingType") == Some("url");
    let decode = |s: &str| -> Result<String, String> {
        if encoded {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| format!("bad percent-encoding in {s:?}"))
        } else {
            Ok(s.to_string())
        }
    };
    let mut page = ListPage {
        is_truncated: root.child_text("IsTruncated") == Some("true"),
        // Continuation tokens are opaque and never URL-encoded.
        next_continuation_token: root
            .child_text("NextContinuationToken")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
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

/// `bytes a-b/total` → (a, total).
pub(super) fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    Some((first.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_keep_code_and_request_id_and_drop_the_signature() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><AWSAccessKeyId>AKIA</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256</StringToSign><SignatureProvided>deadbeefcafe</SignatureProvided><CanonicalRequest>GET /b/k</CanonicalRequest><RequestId>REQ123</RequestId><HostId>host</HostId></Error>"#;
        let e = service_error(403, &HeaderMap::new(), body);
        assert_eq!(e.kind, StoreErrorKind::AccessDenied);
        assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
        assert_eq!(e.request_id(), Some("REQ123"));
        assert!(e.message.contains("SignatureDoesNotMatch") && e.message.contains("REQ123"));
        assert!(!e.message.contains("deadbeefcafe"), "{}", e.message);
        assert!(!e.message.contains("CanonicalRequest") && !e.message.contains("GET /b/k"));
    }

    #[test]
    fn kinds_follow_the_status_and_code() {
        let kind = |status, body: &str| service_error(status, &HeaderMap::new(), body.as_bytes());
        let doc = |code: &str| format!("<Error><Code>{code}</Code><Message>m</Message></Error>");
        assert_eq!(kind(404, "").kind, StoreErrorKind::NotFound);
        assert_eq!(kind(404, "").code(), Some("NoSuchKey"));
        assert_eq!(
            kind(404, &doc("NoSuchBucket")).kind,
            StoreErrorKind::NotFound
        );
        assert_eq!(kind(412, "").kind, StoreErrorKind::PreconditionFailed);
        assert_eq!(kind(403, "").kind, StoreErrorKind::AccessDenied);
        assert_eq!(kind(503, &doc("SlowDown")).kind, StoreErrorKind::Transient);
        assert_eq!(
            kind(500, &doc("InternalError")).kind,
            StoreErrorKind::Transient
        );
        assert_eq!(
            kind(400, &doc("InvalidArgument")).kind,
            StoreErrorKind::Permanent
        );
        assert_eq!(kind(502, "<html>").code(), Some("HTTP502"));
    }

    #[test]
    fn list_pages_decode_keys_but_not_tokens() {
        let body = br#"<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>a%2Bb</NextContinuationToken><Contents><Key>dir/a%20b%2Bc</Key><LastModified>2024-03-01T10:00:00.000Z</LastModified><ETag>"E"</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass></Contents><CommonPrefixes><Prefix>dir/sub%2F</Prefix></CommonPrefixes></ListBucketResult>"#;
        let p = parse_list_page(body).unwrap();
        assert_eq!(p.objects[0].key, "dir/a b+c");
        assert_eq!(p.objects[0].size, 5);
        assert_eq!(p.common_prefixes, vec!["dir/sub/"]);
        assert_eq!(p.next_continuation_token.as_deref(), Some("a%2Bb"));
        assert!(p.is_truncated);
        assert!(parse_list_page(b"<Error/>").is_err());
    }

    #[test]
    fn only_a_plain_md5_etag_is_taken_for_the_md5() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let plain = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        let md5 = md5_of_etag(plain, &HeaderMap::new()).unwrap();
        assert_eq!(hex::encode(md5), "9e107d9d372bb6826bd81d3542a419d6");
        let sse_s3 = headers(&[("x-amz-server-side-encryption", "AES256")]);
        assert!(md5_of_etag(plain, &sse_s3).is_some());
        let kms = headers(&[("x-amz-server-side-encryption", "aws:kms")]);
        assert!(md5_of_etag(plain, &kms).is_none());
        let sse_c = headers(&[("x-amz-server-side-encryption-customer-algorithm", "AES256")]);
        assert!(md5_of_etag(plain, &sse_c).is_none());
        let multipart = "\"9e107d9d372bb6826bd81d3542a419d6-3\"";
        assert!(md5_of_etag(multipart, &HeaderMap::new()).is_none());
        assert!(md5_of_etag("\"not-hex-not-hex-not-hex-not-hex!\"", &HeaderMap::new()).is_none());
    }

    #[test]
    fn a_full_object_crc64nvme_is_taken_and_a_composite_one_is_not() {
        let mut h = HeaderMap::new();
        // CRC64NVME("123456789") = 0xae8b14860a799888, sent as base64 of its big-endian bytes.
        h.insert("x-amz-checksum-crc64nvme", "rosUhgp5mIg=".parse().unwrap());
        assert_eq!(crc64nvme_of(&h), Some(0xae8b_1486_0a79_9888));
        h.insert("x-amz-checksum-type", "FULL_OBJECT".parse().unwrap());
        assert_eq!(crc64nvme_of(&h), Some(0xae8b_1486_0a79_9888));
        h.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
        assert_eq!(crc64nvme_of(&h), None);
        let mut short = HeaderMap::new();
        short.insert("x-amz-checksum-crc64nvme", "AAAA".parse().unwrap());
        assert_eq!(crc64nvme_of(&short), None, "not 8 bytes");
        let mut both = HeaderMap::new();
        both.insert("x-amz-checksum-crc64nvme", "rosUhgp5mIg=".parse().unwrap());
        both.insert(
            "etag",
            "\"9e107d9d372bb6826bd81d3542a419d6\"".parse().unwrap(),
        );
        both.insert("content-length", "9".parse().unwrap());
        let meta = meta_from_headers(&both, None, "e", true).unwrap();
        assert_eq!(
            meta.digest.map(|d| d.algorithm()),
            Some("MD5"),
            "the MD5 ETag first: a ranged GET tells it too"
        );
        both.insert(
            "etag",
            "\"9e107d9d372bb6826bd81d3542a419d6-2\"".parse().unwrap(),
        );
        let meta = meta_from_headers(&both, None, "e", true).unwrap();
        assert_eq!(
            meta.digest,
            Some(WholeDigest::Crc64Nvme(0xae8b_1486_0a79_9888)),
            "a multipart upload's ETag is no MD5: its CRC64NVME"
        );
        let not_md5 = meta_from_headers(&both, None, "e", false).unwrap();
        assert_eq!(not_md5.digest.map(|d| d.algorithm()), Some("CRC64NVME"));
        both.remove("x-amz-checksum-crc64nvme");
        both.insert(
            "etag",
            "\"9e107d9d372bb6826bd81d3542a419d6\"".parse().unwrap(),
        );
        assert_eq!(
            meta_from_headers(&both, None, "e", false).unwrap().digest,
            None,
            "--etag-is-not-md5: an MD5-looking ETag verifies nothing"
        );
        let mut nvme = WholeDigest::Crc64Nvme(0).hasher();
        nvme.update(b"1234");
        nvme.update(b"56789");
        assert_eq!(nvme.finish(), WholeDigest::Crc64Nvme(0xae8b_1486_0a79_9888));
        let mut md5 = WholeDigest::Md5([0; 16]).hasher();
        md5.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(md5.finish().hex(), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
