//! ossmount beside rclone (`rclone mount --vfs-cache-mode full`) and s3fs on one S3 server:
//! s3s-fs (the server of the `s3://` tests, tests/common/s3.rs) on 127.0.0.1 holding one
//! object generated from a seed (`--size`, 1GiB), behind a shaping TCP proxy that all three
//! tools go through: a rate cap per connection, an optional cap for the whole link shared by
//! all connections, and `--latency-ms` (20) before each request is passed on. The proxy
//! counts the bytes it sends to the clients ("MiB sent"). Link shapes (`--shapes`), as in
//! bench_link: `per-connection` (`--per-connection` 24MB/s each, no link cap) and `link`
//! (`--link-per-connection` 25MB/s each, `--link` 125MB/s in all).
//!
//! Cases (`--cases`, comma-separated), each on a fresh mount with an empty cache directory:
//! - `cp`: a cold `cp` of the object to a file on the local disk;
//! - `first`: the first 4 KiB at offset 700 MiB (`--offset`), timed from the open to the end
//!   of the `pread` (the file's attributes looked up before);
//! - `resume`: a cold `cp`, the mount's processes killed with SIGKILL once the proxy sent
//!   half the object, the mount detached (`umount -l`), a new mount on the same cache
//!   directory, then a `cp` of the whole object timed, and the MiB sent after the remount.
//!
//! Every copy is compared with the seed's bytes. `--keep-logs DIR` keeps each mount's log
//! (rclone's and s3fs's stderr, ossmount's command and node logs). Tools (`--tools`, default
//! `ossmount,rclone,s3fs`) are run with their defaults otherwise; one not installed is
//! skipped and the table says so (nothing is installed here). In each of `--rounds` (3)
//! rounds every case runs every tool, the tools' order rotating from round to round; the
//! table gives each case's median (min–max) seconds and the ratio of each tool's median to
//! ossmount's.
//!
//! As root (FUSE): `cargo build --bin ossmount --examples && ./target/debug/examples/bench_s3`;
//! a short run: `./target/debug/examples/bench_s3 --size 128MiB --rounds 1 --shapes link
//! --cases cp,first --offset 64MiB`.

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/s3.rs"]
mod s3_server;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::{arg, list};
use common::mount::{force_unmount, is_mounted, Mount};
use common::wait_until;
use ossmount::size::{human_bytes, parse_size};
use s3_server::{S3Server, AK, BUCKET, SK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: f64 = (1u64 << 20) as f64;
const SEED: u64 = 20;
const KEY: &str = "big.bin";
/// How far a connection's or the link's schedule may lag behind now: timers wake late, and
/// a lag this small is made up rather than lost.
const BURST: Duration = Duration::from_millis(5);
/// The longest any one copy may take.
const CP_LIMIT: Duration = Duration::from_secs(900);

// ---- the shaping proxy ----

/// The link the proxy imitates, changed between shapes, and what it sent.
struct Link {
    /// Bytes a second per connection, server to client; 0: no cap.
    per_connection: AtomicU64,
    /// Bytes a second for all connections together; 0: no cap.
    link: AtomicU64,
    latency_ms: AtomicU64,
    /// When the link is free for the next chunk.
    link_next: Mutex<Instant>,
    /// Bytes sent to the clients.
    sent: AtomicU64,
}

impl Link {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

async fn proxy(listener: tokio::net::TcpListener, upstream: std::net::SocketAddr, link: Arc<Link>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(relay_connection(client, upstream, link.clone()));
    }
}

async fn relay_connection(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    link: Arc<Link>,
) {
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Client to server: each read (a request) waits the link's latency first.
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let latency = link.latency_ms.load(Ordering::Relaxed);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    // Server to client: paced chunk by chunk by this connection's and the link's schedules.
    let down = async {
        let mut buf = vec![0u8; 32 << 10];
        let mut conn_next = Instant::now();
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let floor = now.checked_sub(BURST).unwrap_or(now);
            let per = link.per_connection.load(Ordering::Relaxed);
            let total = link.link.load(Ordering::Relaxed);
            let mut at = now;
            if per > 0 {
                at = conn_next.max(floor);
            }
            if total > 0 {
                let mut next = link.link_next.lock().unwrap();
                at = at.max(*next).max(floor);
                *next = at + Duration::from_secs_f64(n as f64 / total as f64);
            }
            if per > 0 {
                conn_next = at + Duration::from_secs_f64(n as f64 / per as f64);
            }
            if at > now {
                tokio::time::sleep_until(at.into()).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            link.sent.fetch_add(n as u64, Ordering::SeqCst);
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

// ---- the tools ----

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tool {
    Ossmount,
    Rclone,
    S3fs,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ossmount => "ossmount",
            Tool::Rclone => "rclone",
            Tool::S3fs => "s3fs",
        }
    }

    fn parse(s: &str) -> Tool {
        match s {
            "ossmount" => Tool::Ossmount,
            "rclone" => Tool::Rclone,
            "s3fs" => Tool::S3fs,
            _ => panic!("--tools: {s} is not one of ossmount, rclone, s3fs"),
        }
    }

    /// The executable, when installed.
    fn program(self) -> Option<PathBuf> {
        match self {
            Tool::Ossmount => Some(common::bin()).filter(|p| p.exists()),
            Tool::Rclone => in_path("rclone"),
            Tool::S3fs => in_path("s3fs"),
        }
    }

    /// `rclone version`'s or `s3fs --version`'s first line.
    fn version(self) -> String {
        let Some(program) = self.program() else {
            return "not installed".into();
        };
        let flag = match self {
            Tool::Ossmount => "--version",
            Tool::Rclone => "version",
            Tool::S3fs => "--version",
        };
        Command::new(program)
            .arg(flag)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    }
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// What the benchmark runs against.
struct Bench {
    s3: S3Server,
    /// The proxy's endpoint: what every tool is given.
    endpoint: String,
    link: Arc<Link>,
    size: u64,
    scratch: PathBuf,
}

/// A running rclone or s3fs in the foreground; dropping it unmounts, then ends the process
/// (SIGKILL after 10 s), then detaches a mount still there.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Daemon {
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg(&self.mnt).status();
            }
            let _ = wait_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

/// One tool's mount; always unmounted and reaped when dropped.
enum Mounted {
    Ossmount(Mount),
    Other(Daemon),
}

impl Mounted {
    fn file(&self) -> PathBuf {
        match self {
            Mounted::Ossmount(m) => m.path(KEY),
            Mounted::Other(d) => d.mnt.join(KEY),
        }
    }

    /// SIGKILL of the mount's processes, and the dead mount detached (`umount -l`).
    fn kill9(&mut self) {
        match self {
            Mounted::Ossmount(m) => m.kill9(),
            Mounted::Other(d) => d.kill9(),
        }
    }
}

impl Bench {
    /// Mounts the bucket with `tool` at `base/mnt`, its cache in `cache`.
    fn mount(&self, tool: Tool, base: &Path, cache: &Path) -> Mounted {
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(cache).unwrap();
        let program = tool.program().unwrap();
        let log = base.join(format!("{}.log", tool.name()));
        let mut cmd = Command::new(&program);
        match tool {
            Tool::Ossmount => {
                let env: Vec<(&'static str, String)> = self
                    .s3
                    .env(SK)
                    .into_iter()
                    .map(|(k, v)| match k {
                        "AWS_ENDPOINT_URL" => (k, self.endpoint.clone()),
                        _ => (k, v),
                    })
                    .collect();
                return Mounted::Ossmount(Mount::start_with_env(
                    &format!("s3://{BUCKET}/"),
                    &mnt,
                    cache,
                    &[],
                    env,
                ));
            }
            Tool::Rclone => {
                let config = self.scratch.join("rclone.conf");
                std::fs::write(&config, "").unwrap();
                cmd.args(["mount", &format!("bench:{BUCKET}")])
                    .arg(&mnt)
                    .args(["--vfs-cache-mode", "full", "--cache-dir"])
                    .arg(cache)
                    .arg("--config")
                    .arg(&config)
                    .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                    .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                    .env("RCLONE_CONFIG_BENCH_ENDPOINT", &self.endpoint)
                    .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", AK)
                    .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SK)
                    .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
                    .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true");
            }
            Tool::S3fs => {
                let passwd = self.scratch.join("s3fs.passwd");
                std::fs::write(&passwd, format!("{AK}:{SK}\n")).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
                cmd.arg(BUCKET).arg(&mnt).arg("-f").arg("-o").arg(format!(
                    "url={},use_path_request_style,passwd_file={},use_cache={},endpoint=us-east-1,sigv4",
                    self.endpoint,
                    passwd.display(),
                    cache.display()
                ));
            }
        }
        // The endpoint is plain HTTP: a CA bundle of the caller's environment is no concern
        // of theirs (rclone fails to start when AWS_CA_BUNDLE names one it cannot load).
        let child = cmd
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            mnt: mnt.clone(),
        };
        let c = d.child.as_mut().unwrap();
        let up = wait_until(Duration::from_secs(60), || {
            is_mounted(&mnt) || c.try_wait().unwrap().is_some()
        });
        assert!(
            up && is_mounted(&mnt),
            "{} did not mount: {}",
            tool.name(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The object must be there (a listing, its size) before anything is timed.
        let file = mnt.join(KEY);
        let seen = wait_until(Duration::from_secs(30), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() == self.size)
        });
        assert!(seen, "{} does not show {KEY}", tool.name());
        Mounted::Other(d)
    }
}

/// Runs `cp SRC DEST` (bounded: `CP_LIMIT`); its seconds.
fn timed_cp(src: &Path, dest: &Path) -> f64 {
    let t = Instant::now();
    let mut cp = Command::new("cp")
        .arg(src)
        .arg(dest)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut cp, CP_LIMIT);
    let secs = t.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = cp.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "cp failed: {err}");
    secs
}

