//! The wire format of OSS answers: object metadata from headers, typed errors from error
//! documents (or `x-oss-err` for bodiless answers), ListObjectsV2 XML, Content-Range.
//! Pure parsing: must not send requests.

use bytes::Bytes;

use super::{sign, time, xml, ListPage, ListedObject, ObjectMeta, OssError, ServiceError};

pub(super) fn describe_reqwest_error(e: &reqwest::Error) -> String {
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

pub(super) fn header_str(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn meta_from_headers(
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
        digest: None,
        content_type: header_str(h, "content-type"),
        request_id: header_str(h, "x-oss-request-id").unwrap_or_default(),
    })
}

/// Builds the typed error from a failed response: the XML body, or for bodiless answers
/// (HEAD) the `x-oss-err` header, or at least the status and request id.
pub(super) async fn error_from_response(resp: reqwest::Response, is_head: bool) -> OssError {
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
            err.code_guessed = matches!(status, 403 | 404 | 412 | 416);
        }
    }
    OssError::Service(Box::new(err))
}

pub(super) fn parse_list_page(body: &[u8]) -> Result<ListPage, String> {
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

/// `bytes a-b/total` → (a, total).
pub(super) fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _b) = range.split_once('-')?;
    Some((a.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
