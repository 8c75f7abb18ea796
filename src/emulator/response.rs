//! Answers as the service writes them: the response body type (fixed bytes or a fed stream
//! that can end with a reset), request ids, the error document (in the body, or in
//! `x-oss-err` for HEAD), and query parsing. Must not decide what to answer.

use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use bytes::Bytes;
use hyper::body::Body;
use hyper::body::Frame;
use hyper::body::SizeHint;
use hyper::Method;
use hyper::Response;
use hyper::StatusCode;
use tokio::sync::mpsc;

use crate::oss::sign;
use crate::oss::time;
use crate::oss::xml::escape;

use super::State;

pub(super) type Resp = Response<EmuBody>;

/// A response body: fixed bytes, or chunks fed by a task (which may end with an error to cut
/// the connection).
pub struct EmuBody {
    pub(super) full: Option<Bytes>,
    pub(super) rx: Option<mpsc::Receiver<Result<Bytes, std::io::Error>>>,
}

impl EmuBody {
    pub(super) fn empty() -> Self {
        EmuBody {
            full: None,
            rx: None,
        }
    }
    pub(super) fn bytes(b: impl Into<Bytes>) -> Self {
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

pub(super) struct Ctx {
    pub(super) seq: u64,
    pub(super) request_id: String,
    pub(super) host_id: String,
    pub(super) method: Method,
    pub(super) bucket: String,
    pub(super) key: String,
}

pub(super) fn request_id(state: &State, seq: u64) -> String {
    let t = state.started.elapsed().as_micros() as u64;
    format!("{:08X}{:016X}", (t & 0xffff_ffff) as u32, seq)
}

pub(super) struct OssErr {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) ec: &'static str,
    pub(super) extra: Vec<(&'static str, String)>,
}

pub(super) fn oss_err(
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

pub(super) fn error_response(ctx: &Ctx, e: OssErr) -> Resp {
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

pub(super) fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
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