/// Waits for `child` at most `limit`; kills it and panics past that.
fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a child did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `path` holds exactly the object's bytes.
fn verify(path: &Path, size: u64) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).unwrap_or(0) != size {
        return false;
    }
    let mut got = vec![0u8; 4 << 20];
    let mut want = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(got.len() as u64) as usize;
        if f.read_exact(&mut got[..n]).is_err() {
            return false;
        }
        ossmount::sample::fill(SEED, off, &mut want[..n]);
        if got[..n] != want[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

/// One measurement: seconds, MiB the proxy sent, and for a resume the MiB sent before the
/// kill.
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    sent: f64,
    before_kill: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Cp,
    First,
    Resume,
}

impl Case {
    fn parse(s: &str) -> Case {
        match s {
            "cp" => Case::Cp,
            "first" => Case::First,
            "resume" => Case::Resume,
            _ => panic!("--cases: {s} is not one of cp, first, resume"),
        }
    }

    fn label(self, offset: u64) -> String {
        match self {
            Case::Cp => "cold `cp` to local disk".into(),
            Case::First => format!("first 4 KiB at {}, cold", human_bytes(offset)),
            Case::Resume => "`cp` after SIGKILL at ~half and a remount".into(),
        }
    }
}

impl Bench {
    /// A fresh directory for one case of one tool (a cold cache).
    fn fresh(&self, tool: Tool, case: &str) -> (PathBuf, PathBuf) {
        let base = self.scratch.join(format!("{}-{case}", tool.name()));
        if base.exists() {
            std::fs::remove_dir_all(&base).unwrap();
        }
        std::fs::create_dir_all(&base).unwrap();
        let cache = base.join("cache");
        (base, cache)
    }

