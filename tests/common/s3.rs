//! The S3 server of the `s3://` tests: s3s-fs, a third-party S3 server from crates.io that
//! checks SigV4, started in the test's process on 127.0.0.1 over a temp directory (each
//! subdirectory a bucket), behind a relay that logs every request and can lie, refuse or slow
//! down: a byte flipped in a body, 503 SlowDown answers, every ranged GET held back, and the
//! body bytes of ranged GETs counted as they are sent. Included by path (`#[path]`) from the
//! tests that use it, so the other tests do not build it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const AK: &str = "s3-test-ak-0001";
pub const SK: &str = "s3-test-secret-DO-NOT-PRINT-4c1d9e";
pub const BUCKET: &str = "s3-bucket";
pub const MIB: u64 = 1 << 20;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// The `x-amz-security-token` it carried.
    pub token: Option<String>,
}

pub struct S3Server {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Lie in the body of every GET whose range starts here: its first byte flipped.
    pub flip_part_at: Arc<Mutex<Option<u64>>>,
    /// Answer this many more ranged GETs with 503 SlowDown instead of passing them on.
    pub slow_downs_left: Arc<Mutex<u32>>,
    /// Hold every ranged GET's answer this long before sending it (a slow link).
    pub body_delay: Arc<Mutex<Duration>>,
    /// Hold the answer of every GET whose range starts here this long (one slow part).
    pub hold_part_at: Arc<Mutex<Option<(u64, Duration)>>>,
    /// Body bytes of the ranged GETs answered so far (as the relay sent them).
    pub body_bytes: Arc<AtomicU64>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        S3Server::start_relayed(true).await
    }

    /// s3s-fs answering straight, without the relay: bodies stream as the server reads them
    /// (the relay holds each whole body in memory, fine for tests, not for a GiB), and
    /// nothing is logged, changed or counted (a benchmark counts in front of it).
    pub async fn start_streaming() -> S3Server {
        S3Server::start_relayed(false).await
    }

    async fn start_relayed(relayed: bool) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(dir.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let flip_part_at = Arc::new(Mutex::new(None));
        let flip = flip_part_at.clone();
        let slow_downs_left = Arc::new(Mutex::new(0));
        let slow = slow_downs_left.clone();
        let body_delay = Arc::new(Mutex::new(Duration::ZERO));
        let delay = body_delay.clone();
        let hold_part_at = Arc::new(Mutex::new(None));
        let hold_at = hold_part_at.clone();
        let body_bytes = Arc::new(AtomicU64::new(0));
        let counted = body_bytes.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                if !relayed {
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(socket);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                    continue;
                }
                let log = log.clone();
                let flip = flip.clone();
                let slow = slow.clone();
                let delay = delay.clone();
                let hold_at = hold_at.clone();
                let counted = counted.clone();
                let logged = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let range = req
                            .headers()
                            .get("range")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let lie = match (*flip.lock().unwrap(), &range) {
                            (Some(at), Some(r)) => r.starts_with(&format!("bytes={at}-")),
                            _ => false,
                        };
                        let held = match (*hold_at.lock().unwrap(), &range) {
                            (Some((at, d)), Some(r)) if r.starts_with(&format!("bytes={at}-")) => {
                                Some(d)
                            }
                            _ => None,
                        };
                        let slow_down = range.is_some() && {
                            let mut left = slow.lock().unwrap();
                            let refuse = *left > 0;
                            if refuse {
                                *left -= 1;
                            }
                            refuse
                        };
                        let ranged = req.method() == hyper::Method::GET && range.is_some();
                        log.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            range,
                            token: req
                                .headers()
                                .get("x-amz-security-token")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                        });
                        let answer =
                            (!slow_down).then(|| hyper::service::Service::call(&service, req));
                        let hold = match (ranged, held) {
                            (true, Some(d)) => d,
                            (true, None) => *delay.lock().unwrap(),
                            (false, _) => Duration::ZERO,
                        };
                        let counted = ranged.then(|| counted.clone());
                        relay(answer, lie, hold, counted)
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(socket);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, logged)
                        .await;
                });
            }
        });
        S3Server {
            endpoint,
            dir,
            scratch: tempfile::tempdir().unwrap(),
            seen,
            flip_part_at,
            slow_downs_left,
            body_delay,
            hold_part_at,
            body_bytes,
            accept_loop,
        }
    }

    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(key)
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        let path = self.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Uploads `data` with a real, signed PutObject that carries its CRC64NVME, as AWS SDKs
    /// do for new objects: s3s-fs checks the value against its own computation (a second,
    /// independent implementation) and keeps it. Returns the CRC64NVME.
    pub async fn put_with_crc64nvme(&self, key: &str, data: &[u8]) -> u64 {
        use base64::Engine;
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
        let client = reqwest::Client::new();
        let mut request = client
            .put(format!("{}/{BUCKET}/{key}", self.endpoint))
            .header(
                "x-amz-checksum-crc64nvme",
                base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()),
            )
            .body(data.to_vec())
            .build()
            .unwrap();
        let keys = reqsign::AwsCredential {
            access_key_id: AK.into(),
            secret_access_key: SK.into(),
            session_token: None,
            expires_in: None,
        };
        reqsign::AwsV4Signer::new("s3", "us-east-1")
            .sign(&mut request, &keys)
            .unwrap();
        let answer = client.execute(request).await.unwrap();
        let status = answer.status();
        assert!(
            status.is_success(),
            "PutObject: {status} {}",
            answer.text().await.unwrap_or_default()
        );
        crc
    }

    /// Makes `key` look like a multipart upload (ETag `<md5 of md5s>-3`, not the bytes' MD5),
    /// keeping what else s3s-fs knows of it (a CRC64NVME): s3s-fs 0.14 keeps an object's ETag
    /// and checksums in `.bucket-B.object-K.internal.json` (B and K in unpadded URL-safe
    /// base64) at its root, and answers with them when there are some.
    pub fn as_multipart_upload(&self, key: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let etag = "0123456789abcdef0123456789abcdef-3";
        let path = self.dir.path().join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64(BUCKET),
            b64(key)
        ));
        let mut info: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        info.insert("e_tag".into(), etag.into());
        std::fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
        format!("\"{etag}\"")
    }

    /// The binary's environment: this server, its keys, and no other AWS source.
    pub fn env(&self, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", AK.into()),
            ("AWS_SECRET_ACCESS_KEY", secret.into()),
            ("AWS_SESSION_TOKEN", String::new()),
            ("AWS_PROFILE", String::new()),
            // Never ask a real instance metadata service, whatever a test leaves out.
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                self.scratch
                    .path()
                    .join("no-credentials-file")
                    .display()
                    .to_string(),
            ),
        ]
    }

    pub fn requests_since(&self, from: usize) -> Vec<Seen> {
        self.seen.lock().unwrap()[from..].to_vec()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// The server's answer, with the first byte of its body flipped when `lie`, held back `hold`
/// and its body's bytes added to `counted`; without one, S3's throttling answer.
async fn relay(
    answer: Option<impl std::future::Future<Output = Result<s3s::HttpResponse, s3s::HttpError>>>,
    lie: bool,
    hold: Duration,
    counted: Option<Arc<AtomicU64>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, s3s::StdError> {
    use http_body_util::BodyExt;
    let Some(answer) = answer else {
        let slow_down = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>relay-slow-down</RequestId></Error>";
        return Ok(hyper::Response::builder()
            .status(503)
            .header("content-type", "application/xml")
            .body(http_body_util::Full::new(bytes::Bytes::from(slow_down)))?);
    };
    let (parts, body) = answer.await.map_err(s3s::StdError::from)?.into_parts();
    let mut bytes = body.collect().await?.to_bytes().to_vec();
    if lie && !bytes.is_empty() {
        bytes[0] ^= 0x01;
    }
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    if let Some(counted) = counted {
        counted.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }
    Ok(hyper::Response::from_parts(
        parts,
        http_body_util::Full::new(bytes::Bytes::from(bytes)),
    ))
}
