//! HeadObject and GetObject: object metadata (ETag, CRC-64), ranges with standard behaviour,
//! conditional requests, and the body plan handed to `body` for shaping and cuts.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use hyper::Method;
use hyper::Response;
use hyper::StatusCode;
use rand::Rng;
use sha2::Digest;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::oss::time;

use super::body::{stream_file, BodyPlan};
use super::paths::resolve_object;
use super::response::{error_response, oss_err, Ctx, EmuBody, Resp};
use super::{bump, record, ConnCtx, Faults, State};

pub(super) struct ObjectFile {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) etag: String,
    pub(super) mtime: SystemTime,
    crc64: u64,
}

pub(super) fn etag_of(md: &std::fs::Metadata) -> String {
    let mut h = Sha256::new();
    h.update(md.size().to_le_bytes());
    h.update(md.mtime().to_le_bytes());
    h.update(md.mtime_nsec().to_le_bytes());
    h.update(md.ino().to_le_bytes());
    format!("\"{}\"", hex::encode_upper(&h.finalize()[..16]))
}

pub(super) async fn stat_object(state: &Arc<State>, path: PathBuf) -> Option<ObjectFile> {
    // One open file for the version's metadata and its CRC: a replacement renamed over the
    // path in between must not lend the old version the new one's CRC.
    let file = std::fs::File::open(&path).ok()?;
    let md = file.metadata().ok().filter(|m| m.is_file())?;
    let key = (
        md.size(),
        md.mtime_nsec() + md.mtime() * 1_000_000_000,
        md.ino(),
    );
    let cached = state
        .crc_cache
        .lock()
        .unwrap()
        .get(&path)
        .filter(|c| (c.0, c.1, c.2) == key)
        .map(|c| c.3);
    let crc64 = match cached {
        Some(c) => c,
        None => {
            let crc = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let mut f = file;
                let mut buf = vec![0u8; 1 << 20];
                let mut crc = crate::crc64::Digest::default();
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(crc.value());
                    }
                    crc.update(&buf[..n]);
                }
            })
            .await
            .ok()?
            .ok()?;
            state
                .crc_cache
                .lock()
                .unwrap()
                .insert(path.clone(), (key.0, key.1, key.2, crc));
            crc
        }
    };
    Some(ObjectFile {
        size: md.size(),
        etag: etag_of(&md),
        mtime: md.modified().ok()?,
        crc64,
        path,
    })
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: Ok(Some(range)) to serve part,
/// Ok(None) for the whole object, Err(()) when unsatisfiable.
pub(super) fn resolve_range(
    header: Option<&str>,
    size: u64,
    standard: bool,
) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return if standard { Err(()) } else { Ok(None) };
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let parsed = match (a.trim(), b.trim()) {
        ("", n) => n
            .parse::<u64>()
            .ok()
            .map(|n| (size.saturating_sub(n), size)),
        (a, "") => a.parse::<u64>().ok().map(|a| (a, size)),
        (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.saturating_add(1))),
            _ => None,
        },
    };
    let Some((start, end)) = parsed else {
        return Ok(None);
    };
    if start >= size {
        return if standard && size > 0 {
            Err(())
        } else {
            Ok(None)
        };
    }
    if end > size && !standard {
        return Ok(None);
    }
    Ok(Some((start, end.min(size))))
}

pub(super) fn precondition_failed(state: &State, ctx: &Ctx, condition: &str) -> Resp {
    record(state, ctx, None, 412);
    let mut e = oss_err(
        412,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold.",
        "0017-00001001",
    );
    e.extra.push(("Condition", condition.to_string()));
    error_response(ctx, e)
}

pub(super) fn etag_matches(cond: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    cond.split(',')
        .any(|c| c.trim() == "*" || c.trim().trim_matches('"') == bare)
}

