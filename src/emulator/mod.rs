//! An OSS-compatible server for tests, demos and benchmarks: each subdirectory of a root is a
//! bucket, files below it are objects. It verifies V4 and V1 signatures and clock skew, answers
//! with the real service's error XML and codes, serves HeadObject, ranged and conditional
//! GetObject and ListObjectsV2, and can shape and break traffic on demand (latency, a bandwidth
//! cap per connection, injected 5xx, resets and short bodies, stalls) while counting requests
//! and bytes per object. It shares nothing with the client but `oss::sign`, so a client bug
//! cannot hide behind the same bug here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::oss::sign::{self, ParsedAuthorization};
use crate::oss::time;
use crate::oss::xml::escape;

/// Faults and shaping, changeable while the server runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Added before every answer.
    pub latency_ms: u64,
    /// Body bytes per second on each connection; 0 for no cap.
    pub bandwidth_per_connection: u64,
    /// Fraction of object and listing requests answered with `error_status`.
    pub error_rate: f64,
    /// 500 or 503 (default 503).
    pub error_status: u16,
    /// Request numbers (1-based, in arrival order) answered with `error_status`.
    pub fail_nth: Vec<u64>,
    /// Fraction of GET bodies cut midway by a TCP reset.
    pub reset_rate: f64,
    /// Fraction of GET bodies that end early with a clean close.
    pub truncate_rate: f64,
    /// `bucket/key` names whose GETs hang (before any byte) until removed from this list.
    pub stalled: Vec<String>,
}

/// Requests and body bytes for one object, or for the whole server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub get_requests: u64,
    pub head_requests: u64,
    pub list_requests: u64,
    pub body_bytes: u64,
    pub injected_errors: u64,
    pub injected_cuts: u64,
}

/// One request as it arrived (after its signature was checked).
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub seq: u64,
    pub method: String,
    pub bucket: String,
    pub key: String,
    /// Requested byte range `[start, end)` of a GET, after clamping.
    pub range: Option<(u64, u64)>,
    pub status: u16,
    pub at: Duration,
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub root: PathBuf,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub region: String,
    /// Serve requests without an Authorization header (a public-read bucket).
    pub allow_anonymous: bool,
    pub faults: Faults,
    /// Seed for the fault dice, so a failing run can be replayed.
    pub seed: u64,
}

impl EmulatorConfig {
    pub fn new(root: impl Into<PathBuf>, access_key_id: &str, access_key_secret: &str) -> Self {
        EmulatorConfig {
            root: root.into(),
            access_key_id: access_key_id.into(),
            access_key_secret: access_key_secret.into(),
            region: "cn-hangzhou".into(),
            allow_anonymous: false,
            faults: Faults::default(),
            seed: 1,
        }
    }
}

#[derive(Default)]
struct Stats {
    total: Counters,
    objects: HashMap<String, Counters>,
    log: Vec<LoggedRequest>,
}

struct State {
    cfg: EmulatorConfig,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    rng: Mutex<rand::rngs::StdRng>,
    seq: AtomicU64,
    started: Instant,
    crc_cache: Mutex<HashMap<PathBuf, (u64, i64, u64, u64)>>,
}

/// A running emulator. Dropping it without `shutdown` leaves the task running until the
/// runtime ends.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct ConnCtx {
    fd: RawFd,
    /// When the connection may next send body bytes under the bandwidth cap.
    next_free: Mutex<Instant>,
}