    /// Removes a case's directory; with `--keep-logs DIR`, its logs are copied there first
    /// (`DIR/<tool>-<case>-<n>-<file>`).
    fn done(&self, base: &Path) {
        static KEPT: AtomicU64 = AtomicU64::new(0);
        let keep = arg("--keep-logs", "");
        if !keep.is_empty() {
            std::fs::create_dir_all(&keep).unwrap();
            let n = KEPT.fetch_add(1, Ordering::SeqCst);
            let name = base.file_name().unwrap().to_string_lossy().into_owned();
            for log in ["mnt.log", "rclone.log", "s3fs.log", "cache/ossmount.log"] {
                let from = base.join(log);
                if from.exists() {
                    let file = log.replace('/', "-");
                    let _ =
                        std::fs::copy(&from, Path::new(&keep).join(format!("{name}-{n}-{file}")));
                }
            }
        }
        let _ = std::fs::remove_dir_all(base);
    }

    fn sent_mib_since(&self, from: u64) -> f64 {
        (self.link.sent() - from) as f64 / MIB
    }

    fn cold_cp(&self, tool: Tool) -> Sample {
        let (base, cache) = self.fresh(tool, "cp");
        let m = self.mount(tool, &base, &cache);
        let dest = base.join("out.bin");
        let from = self.link.sent();
        let secs = timed_cp(&m.file(), &dest);
        let sent = self.sent_mib_since(from);
        assert!(
            verify(&dest, self.size),
            "{}: the copy differs",
            tool.name()
        );
        drop(m);
        self.done(&base);
        Sample {
            secs,
            sent,
            before_kill: 0.0,
        }
    }

