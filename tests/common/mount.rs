//! The kernel-mount harness: a guard that always unmounts and reaps the mount process, and
//! bounded filesystem operations.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use ossmount::hydrate::Checkpoint;

pub const MIB: u64 = 1 << 20;

pub fn require_fuse() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "mount tests need root and /dev/fuse (run cargo test as root)"
    );
}

pub fn is_mounted(mnt: &Path) -> bool {
    let mnt = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next(), f.next(), f.next());
            target == Some(mnt.to_str().unwrap()) && fstype.is_some_and(|t| t.starts_with("fuse"))
        })
}

pub fn force_unmount(mnt: &Path) {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: umount2 with a valid C string.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

/// A running `ossmount mount --foreground` (the command; the node it asked serves the
/// mount); dropping it always unmounts and reaps it, and ends the node if no other mount
/// keeps it.
pub struct Mount {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
    /// The cache directory: its lock names the node's pid, its `ossmount.log` holds the
    /// node's log.
    pub cache: PathBuf,
}

impl Mount {
    pub fn start(s: &Server, url: &str, mnt: &Path, cache: &Path, extra: &[&str]) -> Mount {
        let mut m = Mount::spawn(s, url, mnt, cache, extra);
        m.wait_up();
        m
    }

    /// Waits (bounded) until the mount is up; fails with its log if the process ended.
    fn wait_up(&mut self) {
        let mnt = self.mnt.clone();
        let child = self.child.as_mut().unwrap();
        // Generous: a loaded CI machine may take a while to start the process.
        let up = wait_until(Duration::from_secs(60), || {
            is_mounted(&mnt) || child.try_wait().unwrap().is_some()
        });
        assert!(
            up && is_mounted(&mnt),
            "mount did not come up: {}",
            self.log_text()
        );
    }

    pub fn spawn(s: &Server, url: &str, mnt: &Path, cache: &Path, extra: &[&str]) -> Mount {
        Mount::spawn_under(s.env(), url, mnt, cache, extra, None)
    }

    /// Like `start`, mounted by the executable `program` instead of this build's (a
    /// benchmark comparing two builds side by side).
    pub fn start_by(
        program: &Path,
        s: &Server,
        url: &str,
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Mount {
        let mut m = Mount::spawn_program(program, s.env(), url, mnt, cache, extra, None);
        m.wait_up();
        m
    }

    /// Like `start`, with `env` as the command's whole environment for OSS (endpoint,
    /// credentials).
    pub fn start_with_env(
        url: &str,
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
        env: Vec<(&'static str, String)>,
    ) -> Mount {
        let mut m = Mount::spawn_under(env, url, mnt, cache, extra, None);
        m.wait_up();
        m
    }

    /// Like `start`, under `ulimit -n LIMIT` (soft and hard).
    pub fn start_with_fd_limit(
        s: &Server,
        url: &str,
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
        limit: u32,
    ) -> Mount {
        let mut m = Mount::spawn_under(s.env(), url, mnt, cache, extra, Some(limit));
        m.wait_up();
        m
    }

    fn spawn_under(
        env: Vec<(&'static str, String)>,
        url: &str,
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
        fd_limit: Option<u32>,
    ) -> Mount {
        Mount::spawn_program(&bin(), env, url, mnt, cache, extra, fd_limit)
    }

    fn spawn_program(
        program: &Path,
        env: Vec<(&'static str, String)>,
        url: &str,
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
        fd_limit: Option<u32>,
    ) -> Mount {
        std::fs::create_dir_all(mnt).unwrap();
        let log = mnt.with_extension("log");
        let mut cmd = match fd_limit {
            // sh sets the limit, then execs ossmount: the child is the mount itself.
            Some(limit) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = cmd
            .args(["mount", url])
            .arg(mnt)
            .arg("--cache-dir")
            .arg(cache)
            .args(["--foreground", "--log-level", "info"])
            .args(extra)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
            cache: cache.to_path_buf(),
        }
    }

    /// The command's output, then the node's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.cache.join("ossmount.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the node is done with this mount: it ended (the cache's lock is
    /// free), or it serves other mounts and no longer lists this one. A test that reuses the
    /// cache directory next must not meet the node of this mount on its way out.
    pub fn wait_node_done(&self) {
        let done = self.node_done_within(Duration::from_secs(30));
        assert!(
            done,
            "the node did not let go of {}: {}",
            self.mnt.display(),
            self.log_text()
        );
    }

    fn node_done_within(&self, limit: Duration) -> bool {
        let mnt = self.mnt.display().to_string();
        wait_until(limit, || {
            if !ossmount::cache::lock_is_held(&self.cache) {
                return true;
            }
            let listed: Vec<String> = std::fs::read(self.cache.join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| {
                    v["mounts"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|m| m["mountpoint"].as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            !listed.is_empty() && !listed.contains(&mnt)
        })
    }

    /// The pid of the node serving the mount (the holder of the cache's lock).
    pub fn node_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.cache.join("lock"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// SIGKILL of the node serving the mount and of its holder, as a power cut would (the
    /// server alone would be replaced: see tests/survive.rs), then of the command; the dead
    /// mount is detached.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.node_pid() {
            // SAFETY: signalling a process by pid.
            unsafe {
                if let Some(holder) = holder_of(pid) {
                    libc::kill(holder, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
            wait_until(Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}/status")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .is_ok_and(|s| s.contains("State:\tZ"))
            });
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }

    /// `umount`, and the process must then exit by itself, successfully.
    pub fn unmount(&mut self) -> std::process::ExitStatus {
        // A file closed a moment ago may still hold the mount for the kernel's last
        // reference (EBUSY): asked again a few times before it counts as a failure.
        let mut tries = 0;
        let status = loop {
            let status = Command::new("umount")
                .arg(&self.mnt)
                .status_within(Duration::from_secs(60), "umount")
                .unwrap();
            tries += 1;
            if status.success() || tries == 20 {
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "umount failed {tries} times");
        // The child stays in `self` until it has exited: if this fails, `Drop` kills it.
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                self.wait_node_done();
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "process did not exit within 60 s of umount: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        // No node left behind: one still holding the cache for this mount is killed.
        if !self.node_done_within(Duration::from_secs(10)) {
            if let Some(pid) = self.node_pid() {
                // SAFETY: signalling a process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// `cat PATH` within `limit`: whether it succeeded, and what it printed.
pub async fn cat_within(limit: Duration, path: PathBuf) -> (bool, Vec<u8>) {
    use super::CommandWithin;
    fs_op(limit, move || {
        let out = std::process::Command::new("cat")
            .arg(path)
            .output_within(limit, "cat")
            .unwrap();
        (out.status.success(), out.stdout)
    })
    .await
}

/// Runs blocking filesystem work off the runtime, failing the test (naming the caller's line)
/// if it takes longer than `limit`. The work itself cannot be cancelled; the failing test's
/// `Mount` guard then kills the mount, which ends the stuck system call.
#[track_caller]
pub fn fs_op<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let at = std::panic::Location::caller();
    async move {
        tokio::time::timeout(limit, tokio::task::spawn_blocking(f))
            .await
            .unwrap_or_else(|_| {
                panic!("the filesystem operation at {at} did not end within {limit:?}")
            })
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// Runs `cmd`, a foreground mount at `mnt` that should be refused (exit at once, non-zero),
/// and returns its output. One that is not refused serves until it is killed at the bound
/// (60 s), and the test fails naming it; its mount is detached either way.
pub fn refused_mount(cmd: &mut Command, mnt: &Path) -> std::process::Output {
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                force_unmount(self.0);
            }
        }
    }
    let _detach = Detach(mnt);
    let out = cmd
        .output_within(Duration::from_secs(60), "a mount that should be refused")
        .unwrap();
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The holder keeping the connections of node server `pid` (its parent, `ossmount node`).
pub fn holder_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, then the parent's pid.
    let ppid: i32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"node").then_some(ppid)
}

pub fn url() -> String {
    format!("oss://{BUCKET}/")
}

/// A mountpoint and a cache directory for one test, removed with the server.
pub fn dirs(s: &Server, name: &str) -> (PathBuf, PathBuf) {
    let base = s.scratch.path().join(name);
    std::fs::create_dir_all(&base).unwrap();
    (base.join("mnt"), base.join("cache"))
}

pub fn entry_checkpoints(cache: &Path) -> Vec<Checkpoint> {
    std::fs::read_dir(cache.join("entries"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "ckpt"))
                .filter_map(|e| Checkpoint::load(&e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `ossmount status --json --cache-dir CACHE`.
pub fn status_json(cache: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["status", "--json", "--cache-dir"])
        .arg(cache)
        .output_within(Duration::from_secs(60), "ossmount status --json")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `getxattr` straight from libc: the tests do not depend on the `attr` package.
pub fn getxattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length we pass.
    let len = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// The errno of a `getxattr` that fails (`None` when it succeeds).
pub fn getxattr_errno(path: &Path, name: &str) -> Option<i32> {
    match getxattr(path, name) {
        Some(_) => None,
        None => std::io::Error::last_os_error().raw_os_error(),
    }
}

/// `ossmount prefetch URL --cache-dir CACHE EXTRA...`, off the runtime: status and stderr.
pub async fn prefetch_cli(
    s: &Server,
    url: &str,
    cache: &Path,
    extra: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["prefetch", url, "--cache-dir"])
        .arg(cache)
        .args(extra)
        .envs(s.env());
    let out = tokio::task::spawn_blocking(move || {
        cmd.output_within(Duration::from_secs(300), "ossmount prefetch")
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