impl Emulator {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves until `shutdown`.
    pub async fn start(cfg: EmulatorConfig, addr: &str) -> std::io::Result<Emulator> {
        if !cfg.root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("emulator root {} is not a directory", cfg.root.display()),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            faults: Mutex::new(cfg.faults.clone()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(cfg.seed)),
            cfg,
            stats: Mutex::new(Stats::default()),
            seq: AtomicU64::new(0),
            started: Instant::now(),
            crc_cache: Mutex::new(HashMap::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop_rx.changed() => break,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let ctx = Arc::new(ConnCtx {
                    fd: stream.as_raw_fd(),
                    next_free: Mutex::new(Instant::now()),
                });
                let st = st.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(st, ctx, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        Ok(Emulator {
            state,
            addr,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `--endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn region(&self) -> &str {
        &self.state.cfg.region
    }

    pub fn root(&self) -> &Path {
        &self.state.cfg.root
    }

    pub fn faults(&self) -> Faults {
        self.state.faults.lock().unwrap().clone()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.state.faults.lock().unwrap() = f;
    }

    /// Changes the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.lock().unwrap());
    }

    pub fn totals(&self) -> Counters {
        self.state.stats.lock().unwrap().total.clone()
    }

    pub fn object_counters(&self, bucket: &str, key: &str) -> Counters {
        self.state
            .stats
            .lock()
            .unwrap()
            .objects
            .get(&format!("{bucket}/{key}"))
            .cloned()
            .unwrap_or_default()
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state.stats.lock().unwrap().log.clone()
    }

    pub fn reset_counters(&self) {
        *self.state.stats.lock().unwrap() = Stats::default();
    }

    /// Writes an object (atomically, so it gets a new ETag), creating the bucket if needed.
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) -> std::io::Result<()> {
        put_object_file(&self.state.cfg.root, bucket, key, data)
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Writes `root/bucket/key` through a temp file and rename (new inode, new ETag).
pub fn put_object_file(root: &Path, bucket: &str, key: &str, data: &[u8]) -> std::io::Result<()> {
    let path = object_path(root, bucket, key).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "key cannot be a file path",
        )
    })?;
    std::fs::create_dir_all(path.parent().expect("object has a parent"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, &path)
}

fn object_path(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    if key.is_empty() || key.ends_with('/') {
        return None;
    }
    let mut p = root.join(bucket);
    for comp in key.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." || comp.starts_with(".ossmount-") {
            return None;
        }
        p.push(comp);
    }
    Some(p)
}

type Resp = Response<EmuBody>;

/// A response body: fixed bytes, or chunks fed by a task (which may end with an error to cut
/// the connection).
pub struct EmuBody {
    full: Option<Bytes>,
    rx: Option<mpsc::Receiver<Result<Bytes, std::io::Error>>>,
}

impl EmuBody {
    fn empty() -> Self {
        EmuBody {
            full: None,
            rx: None,
        }
    }
    fn bytes(b: impl Into<Bytes>) -> Self {
        EmuBody {
            full: Some(b.into()),
            rx: None,
        }
    }
}

impl Body for EmuBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(b) = self.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.full, &self.rx) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

struct Ctx {
    seq: u64,
    request_id: String,
    host_id: String,
    method: Method,
    bucket: String,
    key: String,
}

fn request_id(state: &State, seq: u64) -> String {
    let t = state.started.elapsed().as_micros() as u64;
    format!("{:08X}{:016X}", (t & 0xffff_ffff) as u32, seq)
}

struct OssErr {
    status: StatusCode,
    code: &'static str,
    message: String,
    ec: &'static str,
    extra: Vec<(&'static str, String)>,
}

fn oss_err(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
    ec: &'static str,
) -> OssErr {
    OssErr {
        status: StatusCode::from_u16(status).expect("valid status"),
        code,
        message: message.into(),
        ec,
        extra: vec![],
    }
}

fn error_response(ctx: &Ctx, e: OssErr) -> Resp {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>{}</Code>\n  <Message>{}</Message>\n  <RequestId>{}</RequestId>\n  <HostId>{}</HostId>\n",
        e.code,
        escape(&e.message),
        ctx.request_id,
        escape(&ctx.host_id)
    );
    for (k, v) in &e.extra {
        xml.push_str(&format!("  <{k}>{}</{k}>\n", escape(v)));
    }
    xml.push_str(&format!(
        "  <EC>{}</EC>\n  <RecommendDoc>https://api.aliyun.com/troubleshoot?q={}</RecommendDoc>\n</Error>\n",
        e.ec, e.ec
    ));
    let mut b = Response::builder()
        .status(e.status)
        .header("x-oss-request-id", &ctx.request_id)
        .header("x-oss-ec", e.ec)
        .header("Server", "AliyunOSS")
        .header("Date", time::http_date(time::unix_now()));
    if ctx.method == Method::HEAD {
        use base64::Engine;
        b = b.header(
            "x-oss-err",
            base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
        );
        return b.body(EmuBody::empty()).expect("valid response");
    }
    b.header("Content-Type", "application/xml")
        .header("Content-Length", xml.len())
        .body(EmuBody::bytes(xml))
        .expect("valid response")
}

fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
    if raw.is_empty() {
        return Some(vec![]);
    }
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((sign::percent_decode(k)?, sign::percent_decode(v)?))
        })
        .collect()
}

async fn handle(state: Arc<State>, conn: Arc<ConnCtx>, req: Request<Incoming>) -> Resp {
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
        && state.cfg.root.join(first_label).is_dir();
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
    if sign::uri_encode(&bucket, false) != bucket || !state.cfg.root.join(&bucket).is_dir() {
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

fn verify_auth(
    state: &State,
    method: &str,
    bucket: Option<&str>,
    key: Option<&str>,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> Result<(), OssErr> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let Some(auth) = get("authorization") else {
        if state.cfg.allow_anonymous {
            return Ok(());
        }
        return Err(oss_err(
            403,
            "AccessDenied",
            "You have no right to access this object because of bucket acl.",
            "0003-00000001",
        ));
    };
    let parsed = sign::parse_authorization(auth).ok_or_else(|| {
        oss_err(
            400,
            "InvalidArgument",
            "Authorization header is invalid.",
            "0002-00000201",
        )
    })?;
    let cfg = &state.cfg;
    let bad_ak = || {
        oss_err(
            403,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
            "0002-00000902",
        )
    };
    let skewed = |t: i64| (t - time::unix_now()).abs() > 15 * 60;
    let too_skewed = || {
        oss_err(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            "0002-00000504",
        )
    };
    let (string_to_sign, expected, provided, ak) = match parsed {
        ParsedAuthorization::V4 {
            access_key_id,
            date8,
            region,
            product,
            additional,
            signature,
        } => {
            if access_key_id != cfg.access_key_id {
                return Err(bad_ak());
            }
            let x_oss_date = get("x-oss-date").ok_or_else(|| {
                oss_err(
                    403,
                    "AccessDenied",
                    "Missing x-oss-date header for V4 signature.",
                    "0002-00000226",
                )
            })?;
            let t = time::parse_iso8601_basic(x_oss_date).ok_or_else(|| {
                oss_err(
                    403,
                    "AccessDenied",
                    "Invalid x-oss-date header.",
                    "0002-00000227",
                )
            })?;
            if skewed(t) {
                return Err(too_skewed());
            }
            if get("x-oss-content-sha256").is_none() {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "Missing x-oss-content-sha256 header.",
                    "0002-00000228",
                ));
            }
            if region != cfg.region || product != "oss" {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "The signing region in credential is invalid.",
                    "0002-00000229",
                ));
            }
            if date8 != x_oss_date[..8] {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "Invalid signing date in Authorization header.",
                    "0002-00000230",
                ));
            }
            if additional
                .iter()
                .any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
            {
                return Err(oss_err(
                    400,
                    "InvalidArgument",
                    "AdditionalHeaders must be lower-case names.",
                    "0002-00000209",
                ));
            }
            let cr = sign::V4Canonical {
                method,
                bucket,
                key,
                query,
                headers,
                additional: &additional,
            }
            .canonical_request();
            let scope = sign::v4_scope(&date8, &region, &product);
            let sts = sign::v4_string_to_sign(x_oss_date, &scope, &cr);
            let k = sign::v4_signing_key(&cfg.access_key_secret, &date8, &region, &product);
            (
                sts.clone(),
                sign::v4_signature(&k, &sts),
                signature,
                access_key_id,
            )
        }
        ParsedAuthorization::V1 {
            access_key_id,
            signature,
        } => {
            if access_key_id != cfg.access_key_id {
                return Err(bad_ak());
            }
            let date = get("x-oss-date").or_else(|| get("date")).unwrap_or("");
            let t = httpdate::parse_http_date(date)
                .map_err(|_| oss_err(403, "AccessDenied", "Invalid Date header.", "0002-00000227"))?
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if skewed(t) {
                return Err(too_skewed());
            }
            let sts = sign::v1_string_to_sign(method, headers, bucket, key, query);
            (
                sts.clone(),
                sign::v1_signature(&cfg.access_key_secret, &sts),
                signature,
                access_key_id,
            )
        }
    };
    let equal = expected.len() == provided.len()
        && expected
            .bytes()
            .zip(provided.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !equal {
        let mut e = oss_err(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.", "0002-00000040");
        e.extra.push(("OSSAccessKeyId", ak));
        e.extra.push(("SignatureProvided", provided));
        e.extra.push(("StringToSign", string_to_sign));
        return Err(e);
    }
    Ok(())
}

fn record(state: &State, ctx: &Ctx, range: Option<(u64, u64)>, status: u16) {
    let mut s = state.stats.lock().unwrap();
    s.log.push(LoggedRequest {
        seq: ctx.seq,
        method: ctx.method.to_string(),
        bucket: ctx.bucket.clone(),
        key: ctx.key.clone(),
        range,
        status,
        at: state.started.elapsed(),
    });
}

fn bump(state: &State, ctx: &Ctx, f: impl Fn(&mut Counters)) {
    let mut s = state.stats.lock().unwrap();
    f(&mut s.total);
    if !ctx.key.is_empty() {
        f(s.objects
            .entry(format!("{}/{}", ctx.bucket, ctx.key))
            .or_default());
    }
}

struct ObjectFile {
    path: PathBuf,
    size: u64,
    etag: String,
    mtime: SystemTime,
    crc64: u64,
}

fn etag_of(md: &std::fs::Metadata) -> String {
    let mut h = Sha256::new();
    h.update(md.size().to_le_bytes());
    h.update(md.mtime().to_le_bytes());
    h.update(md.mtime_nsec().to_le_bytes());
    h.update(md.ino().to_le_bytes());
    format!("\"{}\"", hex::encode_upper(&h.finalize()[..16]))
}

async fn stat_object(state: &Arc<State>, path: PathBuf) -> Option<ObjectFile> {
    let md = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
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
            let p = path.clone();
            let crc = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let mut f = std::fs::File::open(p)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut crc = 0;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(crc);
                    }
                    crc = crate::crc64::update(crc, &buf[..n]);
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
fn resolve_range(
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

fn precondition_failed(state: &State, ctx: &Ctx, condition: &str) -> Resp {
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

fn etag_matches(cond: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    cond.split(',')
        .any(|c| c.trim() == "*" || c.trim().trim_matches('"') == bare)
}

async fn get_object(
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
    let obj = match object_path(&state.cfg.root, bucket, key) {
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
    let base = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("x-oss-request-id", &ctx.request_id)
            .header("ETag", &obj.etag)
            .header("Last-Modified", &last_modified)
            .header("x-oss-hash-crc64ecma", obj.crc64.to_string())
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
    tokio::spawn(async move {
        let plan = BodyPlan {
            path,
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

/// What one GET body sends: `[start, end)` of `path`, cut at `cut.0` (by a reset when
/// `cut.1`) if a fault was rolled.
struct BodyPlan {
    path: PathBuf,
    start: u64,
    end: u64,
    cut: Option<(u64, bool)>,
}

async fn stream_file(
    state: &Arc<State>,
    conn: &ConnCtx,
    ctx: &Ctx,
    plan: BodyPlan,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> std::io::Result<()> {
    let BodyPlan {
        path,
        start,
        end,
        cut,
    } = plan;
    let mut file = std::fs::File::open(&path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    while pos < end {
        let rate = state.faults.lock().unwrap().bandwidth_per_connection;
        let chunk_cap: u64 = if rate > 0 {
            (rate / 50).clamp(4096, 256 << 10)
        } else {
            256 << 10
        };
        let mut want = chunk_cap.min(end - pos);
        if let Some((at, _)) = cut {
            if pos >= at {
                let (_, reset) = cut.expect("cut");
                if reset {
                    // SO_LINGER 0 turns the close into a RST, as a dropped connection would.
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: fd belongs to this live connection; setsockopt only reads `linger`.
                    unsafe {
                        libc::setsockopt(
                            conn.fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected cut",
                ));
            }
            want = want.min(at - pos).max(1);
        }
        let mut buf = vec![0u8; want as usize];
        file.read_exact(&mut buf)?;
        if rate > 0 {
            let wait_until = {
                let mut nf = conn.next_free.lock().unwrap();
                let now = Instant::now();
                let begin = if *nf > now { *nf } else { now };
                *nf = begin + Duration::from_secs_f64(want as f64 / rate as f64);
                *nf
            };
            tokio::time::sleep_until(wait_until.into()).await;
        }
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            return Ok(()); // the client went away
        }
        bump(state, ctx, |c| c.body_bytes += want);
        pos += want;
    }
    Ok(())
}

struct Listed {
    key: String,
    size: u64,
    mtime: SystemTime,
    etag: String,
}

fn walk_bucket(root: &Path) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
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

async fn list_objects(
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
    let root = state.cfg.root.join(bucket);
    let all = tokio::task::spawn_blocking(move || walk_bucket(&root))
        .await
        .unwrap_or_default();
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
                    time::iso8601_extended(item.mtime),
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

#[derive(Serialize)]
struct CountersReport {
    total: Counters,
    objects: HashMap<String, Counters>,
}

/// `/-/counters` (GET), `/-/faults` (GET, PUT with JSON), `/-/reset` (POST): for scripts and
/// benchmarks driving a separate `ossmount serve`. Unsigned: the emulator serves loopback only.
async fn admin_handle(state: &Arc<State>, path: String, req: Request<Incoming>) -> Resp {
    let json = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("Content-Type", "application/json")
            .header("Content-Length", body.len())
            .body(EmuBody::bytes(body))
            .expect("valid")
    };
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "counters") => {
            let s = state.stats.lock().unwrap();
            let r = CountersReport {
                total: s.total.clone(),
                objects: s.objects.clone(),
            };
            json(200, serde_json::to_string_pretty(&r).unwrap_or_default())
        }
        (Method::GET, "faults") => json(
            200,
            serde_json::to_string_pretty(&*state.faults.lock().unwrap()).unwrap_or_default(),
        ),
        (Method::PUT, "faults") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match serde_json::from_slice::<Faults>(&body) {
                Ok(f) => {
                    *state.faults.lock().unwrap() = f;
                    json(200, "{}".into())
                }
                Err(e) => json(400, format!("{{\"error\":{:?}}}", e.to_string())),
            }
        }
        (Method::POST, "reset") => {
            *state.stats.lock().unwrap() = Stats::default();
            json(200, "{}".into())
        }
        _ => json(404, "{\"error\":\"unknown admin path\"}".into()),
    }
}

impl Emulator {
    /// A one-line summary for `serve` to print on exit.
    pub fn summary(&self) -> String {
        let t = self.totals();
        format!(
            "served {} requests ({} GET, {} HEAD, {} list), {} body bytes; injected {} errors and {} cuts",
            t.requests, t.get_requests, t.head_requests, t.list_requests, t.body_bytes, t.injected_errors, t.injected_cuts
        )
    }

    /// Per-object counters, for printing.
    pub fn object_report(&self) -> Vec<(String, Counters)> {
        let s = self.state.stats.lock().unwrap();
        let mut v: Vec<_> = s
            .objects
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_standard_behaviour() {
        assert_eq!(
            resolve_range(Some("bytes=0-499"), 1000, true),
            Ok(Some((0, 500)))
        );
        assert_eq!(
            resolve_range(Some("bytes=500-2000"), 1000, true),
            Ok(Some((500, 1000)))
        );
        assert_eq!(resolve_range(Some("bytes=500-2000"), 1000, false), Ok(None));
        assert_eq!(resolve_range(Some("bytes=1000-"), 1000, true), Err(()));
        assert_eq!(resolve_range(Some("bytes=1000-"), 1000, false), Ok(None));
        assert_eq!(
            resolve_range(Some("bytes=-100"), 1000, true),
            Ok(Some((900, 1000)))
        );
        assert_eq!(resolve_range(Some("byte=0-1"), 1000, true), Ok(None));
    }

    #[test]
    fn keys_never_escape_the_root() {
        let root = Path::new("/srv");
        assert_eq!(
            object_path(root, "b", "a/b.txt"),
            Some(PathBuf::from("/srv/b/a/b.txt"))
        );
        assert_eq!(object_path(root, "b", "../x"), None);
        assert_eq!(object_path(root, "b", "a//b"), None);
        assert_eq!(object_path(root, "b", "dir/"), None);
    }
}