    fn first_4k(&self, tool: Tool, offset: u64) -> Sample {
        let (base, cache) = self.fresh(tool, "first");
        let m = self.mount(tool, &base, &cache);
        let file = m.file();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), self.size);
        let from = self.link.sent();
        let (tx, rx) = std::sync::mpsc::channel();
        // Off this thread: a read that hangs fails the case at the bound, and the guard's
        // unmount ends it.
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = std::fs::File::open(&file).and_then(|f| {
                let mut buf = vec![0u8; 4096];
                f.read_exact_at(&mut buf, offset).map(|_| buf)
            });
            let _ = tx.send((t.elapsed().as_secs_f64(), r));
        });
        let (secs, got) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the read of 4 KiB did not end within 120 s");
        let sent = self.sent_mib_since(from);
        let got = got.unwrap_or_else(|e| panic!("{}: the read failed: {e}", tool.name()));
        let mut want = vec![0u8; 4096];
        ossmount::sample::fill(SEED, offset, &mut want);
        assert!(got == want, "{}: the 4 KiB differ", tool.name());
        drop(m);
        self.done(&base);
        Sample {
            secs,
            sent,
            before_kill: 0.0,
        }
    }

    fn resume(&self, tool: Tool) -> Sample {
        let (base, cache) = self.fresh(tool, "resume");
        let mut m = self.mount(tool, &base, &cache);
        let dest = base.join("out.bin");
        let from = self.link.sent();
        let mut cp = Command::new("cp")
            .arg(m.file())
            .arg(&dest)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let half = self.size / 2;
        let reached = wait_until(CP_LIMIT, || {
            self.link.sent() - from >= half || cp.try_wait().ok().flatten().is_some()
        });
        m.kill9();
        let before_kill = self.sent_mib_since(from);
        let _ = cp.kill();
        let _ = cp.wait();
        assert!(
            reached && before_kill < self.size as f64 / MIB,
            "{}: the cp ended before the kill ({before_kill:.1} MiB sent)",
            tool.name()
        );
        drop(m);
        let _ = std::fs::remove_file(&dest);
        let m = self.mount(tool, &base, &cache);
        let from = self.link.sent();
        let secs = timed_cp(&m.file(), &dest);
        let sent = self.sent_mib_since(from);
        assert!(
            verify(&dest, self.size),
            "{}: the resumed copy differs",
            tool.name()
        );
        drop(m);
        self.done(&base);
        Sample {
            secs,
            sent,
            before_kill,
        }
    }
}

