//! An OSS-compatible server for tests, demos and benchmarks: each subdirectory of a root is a
//! bucket, files below it are objects. It verifies V4 and V1 signatures and clock skew, answers
//! with the real service's error XML and codes, serves HeadObject, ranged and conditional
//! GetObject and ListObjectsV2, and can shape and break traffic on demand (latency, a bandwidth
//! cap per connection, injected 5xx, resets and short bodies, stalls) while counting requests
//! and bytes per object. It shares nothing with the client but `oss::sign`, so a client bug
//! cannot hide behind the same bug here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod admin;
mod auth;
mod body;
mod listing;
mod objects;
mod paths;
mod response;
mod router;

use response::Ctx;
use router::handle;

/// Faults and shaping, changeable while the server runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Added before every answer.
    pub latency_ms: u64,
    /// Body bytes per second on each connection; 0 for no cap.
    pub bandwidth_per_connection: u64,
    /// Body bytes per second across every connection (the link's width); 0 for no cap.
    pub bandwidth_total: u64,
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
    /// `bucket/key` names whose answers announce a wrong CRC-64 (a lying server).
    pub wrong_crc: Vec<String>,
    /// `bucket/key` names whose answers carry no CRC-64 header.
    pub no_crc: Vec<String>,
    /// `bucket/key` names whose ranged GETs' answers carry no CRC-64 header (a proxy that
    /// drops it); HEADs and whole GETs keep it.
    pub no_crc_on_ranges: Vec<String>,
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
    /// The most GET bodies streamed at the same time (a reader's parallelism, seen by the server).
    pub peak_concurrent_bodies: u64,
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
    /// Further long-term keys, each a RAM user whose policy may deny reading some keys.
    pub restricted: Vec<RestrictedKey>,
}

/// A key pair whose policy lets it list everything but not read objects under
/// `denied_prefixes` (their GET and HEAD answer 403 AccessDenied).
#[derive(Debug, Clone)]
pub struct RestrictedKey {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub denied_prefixes: Vec<String>,
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
            restricted: Vec::new(),
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
    /// GET bodies streaming now, in all and per `bucket/key`; kept apart from `stats` so a
    /// reset of the counters does not lose bodies still going.
    streaming: Mutex<(u64, HashMap<String, u64>)>,
    rng: Mutex<rand::rngs::StdRng>,
    seq: AtomicU64,
    started: Instant,
    crc_cache: Mutex<HashMap<PathBuf, (u64, i64, u64, u64)>>,
    temporary: TemporaryKeys,
    /// Recent listing walks by directory, reused by the next pages of the same listing.
    listing_snapshots: listing::Snapshots,
    /// When the shared link is free again (`bandwidth_total`).
    link_free: Mutex<Instant>,
}

/// Temporary credentials (STS-style: key id, secret, security token) the emulator accepts
/// until they expire, beside its one long-term key. Stand-ins for the ECS metadata service
/// or STS register what they hand out here, so a test sees keys rotate for real.
#[derive(Clone, Default)]
pub struct TemporaryKeys(Arc<Mutex<Vec<TemporaryKey>>>);

#[derive(Clone, Debug)]
struct TemporaryKey {
    access_key_id: String,
    secret: String,
    token: String,
    expires: SystemTime,
}

impl TemporaryKeys {
    pub fn issue(&self, access_key_id: &str, secret: &str, token: &str, expires: SystemTime) {
        self.0.lock().unwrap().push(TemporaryKey {
            access_key_id: access_key_id.into(),
            secret: secret.into(),
            token: token.into(),
            expires,
        });
    }

    /// Withdraws a key before it expires (as a rotation that revokes the old STS keys would):
    /// requests signed with it are then refused with `InvalidAccessKeyId`. Whether it was
    /// issued.
    pub fn revoke(&self, access_key_id: &str) -> bool {
        let mut keys = self.0.lock().unwrap();
        let before = keys.len();
        keys.retain(|k| k.access_key_id != access_key_id);
        keys.len() != before
    }

    /// The secret and token of a temporary key id, with whether it has expired.
    fn lookup(&self, access_key_id: &str) -> Option<(String, String, bool)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.access_key_id == access_key_id)
            .map(|k| {
                (
                    k.secret.clone(),
                    k.token.clone(),
                    k.expires <= SystemTime::now(),
                )
            })
    }
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
            streaming: Mutex::new((0, HashMap::new())),
            seq: AtomicU64::new(0),
            started: Instant::now(),
            crc_cache: Mutex::new(HashMap::new()),
            temporary: TemporaryKeys::default(),
            listing_snapshots: listing::Snapshots::default(),
            link_free: Mutex::new(Instant::now()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            let conn_stop = stop_rx.clone();
            let on_connection = move |(stream, _): (tokio::net::TcpStream, _)| {
                let _ = stream.set_nodelay(true);
                let ctx = Arc::new(ConnCtx {
                    fd: stream.as_raw_fd(),
                    next_free: Mutex::new(Instant::now()),
                });
                let st = st.clone();
                let mut conn_stop = conn_stop.clone();
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
            };
            tokio::select! {
                _ = crate::net::accept_loop("emulator", || listener.accept(), on_connection) => {}
                _ = stop_rx.changed() => {}
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

    /// GET bodies of `bucket/key` streaming now (a request answered and not yet sent whole
    /// nor dropped by the client).
    pub fn bodies_streaming(&self, bucket: &str, key: &str) -> u64 {
        let streaming = self.state.streaming.lock().unwrap();
        streaming
            .1
            .get(&format!("{bucket}/{key}"))
            .copied()
            .unwrap_or(0)
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

    /// Where stand-ins register the temporary credentials they hand out.
    pub fn temporary_keys(&self) -> TemporaryKeys {
        self.state.temporary.clone()
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Writes `root/bucket/key` through a temp file and rename (new inode, new ETag).
pub fn put_object_file(root: &Path, bucket: &str, key: &str, data: &[u8]) -> std::io::Result<()> {
    let path = paths::object_path(root, bucket, key).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a valid bucket name, or a key that cannot be a path below it",
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
    use super::objects::resolve_range;

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
}
