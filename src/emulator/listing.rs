//! ListObjectsV2 over a directory tree: prefixes and delimiters, paging with continuation
//! tokens, url encoding, and the service's XML.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::Response;

use crate::oss::sign;
use crate::oss::time;
use crate::oss::xml::escape;

use super::objects::etag_of;
use super::paths::listing_dir;
use super::response::{error_response, oss_err, Ctx, EmuBody, Resp};
use super::{bump, record, State};

/// Recent walks by bucket and directory part of the prefix (as spelled: two spellings that
/// resolve to one directory list different keys), with when they were made.
pub(super) type Snapshots = Mutex<HashMap<(String, String), (Instant, Arc<Vec<Listed>>)>>;

pub(super) struct Listed {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) etag: String,
}

/// Every file below `root` (a directory inside the bucket), as keys starting with
/// `key_prefix`, sorted. Symlinks are neither listed nor walked through (`DirEntry::metadata`
/// does not follow them), so the walk never leaves the bucket or goes round a cycle.
pub(super) fn walk_tree(root: &Path, key_prefix: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), key_prefix.to_string())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".ossmount-") || (name.starts_with('.') && name.contains(".tmp-")) {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            let key = format!("{prefix}{name}");
            if md.is_dir() {
                stack.push((entry.path(), format!("{key}/")));
            } else if md.is_file() {
                out.push(Listed {
                    etag: etag_of(&md),
                    size: md.size(),
                    mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    key,
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    out
}

/// The keys below the deepest directory `prefix` names, sorted. A first page walks the tree
/// afresh; the following pages of the same listing (a continuation token) reuse that walk for
/// a few seconds, so a page costs in proportion to the page, not to the directory, and a
/// listing reads like one consistent pass.
async fn listing_snapshot(
    state: &Arc<State>,
    bucket: &str,
    prefix: &str,
    continued: bool,
) -> Arc<Vec<Listed>> {
    let dir_part = &prefix[..prefix.rfind('/').map(|i| i + 1).unwrap_or(0)];
    let Some(walk_root) = listing_dir(&state.cfg.root, bucket, dir_part) else {
        return Arc::default();
    };
    let snapshot_key = (bucket.to_string(), dir_part.to_string());
    const REUSE: Duration = Duration::from_secs(10);
    if continued {
        let snapshots = state.listing_snapshots.lock().unwrap();
        if let Some((at, keys)) = snapshots.get(&snapshot_key) {
            if at.elapsed() < REUSE {
                return keys.clone();
            }
        }
    }
    let key_prefix = dir_part.to_string();
    let keys = tokio::task::spawn_blocking(move || walk_tree(&walk_root, &key_prefix))
        .await
        .map(Arc::new)
        .unwrap_or_default();
    let mut snapshots = state.listing_snapshots.lock().unwrap();
    snapshots.retain(|_, (at, _)| at.elapsed() < REUSE);
    snapshots.insert(snapshot_key, (Instant::now(), keys.clone()));
    keys
}

pub(super) async fn list_objects(
    state: &Arc<State>,
    ctx: &Ctx,
    bucket: &str,
    query: &[(String, String)],
) -> Resp {
    bump(state, ctx, |c| {
        c.requests += 1;
        c.list_requests += 1;
    });
    record(state, ctx, None, 200);
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if q("list-type") != Some("2") {
        return error_response(
            ctx,
            oss_err(
                400,
                "InvalidArgument",
                "Only ListObjectsV2 (list-type=2) is served by this emulator.",
                "0016-00000001",
            ),
        );
    }
    let prefix = q("prefix").unwrap_or("").to_string();
    let delimiter = q("delimiter").filter(|d| !d.is_empty()).map(str::to_string);
    let max_keys: usize = match q("max-keys").map(|m| m.parse::<usize>()) {
        None => 100,
        Some(Ok(m)) if (1..=1000).contains(&m) => m,
        _ => {
            let mut e = oss_err(
                400,
                "InvalidArgument",
                "max-keys must be between 1 and 1000.",
                "0016-00000002",
            );
            e.extra.push(("ArgumentName", "max-keys".into()));
            return error_response(ctx, e);
        }
    };
    let url = q("encoding-type") == Some("url");
    let enc = |s: &str| {
        if url {
            sign::uri_encode(s, false)
        } else {
            escape(s)
        }
    };
    let token = q("continuation-token").filter(|t| !t.is_empty());
    let start_after = q("start-after").filter(|t| !t.is_empty());
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // The token names the last thing returned: a key ("K...") or a rolled-up prefix ("P...").
    let resume: Option<String> = match token {
        Some(t) => match b64.decode(t).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(s) if s.starts_with('K') || s.starts_with('P') => Some(s),
            _ => {
                return error_response(
                    ctx,
                    oss_err(
                        400,
                        "InvalidArgument",
                        "The continuation token provided is incorrect.",
                        "0016-00000003",
                    ),
                )
            }
        },
        None => None,
    };
    let all = listing_snapshot(state, bucket, &prefix, resume.is_some()).await;
    let after = |k: &str| -> bool {
        if let Some(sa) = start_after {
            if k.as_bytes() <= sa.as_bytes() {
                return false;
            }
        }
        match resume.as_deref() {
            Some(r) if r.starts_with('K') => k.as_bytes() > &r.as_bytes()[1..],
            Some(r) => k.as_bytes() > &r.as_bytes()[1..] && !k.starts_with(&r[1..]),
            None => true,
        }
    };
    let mut contents = String::new();
    let mut prefixes = String::new();
    let mut count = 0;
    let mut last: Option<String> = None;
    let mut truncated = false;
    let mut last_prefix: Option<String> = None;
    for item in all
        .iter()
        .filter(|i| i.key.starts_with(&prefix) && after(&i.key))
    {
        let rolled = delimiter.as_ref().and_then(|d| {
            item.key[prefix.len()..]
                .find(d.as_str())
                .map(|i| item.key[..prefix.len() + i + d.len()].to_string())
        });
        if let (Some(r), Some(lp)) = (&rolled, &last_prefix) {
            if r == lp {
                continue;
            }
        }
        if count == max_keys {
            truncated = true;
            break;
        }
        count += 1;
        match rolled {
            Some(cp) => {
                prefixes.push_str(&format!(
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    enc(&cp)
                ));
                last = Some(format!("P{cp}"));
                last_prefix = Some(cp);
            }
            None => {
                contents.push_str(&format!(
                    "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Type>Normal</Type><Size>{}</Size><StorageClass>Standard</StorageClass></Contents>",
                    enc(&item.key),
                    // The service keeps second precision: `...T00:06:23.000Z` (oss2 refuses
                    // other millisecond values).
                    time::iso8601_extended(std::time::UNIX_EPOCH + std::time::Duration::from_secs(
                        item.mtime.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
                    )),
                    escape(&item.etag),
                    item.size
                ));
                last = Some(format!("K{}", item.key));
            }
        }
    }
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{}</MaxKeys>",
        escape(bucket),
        enc(&prefix),
        max_keys
    );
    if let Some(sa) = start_after {
        xml.push_str(&format!("<StartAfter>{}</StartAfter>", enc(sa)));
    }
    if let Some(t) = token {
        xml.push_str(&format!(
            "<ContinuationToken>{}</ContinuationToken>",
            enc(t)
        ));
    }
    if let Some(d) = &delimiter {
        xml.push_str(&format!("<Delimiter>{}</Delimiter>", enc(d)));
    }
    if url {
        xml.push_str("<EncodingType>url</EncodingType>");
    }
    xml.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    if truncated {
        let next = b64.encode(last.unwrap_or_default());
        xml.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            enc(&next)
        ));
    }
    xml.push_str(&format!(
        "<KeyCount>{count}</KeyCount>{contents}{prefixes}</ListBucketResult>"
    ));
    Response::builder()
        .status(200)
        .header("x-oss-request-id", &ctx.request_id)
        .header("Content-Type", "application/xml")
        .header("Content-Length", xml.len())
        .header("Server", "AliyunOSS")
        .body(EmuBody::bytes(xml))
        .expect("valid")
}