// ---- the table ----

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// What one tool measured in one case over the rounds.
#[derive(Default, Clone)]
struct Measured {
    samples: Vec<Sample>,
    failures: Vec<String>,
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

fn main() {
    let size = parse_size(&arg("--size", "1GiB")).unwrap();
    let rounds: usize = arg("--rounds", "3").parse().unwrap();
    let latency: u64 = arg("--latency-ms", "20").parse().unwrap();
    let offset = parse_size(&arg("--offset", "700MiB")).unwrap();
    assert!(offset + 4096 <= size, "--offset must leave 4 KiB in --size");
    let all_shapes = bench::shapes();
    let shapes: Vec<&bench::Shape> = all_shapes.iter().collect();
    let cases: Vec<Case> = list("--cases", "cp,first,resume")
        .iter()
        .map(|c| Case::parse(c))
        .collect();
    let tools: Vec<Tool> = list("--tools", "ossmount,rclone,s3fs")
        .iter()
        .map(|t| Tool::parse(t))
        .collect();
    assert!(
        tools.first() == Some(&Tool::Ossmount),
        "--tools must start with ossmount (the ratios are to it)"
    );
    assert!(
        Tool::Ossmount.program().is_some(),
        "build it first: cargo build --bin ossmount --examples"
    );
    let installed: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|t| t.program().is_some())
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s3 = rt.block_on(S3Server::start_streaming());
    // The object, and the ETag s3s-fs would otherwise compute by reading it whole at every
    // GET and HEAD (it keeps an object's MD5 beside it only when the object is PUT).
    let t = Instant::now();
    write_object(&s3, size);
    eprintln!(
        "{} written in {:.1} s",
        human_bytes(size),
        t.elapsed().as_secs_f64()
    );
    let link = Arc::new(Link {
        per_connection: AtomicU64::new(0),
        link: AtomicU64::new(0),
        latency_ms: AtomicU64::new(latency),
        link_next: Mutex::new(Instant::now()),
        sent: AtomicU64::new(0),
    });
    let upstream: std::net::SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(proxy(listener, upstream, link.clone()));
    let scratch = s3.scratch.path().to_path_buf();
    let b = Bench {
        s3,
        endpoint,
        link,
        size,
        scratch,
    };

    println!(
        "bench_s3: {} object, {rounds} rounds, +{latency} ms per request; ossmount {} ({} build); {}; {}",
        human_bytes(size),
        common::bin().display(),
        if cfg!(debug_assertions) { "dev" } else { "release" },
        Tool::Rclone.version(),
        Tool::S3fs.version(),
    );
    for shape in &shapes {
        b.link
            .per_connection
            .store(shape.per_connection, Ordering::SeqCst);
        b.link.link.store(shape.link, Ordering::SeqCst);
        let mut measured = vec![vec![Measured::default(); tools.len()]; cases.len()];
        for round in 0..rounds {
            for (ci, &case) in cases.iter().enumerate() {
                // The tools' order rotates from round to round.
                for k in 0..installed.len() {
                    let tool = installed[(k + round) % installed.len()];
                    let ti = tools.iter().position(|&t| t == tool).unwrap();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match case {
                        Case::Cp => b.cold_cp(tool),
                        Case::First => b.first_4k(tool, offset),
                        Case::Resume => b.resume(tool),
                    }));
                    match r {
                        Ok(s) => {
                            eprintln!(
                                "{} round {}/{rounds} {:<8} {:<6} {:7.3} s, {:.2} MiB sent{}",
                                shape.name,
                                round + 1,
                                tool.name(),
                                ["cp", "first", "resume"][case as usize],
                                s.secs,
                                s.sent,
                                if case == Case::Resume {
                                    format!(
                                        " after the remount ({:.1} before the kill)",
                                        s.before_kill
                                    )
                                } else {
                                    String::new()
                                }
                            );
                            measured[ci][ti].samples.push(s);
                        }
                        Err(e) => {
                            let text = panic_text(&*e);
                            eprintln!(
                                "{} round {}/{rounds} {} {}: FAILED: {text}",
                                shape.name,
                                round + 1,
                                tool.name(),
                                ["cp", "first", "resume"][case as usize],
                            );
                            measured[ci][ti].failures.push(text);
                        }
                    }
                    let _ = std::io::stdout().flush();
                }
            }
        }
        print_table(
            &b, shape, latency, rounds, offset, &cases, &tools, &measured,
        );
    }
}

