//! The admin endpoints of a running `serve` (`/-/counters`, `/-/faults`, `/-/reset`), for
//! scripts and benchmarks that drive a separate process.

use std::collections::HashMap;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use hyper::Request;
use hyper::Response;
use serde::Serialize;

use super::response::{EmuBody, Resp};
use super::{Counters, Faults, State, Stats};

#[derive(Serialize)]
pub(super) struct CountersReport {
    pub(super) total: Counters,
    pub(super) objects: HashMap<String, Counters>,
}

/// `/-/counters` (GET), `/-/faults` (GET, PUT with JSON), `/-/reset` (POST): for scripts and
/// benchmarks driving a separate `ossmount serve`. Unsigned: the emulator serves loopback only.
pub(super) async fn admin_handle(state: &Arc<State>, path: String, req: Request<Incoming>) -> Resp {
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
