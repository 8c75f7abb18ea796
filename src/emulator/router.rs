//! One request from arrival to answer: addressing (virtual-hosted or path style), the
//! signature check, injected errors, then the object, listing or admin handler.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Method;
use hyper::Request;
use rand::Rng;

use crate::oss::sign;

use super::admin::admin_handle;
use super::auth::verify_auth;
use super::listing::list_objects;
use super::objects::get_object;
use super::paths::bucket_dir;
use super::response::{error_response, oss_err, parse_query, request_id, Ctx, Resp};
use super::{bump, record, ConnCtx, State};

pub(super) async fn handle(state: Arc<State>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Resp {
    let seq = state.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let path = req.uri().path().to_string();
    if let Some(admin) = path.strip_prefix("/-/") {
        return admin_handle(&state, admin.to_string(), req).await;
    }
    let faults = state.faults.lock().unwrap().clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let host_name = host
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&host)
        .to_string();
    let mut ctx = Ctx {
        seq,
        request_id: request_id(&state, seq),
        host_id: host_name.clone(),
        method: req.method().clone(),
        bucket: String::new(),
        key: String::new(),
    };
    // Virtual-hosted when the first label of a non-IP host names a bucket; else path style.
    let first_label = host_name.split('.').next().unwrap_or("");
    let virtual_bucket = host_name.contains('.')
        && host_name.parse::<std::net::IpAddr>().is_err()
        && bucket_dir(&state.cfg.root, first_label).is_some();
    let decoded_path = match sign::percent_decode(&path) {
        Some(p) => p,
        None => {
            return error_response(
                &ctx,
                oss_err(
                    400,
                    "InvalidURI",
                    "Could not parse the specified URI.",
                    "0002-00000002",
                ),
            )
        }
    };
    let rest = decoded_path.strip_prefix('/').unwrap_or(&decoded_path);
    let (bucket, key) = if virtual_bucket {
        (Some(first_label.to_string()), rest.to_string())
    } else if rest.is_empty() {
        (None, String::new())
    } else {
        let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
        (Some(b.to_string()), k.to_string())
    };
    ctx.bucket = bucket.clone().unwrap_or_default();
    ctx.key = key.clone();
    let Some(query) = parse_query(req.uri().query().unwrap_or("")) else {
        return error_response(
            &ctx,
            oss_err(
                400,
                "InvalidArgument",
                "Malformed query string.",
                "0002-00000003",
            ),
        );
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let key_opt = if bucket.is_some() {
        Some(key.as_str())
    } else {
        None
    };
    if let Err(e) = verify_auth(
        &state,
        req.method().as_str(),
        bucket.as_deref(),
        key_opt,
        &query,
        &headers,
    ) {
        record(&state, &ctx, None, e.status.as_u16());
        return error_response(&ctx, e);
    }
    if bucket.is_some() && !key.is_empty() {
        if let Err(e) = super::auth::denied_by_policy(&state, &key, &headers) {
            record(&state, &ctx, None, e.status.as_u16());
            return error_response(&ctx, e);
        }
    }
    let is_object_or_list = bucket.is_some();
    if is_object_or_list {
        let dice: f64 = state.rng.lock().unwrap().gen();
        if faults.fail_nth.contains(&seq) || (faults.error_rate > 0.0 && dice < faults.error_rate) {
            let status = if faults.error_status == 500 { 500 } else { 503 };
            let (code, msg) = if status == 500 {
                (
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            } else {
                ("ServiceUnavailable", "Please reduce your request rate.")
            };
            record(&state, &ctx, None, status);
            bump(&state, &ctx, |c| c.injected_errors += 1);
            return error_response(&ctx, oss_err(status, code, msg, "0003-00000001"));
        }
    }
    let Some(bucket) = bucket else {
        return error_response(
            &ctx,
            oss_err(
                403,
                "AccessDenied",
                "ListBuckets is not served by this emulator.",
                "0003-00000201",
            ),
        );
    };
    // Only a valid name of a directory in the root is a bucket: `..`, `.` or an empty name
    // would otherwise turn into the root's parent or the root itself.
    if bucket_dir(&state.cfg.root, &bucket).is_none() {
        record(&state, &ctx, None, 404);
        let mut e = oss_err(
            404,
            "NoSuchBucket",
            "The specified bucket does not exist.",
            "0015-00000101",
        );
        e.extra.push(("BucketName", bucket.clone()));
        return error_response(&ctx, e);
    }
    match (req.method().clone(), key.is_empty()) {
        (Method::GET, true) => list_objects(&state, &ctx, &bucket, &query).await,
        (Method::GET, false) | (Method::HEAD, false) => {
            get_object(&state, &conn, &ctx, &bucket, &key, &headers, &faults).await
        }
        _ => error_response(
            &ctx,
            oss_err(405, "MethodNotAllowed", "The specified method is not allowed against this resource (the emulator is read-only).", "0003-00000001"),
        ),
    }
}