/// The object, generated from `SEED`, and s3s-fs's record of its MD5.
fn write_object(s3: &S3Server, size: u64) {
    use base64::Engine;
    use md5::Digest;
    let path = s3.object_path(KEY);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let mut md5 = md5::Md5::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        ossmount::sample::fill(SEED, off, &mut buf[..n]);
        md5.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        off += n as u64;
    }
    f.flush().unwrap();
    let e_tag: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let info = s3.dir.path().join(format!(
        ".bucket-{}.object-{}.internal.json",
        b64(BUCKET),
        b64(KEY)
    ));
    std::fs::write(info, format!("{{\"e_tag\":\"{e_tag}\"}}")).unwrap();
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    b: &Bench,
    shape: &bench::Shape,
    latency: u64,
    rounds: usize,
    offset: u64,
    cases: &[Case],
    tools: &[Tool],
    measured: &[Vec<Measured>],
) {
    let link = if shape.link == 0 {
        "no link-wide cap".to_string()
    } else {
        format!("{}/s in all", human_bytes(shape.link))
    };
    println!(
        "\n`{}`: {}/s per connection, {link}, +{latency} ms per request; {} object, {rounds} rounds, tools interleaved\n",
        shape.name,
        human_bytes(shape.per_connection),
        human_bytes(b.size),
    );
    println!(
        "| case | tool | seconds, median (min–max) | vs ossmount | MiB sent, median (min–max) |"
    );
    println!("|---|---|---:|---:|---:|");
    for (ci, &case) in cases.iter().enumerate() {
        let base = &measured[ci][0];
        let base_median = (!base.samples.is_empty())
            .then(|| median_min_max(&base.samples.iter().map(|s| s.secs).collect::<Vec<_>>()).0);
        for (ti, &tool) in tools.iter().enumerate() {
            let m = &measured[ci][ti];
            let label = case.label(offset);
            if tool.program().is_none() {
                println!("| {label} | {} | not installed: skipped | | |", tool.name());
                continue;
            }
            let failed = if m.failures.is_empty() {
                String::new()
            } else {
                format!(
                    "; failed {} of {}: {}",
                    m.failures.len(),
                    m.failures.len() + m.samples.len(),
                    m.failures[0]
                )
            };
            if m.samples.is_empty() {
                println!("| {label} | {} | failed{failed} | | |", tool.name());
                continue;
            }
            let secs: Vec<f64> = m.samples.iter().map(|s| s.secs).collect();
            let (t, lo, hi) = median_min_max(&secs);
            let sent: Vec<f64> = m.samples.iter().map(|s| s.sent).collect();
            let (s, slo, shi) = median_min_max(&sent);
            let ratio = base_median
                .map(|bm| format!("{:.2}", t / bm))
                .unwrap_or_else(|| "–".into());
            let before = if case == Case::Resume {
                let k: Vec<f64> = m.samples.iter().map(|s| s.before_kill).collect();
                let (k, ..) = median_min_max(&k);
                format!(" after the remount ({k:.0} before the kill)")
            } else {
                String::new()
            };
            let (secs_text, sent_text) = if case == Case::First {
                (
                    format!("{t:.3} ({lo:.3}–{hi:.3})"),
                    format!("{s:.2} ({slo:.2}–{shi:.2})"),
                )
            } else {
                (
                    format!("{t:.2} ({lo:.2}–{hi:.2})"),
                    format!("{s:.1} ({slo:.1}–{shi:.1})"),
                )
            };
            println!(
                "| {label} | {} | {secs_text}{failed} | {ratio} | {sent_text}{before} |",
                tool.name()
            );
        }
    }
    let _ = std::io::stdout().flush();
}
