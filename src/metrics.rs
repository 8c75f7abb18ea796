//! Prometheus metrics of a mount, served at `--metrics-addr` (`GET /metrics`, OpenMetrics
//! text, by the official `prometheus-client` crate): requests by kind and status and their
//! retries (seen by the store's client, OSS or S3), bytes fetched and served, cache hits,
//! misses and evictions, parts in flight, the background connections allowed (the adaptive
//! window), held, and the ramp's moves, how long demand reads waited, hydrations active,
//! complete and failed, and the cache's bytes against its capacity. Counters are read from the
//! layers that count them at each scrape; nothing here changes what they do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::fs::OssFs;
use crate::store::{RequestKind, RequestObserver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What the store's client reports as it sends; shared with the client as its observer.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Family<KindLabel, Counter>,
    /// Told of every "slow down" answer, so adaptive concurrency backs off.
    throttle: std::sync::OnceLock<Arc<crate::hydrate::ConnectionLimiter>>,
}

impl RequestMetrics {
    /// Reports 503 and 429 answers (also those the client retries) to `limiter`.
    pub fn report_throttling_to(&self, limiter: Arc<crate::hydrate::ConnectionLimiter>) {
        let _ = self.throttle.set(limiter);
    }
}

impl RequestObserver for RequestMetrics {
    fn request(&self, kind: RequestKind, status: u16, retry: bool) {
        if status == 503 || status == 429 {
            if let Some(limiter) = self.throttle.get() {
                limiter.note_throttled();
            }
        }
        let status = if status == 0 {
            "error".to_string()
        } else {
            status.to_string()
        };
        self.requests
            .get_or_create(&RequestLabels {
                kind: kind.as_str(),
                status,
            })
            .inc();
        if retry {
            self.retries
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .inc();
        }
    }
}

/// Server processes that died and were replaced under live mounts, as
/// the holder counts them (set by the node when it starts under a holder).
pub static SERVER_RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Of those, replacements asked for by `ossmount upgrade`.
pub static SERVER_UPGRADES: AtomicU64 = AtomicU64::new(0);

fn counter(r: &mut Registry, name: &str, help: &str, v: &AtomicU64) {
    r.register(name, help, ConstCounter::new(v.load(Ordering::Relaxed)));
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstGauge::new(v as i64));
}

/// The OpenMetrics text of everything a scrape shows.
pub fn render(requests: &RequestMetrics, fs: &OssFs) -> String {
    let mut r = Registry::with_prefix("ossmount");
    r.register(
        "requests",
        "Requests sent to OSS, by kind (head, get, list) and HTTP status (error: no answer)",
        requests.requests.clone(),
    );
    r.register(
        "request_retries",
        "Request attempts that repeated an earlier one, by kind",
        requests.retries.clone(),
    );
    counter(
        &mut r,
        "server_restarts",
        "Times the serving process died and a new one took the mounts over without unmounting",
        &SERVER_RESTARTS,
    );
    counter(
        &mut r,
        "server_upgrades",
        "Times the serving process was replaced by ossmount upgrade without unmounting",
        &SERVER_UPGRADES,
    );
    let cache = fs.cache();
    let engine = cache.engine_stats();
    let s = &fs.stats;
    counter(
        &mut r,
        "part_requests",
        "Ranged GETs of parts (all attempts)",
        &engine.part_requests,
    );
    counter(
        &mut r,
        "part_retries",
        "Part attempts after a failed one",
        &engine.part_retries,
    );
    counter(
        &mut r,
        "part_splits",
        "GETs started inside a streaming part for a read far ahead of it",
        &engine.part_splits,
    );
    counter(
        &mut r,
        "fetched_bytes",
        "Body bytes received from OSS",
        &engine.bytes_fetched,
    );
    counter(
        &mut r,
        "served_bytes",
        "Bytes returned to readers",
        &s.read_bytes,
    );
    counter(&mut r, "reads", "Reads served by ossmount", &s.reads);
    counter(&mut r, "read_errors", "Reads that failed", &s.read_errors);
    counter(
        &mut r,
        "cache_hits",
        "Reads whose bytes were all present",
        &s.cache_hits,
    );
    counter(
        &mut r,
        "cache_misses",
        "Reads that waited for parts",
        &s.cache_misses,
    );
    counter(
        &mut r,
        "evictions",
        "Cache entries evicted",
        &cache.stats().evictions,
    );
    counter(
        &mut r,
        "crc_mismatches",
        "Objects whose bytes failed the whole-object CRC-64",
        &engine.crc_mismatches,
    );
    counter(
        &mut r,
        "passthrough_opens",
        "Opens handed to the kernel (FUSE passthrough)",
        &s.passthrough_opens,
    );
    r.register(
        "demand_read_wait_seconds",
        "How long reads that needed missing parts waited for them",
        s.demand_wait.clone(),
    );
    let active = cache
        .active()
        .iter()
        .filter(|h| !h.is_complete() && h.failure().is_none())
        .count() as u64;
    gauge(
        &mut r,
        "hydrations_active",
        "Hydrations under way (not complete, not failed)",
        active,
    );
    counter(
        &mut r,
        "hydrations_completed",
        "Hydrations that became complete",
        &engine.hydrations_completed,
    );
    counter(
        &mut r,
        "hydrations_failed",
        "Hydrations that failed for good (object changed, CRC-64 mismatch)",
        &engine.hydrations_failed,
    );
    gauge(
        &mut r,
        "parts_in_flight",
        "Requests for parts in flight",
        cache.limiter().in_flight() as u64,
    );
    let limiter = cache.limiter();
    gauge(
        &mut r,
        "connections",
        "Background connections the limiter allows now (adaptive: follows the link)",
        limiter.window() as u64,
    );
    gauge(
        &mut r,
        "connections_in_use",
        "Background connections held now (follows `connections` while there is more to fetch)",
        limiter.background_in_use() as u64,
    );
    let moves = limiter.moves();
    r.register(
        "connection_steps_up",
        "Times the adaptive window grew because throughput rose with the last step",
        ConstCounter::new(moves.up),
    );
    r.register(
        "connection_steps_back",
        "Times the adaptive window took a step back after two intervals without gain",
        ConstCounter::new(moves.back),
    );
    r.register(
        "connection_throttle_cuts",
        "Times the adaptive window was halved because the server asked to slow down (503, 429)",
        ConstCounter::new(moves.throttled),
    );
    gauge(
        &mut r,
        "cache_used_bytes",
        "Bytes the cache holds (as du counts them)",
        cache.used_bytes(),
    );
    gauge(
        &mut r,
        "cache_capacity_bytes",
        "Most the cache may hold",
        cache.capacity().max_bytes,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("text encoding");
    out
}

/// Serves `GET /metrics` on `addr` until the task is dropped. Returns the bound address.
pub async fn serve(
    addr: &str,
    requests: Arc<RequestMetrics>,
    fs: Arc<OssFs>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let on_connection = move |(stream, _)| {
            let (requests, fs) = (requests.clone(), fs.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let (requests, fs) = (requests.clone(), fs.clone());
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header(
                                    "Content-Type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(bytes::Bytes::from(render(&requests, &fs))))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(bytes::Bytes::from_static(b"see /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.expect("a valid response"))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        };
        crate::net::accept_loop("metrics", || listener.accept(), on_connection).await;
    });
    Ok((bound, task))
}
