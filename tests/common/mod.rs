//! Helpers shared by the integration tests: an emulator on a temp dir, clients for it, the
//! `ossmount` binary, and bounded waits. Every wait a test makes has a bound and fails naming
//! what did not happen (a child process that does not exit, a future that does not resolve):
//! a hung test is a failed test, never a hung suite.
#![allow(dead_code)]

pub mod chaos;
pub mod model;
pub mod mount;
pub mod soak;
pub mod soak_reader;

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ossmount::emulator::{Emulator, EmulatorConfig};
use ossmount::oss::{ClientConfig, Credentials, Endpoint, OssClient, Secret};

pub const AK: &str = "test-ak-0001";
pub const SK: &str = "test-secret-DO-NOT-PRINT-9f8e7d";
pub const BUCKET: &str = "test-bucket";

pub struct Server {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
    /// Mountpoints, caches and other files of the test: removed with the server.
    pub scratch: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// `start` with the emulator's configuration adjusted first (e.g. unsigned requests
    /// allowed, for curl in a benchmark).
    pub async fn start_with(adjust: impl FnOnce(&mut EmulatorConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        let mut cfg = EmulatorConfig::new(dir.path(), AK, SK);
        adjust(&mut cfg);
        let emu = Emulator::start(cfg, "127.0.0.1:0").await.unwrap();
        Server {
            emu,
            dir,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(key)
    }

    /// The byte ranges of `key`'s ranged GETs since request number `from`, in arrival order.
    pub fn get_ranges(&self, key: &str, from: usize) -> Vec<(u64, u64)> {
        self.emu.request_log()[from..]
            .iter()
            .filter(|r| r.key == key && r.method == "GET")
            .filter_map(|r| r.range)
            .collect()
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        self.emu.put_object(BUCKET, key, data).unwrap();
    }

    /// Writes a seeded object of `len` bytes without holding it in memory.
    pub fn put_sample(&self, key: &str, seed: u64, len: u64) {
        ossmount::sample::write_file(&self.object_path(key), seed, len).unwrap();
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new(Endpoint::parse(&self.emu.endpoint()).unwrap());
        cfg.region = Some("cn-hangzhou".into());
        cfg.credentials = Some(Credentials {
            access_key_id: AK.into(),
            access_key_secret: Secret::new(SK),
            security_token: None,
        });
        cfg.retry.base_delay = Duration::from_millis(5);
        cfg.retry.max_delay = Duration::from_millis(100);
        cfg
    }

    pub fn client(&self) -> OssClient {
        OssClient::new(self.client_config()).unwrap()
    }

    /// Environment for running the `ossmount` binary against this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OSS_ENDPOINT", self.emu.endpoint()),
            ("OSS_REGION", "cn-hangzhou".into()),
            ("OSS_ACCESS_KEY_ID", AK.into()),
            ("OSS_ACCESS_KEY_SECRET", SK.into()),
            // Never ask the real ECS metadata service, whatever a test leaves out.
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()),
        ]
    }
}

/// The `ossmount` binary: cargo names it for integration tests; an example finds it in its
/// target directory (`target/<profile>/ossmount`, beside `examples/`).
pub fn bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ossmount") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running program's path");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ossmount"))
        .expect("a target directory")
}

/// Runs `ossmount ARGS` with `env` off the async runtime (bounded: 120 s); returns the exit
/// status and stdout followed by stderr.
pub async fn run_cli(args: &[&str], env: Vec<(&'static str, String)>) -> (ExitStatus, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = format!("ossmount {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(args)
            .envs(env)
            .output_within(Duration::from_secs(120), &what)
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// `Command::output` and `Command::status` with a bound: a child still running after `limit`
/// is killed and the test fails naming `what` (with what it printed so far), instead of
/// waiting for it for ever.
pub trait CommandWithin {
    /// Like `output` (stdin null, stdout and stderr captured); `Err` only if it cannot start.
    fn output_within(&mut self, limit: Duration, what: &str) -> std::io::Result<Output>;
    /// Like `status` (stdio inherited); `Err` only if it cannot start.
    fn status_within(&mut self, limit: Duration, what: &str) -> std::io::Result<ExitStatus>;
}

impl CommandWithin for Command {
    fn output_within(&mut self, limit: Duration, what: &str) -> std::io::Result<Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(output_within(child, limit, what))
    }

    fn status_within(&mut self, limit: Duration, what: &str) -> std::io::Result<ExitStatus> {
        let mut child = self.spawn()?;
        Ok(wait_within(&mut child, limit, what))
    }
}

/// Waits for `child` to exit; after `limit` it is killed and reaped, and `None` returned.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `child.wait()` within `limit`, else the child is killed and the test fails naming `what`.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    wait_or_kill(child, limit)
        .unwrap_or_else(|| panic!("{what} did not exit within {limit:?} (killed)"))
}

/// `child.wait_with_output()` within `limit` (stdout and stderr must be piped), else the child
/// is killed and the test fails naming `what`, with what it printed.
pub fn output_within(mut child: Child, limit: Duration, what: &str) -> Output {
    // Both pipes are drained while the child runs, so a chatty child never blocks on a full
    // pipe; each drain ends when the pipe closes.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        } else {
            let _ = tx.send(Vec::new());
        }
        rx
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = wait_or_kill(&mut child, limit);
    // A descendant that kept a pipe open would hold `output` for ever: bounded too.
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>, name: &str| match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(bytes) => bytes,
            Err(_) if status.is_none() => Vec::new(),
            Err(_) => {
                panic!("{what} exited but its {name} stayed open for 30 s (a descendant holds it)")
            }
        };
    let (stdout, stderr) = (collect(out, "stdout"), collect(err, "stderr"));
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not exit within {limit:?} (killed); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// `fut` within `limit`, else the test fails naming `what`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {limit:?}"))
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}