pub(super) async fn get_object(
    state: &Arc<State>,
    conn: &Arc<ConnCtx>,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    headers: &[(String, String)],
    faults: &Faults,
) -> Resp {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let is_head = ctx.method == Method::HEAD;
    bump(state, ctx, |c| {
        c.requests += 1;
        if is_head {
            c.head_requests += 1
        } else {
            c.get_requests += 1
        }
    });
    let obj = match resolve_object(&state.cfg.root, bucket, key) {
        Some(p) => stat_object(state, p).await,
        None => None,
    };
    let Some(obj) = obj else {
        record(state, ctx, None, 404);
        let mut e = oss_err(
            404,
            "NoSuchKey",
            "The specified key does not exist.",
            "0026-00000001",
        );
        e.extra.push(("Key", key.to_string()));
        return error_response(ctx, e);
    };
    if let Some(cond) = get("if-match") {
        if !etag_matches(cond, &obj.etag) {
            return precondition_failed(state, ctx, "If-Match");
        }
    }
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    if let Some(since) = get("if-unmodified-since").and_then(|d| httpdate::parse_http_date(d).ok())
    {
        if secs(obj.mtime) > secs(since) {
            return precondition_failed(state, ctx, "If-Unmodified-Since");
        }
    }
    let not_modified = get("if-none-match").is_some_and(|c| etag_matches(c, &obj.etag))
        || get("if-modified-since")
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .is_some_and(|since| secs(obj.mtime) <= secs(since));
    let last_modified = httpdate::fmt_http_date(obj.mtime);
    // A lying server (a wrong CRC-64) or one that sends none, per object, for the tests.
    let name = format!("{bucket}/{key}");
    let ranged = !is_head && get("range").is_some();
    let crc_header =
        if faults.no_crc.contains(&name) || (ranged && faults.no_crc_on_ranges.contains(&name)) {
            None
        } else if faults.wrong_crc.contains(&name) {
            Some((obj.crc64 ^ 0x5eed).to_string())
        } else {
            Some(obj.crc64.to_string())
        };
    let base = |status: StatusCode| {
        let b = Response::builder()
            .status(status)
            .header("x-oss-request-id", &ctx.request_id)
            .header("ETag", &obj.etag)
            .header("Last-Modified", &last_modified);
        match &crc_header {
            Some(crc) => b.header("x-oss-hash-crc64ecma", crc.as_str()),
            None => b,
        }
        .header("x-oss-object-type", "Normal")
        .header("x-oss-storage-class", "Standard")
        .header("Accept-Ranges", "bytes")
        .header("Server", "AliyunOSS")
        .header("Date", time::http_date(time::unix_now()))
    };
    if not_modified {
        record(state, ctx, None, 304);
        return base(StatusCode::NOT_MODIFIED)
            .body(EmuBody::empty())
            .expect("valid");
    }
    let standard = get("x-oss-range-behavior") == Some("standard");
    let range = match resolve_range(get("range"), obj.size, standard) {
        Ok(r) => r,
        Err(()) => {
            record(state, ctx, None, 416);
            return error_response(
                ctx,
                oss_err(
                    416,
                    "InvalidRange",
                    "The requested range cannot be satisfied.",
                    "0003-00000419",
                ),
            );
        }
    };
    let (start, end, status) = match range {
        Some((s, e)) => (s, e, StatusCode::PARTIAL_CONTENT),
        None => (0, obj.size, StatusCode::OK),
    };
    let mut b = base(status)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            "Content-Range",
            format!("bytes {}-{}/{}", start, end.saturating_sub(1), obj.size),
        );
    }
    record(
        state,
        ctx,
        range.or(Some((0, obj.size))).filter(|_| !is_head),
        status.as_u16(),
    );
    if is_head || start == end {
        return b.body(EmuBody::empty()).expect("valid");
    }
    // Stalled objects hang before the first byte, as a slow or overloaded server would.
    let stall_name = format!("{bucket}/{key}");
    while state.faults.lock().unwrap().stalled.contains(&stall_name) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = {
        let mut rng = state.rng.lock().unwrap();
        let roll: f64 = rng.gen();
        let at = start + rng.gen_range(0..(end - start));
        if roll < faults.reset_rate {
            Some((at, true))
        } else if roll < faults.reset_rate + faults.truncate_rate {
            Some((at, false))
        } else {
            None
        }
    };
    if cut.is_some() {
        bump(state, ctx, |c| c.injected_cuts += 1);
    }
    let (tx, rx) = mpsc::channel(2);
    let st = state.clone();
    let conn = conn.clone();
    let counter_ctx = Ctx {
        seq: ctx.seq,
        request_id: String::new(),
        host_id: String::new(),
        method: ctx.method.clone(),
        bucket: ctx.bucket.clone(),
        key: ctx.key.clone(),
    };
    let path = obj.path.clone();
    let etag = obj.etag.clone();
    tokio::spawn(async move {
        let plan = BodyPlan {
            path,
            etag,
            start,
            end,
            cut,
        };
        let result = stream_file(&st, &conn, &counter_ctx, plan, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    b.body(EmuBody {
        full: None,
        rx: Some(rx),
    })
    .expect("valid")
}
