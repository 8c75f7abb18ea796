//! The holder: a small process that keeps every FUSE connection of a node alive while the
//! node's server process comes and goes (crash, OOM kill, upgrade), and both sides of its
//! link with the server. The kernel keeps a connection as long as some process holds its
//! `/dev/fuse` descriptor, and queues its requests while nobody reads them; so readers of a
//! mount wait, rather than fail, while a new server starts and takes the connection over
//! (`fs::fuse::takeover`).
//!
//! `ossmount node` starts as the holder (`run_holder`): it starts the server (`ossmount node`
//! again, with `OSSMOUNT_HOLDER_FD` naming its end of a SOCK_SEQPACKET socketpair) and waits
//! for it. The server tells it of each mount it serves (`Hold`: the connection's descriptor
//! attached, its INIT exchange and the mount's spec) and of each that ends (`Release`).
//! When the server dies with mounts held, the holder starts a new one and hands them over
//! (`Handover`, then one `Mount` each, descriptor attached). It ends with the server when
//! the server ends on purpose (`Ending`: every mount unmounted, or SIGTERM) or holds nothing.
//! SIGUSR2 (what `ossmount upgrade` sends) replaces the server by the executable now on disk.
//!
//! The holder reads no request, opens no connection to the store and allocates almost
//! nothing, so it does not die of what kills servers; its `oom_score_adj` is -1000 and the
//! server's +500, so an out-of-memory kill picks the server. Mount specs (they hold
//! credentials) live only in the holder's memory, never on disk or in logs.
//!
//! Versions: every message carries `HANDOVER_VERSION`; a server refuses a handover of
//! another version (exit `EXIT_CANNOT_TAKE_OVER`) and a connection whose INIT it would
//! answer differently, and the holder then starts the server it had before.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::fs::fuse::takeover::Handshake;
use crate::fs::fuse::Held;

/// The environment variable naming the server's end of its link to the holder.
pub const HOLDER_FD_ENV: &str = "OSSMOUNT_HOLDER_FD";
/// Which handovers this build takes: bumped whenever a message changes meaning.
pub const HANDOVER_VERSION: u32 = 1;
/// The server's exit code when it cannot take a handover over (another version).
pub const EXIT_CANNOT_TAKE_OVER: i32 = 75;

/// The largest message (a mount's spec with its INIT exchange is a few KiB).
const MAX_MESSAGE: usize = 1 << 20;

/// A mount as the holder keeps it between servers (its descriptor travels beside it).
/// Not `Debug`: its spec holds credentials.
#[derive(Clone, Serialize, Deserialize)]
pub struct HeldMount {
    pub mount_id: u64,
    /// The mount's spec, as its command sent it: holds credentials; memory only.
    pub spec: serde_json::Value,
    /// For logs.
    pub mountpoint: PathBuf,
    init_request: String,
    init_reply: String,
    /// Where a server mounted it itself (canonical mount point, kernel mount id).
    own_mount: Option<(PathBuf, Option<u64>)>,
}

impl HeldMount {
    pub fn of(mount_id: u64, spec: serde_json::Value, mountpoint: &Path, held: &Held) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        HeldMount {
            mount_id,
            spec,
            mountpoint: mountpoint.to_path_buf(),
            init_request: b64.encode(&held.handshake.request),
            init_reply: b64.encode(&held.handshake.reply),
            own_mount: held.own_mount.clone(),
        }
    }

    /// Whether the connection's kernel resends unanswered requests on request.
    pub fn kernel_resends(&self) -> bool {
        base64::engine::general_purpose::STANDARD
            .decode(&self.init_request)
            .is_ok_and(|r| crate::fs::fuse::takeover::kernel_resends(&r))
    }

    /// The connection to take over, with the descriptor that came with this record.
    pub fn into_held(self, device: OwnedFd) -> Result<Held> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Held {
            device,
            handshake: Handshake {
                request: b64
                    .decode(&self.init_request)
                    .context("bad INIT in a handover")?,
                reply: b64
                    .decode(&self.init_reply)
                    .context("bad INIT in a handover")?,
            },
            own_mount: self.own_mount,
        })
    }
}

/// Server to holder.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum ToHolder {
    /// A mount now served (its connection attached).
    Hold { version: u32, mount: HeldMount },
    /// A mount that ended: its connection is let go.
    Release { mount_id: u64 },
    /// Every handed-over mount is served (the takeover succeeded).
    Ready { taken: usize, failed: usize },
    /// The server is ending on purpose: nothing is to survive it.
    Ending,
}

/// Holder to server.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum ToServer {
    /// First message to every server: who holds it, and how many `Mount`s follow.
    Handover {
        version: u32,
        holder_pid: u32,
        restarts: u64,
        upgrades: u64,
        mounts: usize,
        /// An upgrade: a mount this server cannot take over must make it exit (code
        /// `EXIT_CANNOT_TAKE_OVER`) so the holder goes back to the server before it, rather
        /// than be let go.
        #[serde(default)]
        upgrade: bool,
    },
    /// One mount to take over (its connection attached).
    Mount { mount: HeldMount },
    /// Stop serving and exit without unmounting: a successor takes over (upgrade).
    Exit,
}

fn send<T: Serialize>(sock: &impl AsFd, msg: &T, fd: Option<RawFd>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let body = serde_json::to_vec(msg).expect("messages serialise");
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    let attach: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    let iov = [std::io::IoSlice::new(&body)];
    loop {
        match sendmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &iov,
            attach,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The next message and the descriptor that came with it; `None` when the other side is gone.
fn recv<T: for<'de> Deserialize<'de>>(
    sock: &impl AsFd,
) -> std::io::Result<Option<(T, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fd) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        match recvmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fd = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors for us.
                        let mut owned: Vec<OwnedFd> = raw
                            .into_iter()
                            .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
                            .collect();
                        fd = owned.pop();
                    }
                }
                break (msg.bytes, fd);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    // Not serde's message: it may quote a value, and a spec's values hold credentials.
    let msg = serde_json::from_slice(&buf[..n]).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a message on the holder's link that this version cannot read",
        )
    })?;
    Ok(Some((msg, fd)))
}

// ---------------------------------------------------------------------------------------
// The server's side.

/// What the holder told a server when it started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub holder_pid: u32,
    pub restarts: u64,
    pub upgrades: u64,
    /// This server was started by an upgrade.
    pub upgrade: bool,
}

/// A server's link to its holder.
pub struct HolderLink {
    sock: OwnedFd,
    pub info: HolderInfo,
    /// The largest mount number handed over: new mounts are numbered past it (a new mount
    /// must never take a handed-over mount's number, journal or place in the holder).
    pub largest_handed_id: u64,
    /// Serialises sends: one message is one `sendmsg`, but a `Hold` must not pass the
    /// `Release` of the same mount.
    sending: Mutex<()>,
}

/// A mount handed over to a new server.
pub struct HandedOver {
    pub mount: HeldMount,
    pub device: OwnedFd,
}

impl HolderLink {
    /// The link this process was started with, if a holder started it: reads the
    /// handover (who holds it, and the mounts to take over). Removes the variable, so no
    /// process this one starts believes it has a holder.
    pub fn from_env() -> Result<Option<(HolderLink, Vec<HandedOver>)>> {
        let Some(raw) = std::env::var_os(HOLDER_FD_ENV) else {
            return Ok(None);
        };
        // SAFETY: only the holder sets the variable, and only this process reads it.
        unsafe { std::env::remove_var(HOLDER_FD_ENV) };
        // Started from a descriptor (/proc/<holder>/fd/N), the kernel named this process
        // "N": named back, for ps, top and pkill.
        // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"ossmount".as_ptr()) };
        let fd: RawFd = raw
            .to_str()
            .and_then(|s| s.parse().ok())
            .context("OSSMOUNT_HOLDER_FD is not a descriptor number")?;
        // SAFETY: the holder passed this descriptor open to us under this number.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &sock,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .context("the holder's descriptor")?;
        let Some((first, _)) = recv::<serde_json::Value>(&sock)? else {
            anyhow::bail!("the holder went away before the handover");
        };
        let version = first.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != HANDOVER_VERSION as u64 {
            eprintln!(
                "ossmount: this version ({}) takes handovers of version {HANDOVER_VERSION}, not {version}",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(EXIT_CANNOT_TAKE_OVER);
        }
        let ToServer::Handover {
            holder_pid,
            restarts,
            upgrades,
            mounts,
            upgrade,
            ..
        } = serde_json::from_value(first)
            .map_err(|_| anyhow::anyhow!("a handover that is not one"))?
        else {
            anyhow::bail!("the holder's first message was not a handover");
        };
        let mut handed = Vec::with_capacity(mounts);
        for _ in 0..mounts {
            match recv::<ToServer>(&sock)? {
                Some((ToServer::Mount { mount }, Some(device))) => {
                    handed.push(HandedOver { mount, device })
                }
                _ => anyhow::bail!("the holder's handover ended early"),
            }
        }
        let link = HolderLink {
            sock,
            largest_handed_id: handed.iter().map(|h| h.mount.mount_id).max().unwrap_or(0),
            info: HolderInfo {
                holder_pid,
                restarts,
                upgrades,
                upgrade,
            },
            sending: Mutex::new(()),
        };
        Ok(Some((link, handed)))
    }

    fn tell(&self, msg: &ToHolder, fd: Option<RawFd>) {
        let _one = self.sending.lock().unwrap();
        if let Err(e) = send(&self.sock, msg, fd) {
            tracing::warn!(
                "the holder did not hear us ({e}): mounts will not survive this process"
            );
        }
    }

    /// The holder keeps `held`'s connection from now on.
    pub fn hold(&self, mount: HeldMount, held: &Held) {
        let msg = ToHolder::Hold {
            version: HANDOVER_VERSION,
            mount,
        };
        self.tell(&msg, Some(held.device.as_raw_fd()));
    }

    pub fn release(&self, mount_id: u64) {
        self.tell(&ToHolder::Release { mount_id }, None);
    }

    pub fn ready(&self, taken: usize, failed: usize) {
        self.tell(&ToHolder::Ready { taken, failed }, None);
    }

    pub fn ending(&self) {
        self.tell(&ToHolder::Ending, None);
    }

    /// Waits (blocking) for the holder to ask this server to exit for a successor; returns
    /// `false` when the holder is gone instead.
    pub fn wait_for_exit_request(&self) -> bool {
        loop {
            match recv::<ToServer>(&self.sock) {
                Ok(Some((ToServer::Exit, _))) => return true,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return false,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The holder's side.

/// How the holder starts each server.
pub struct HolderConfig {
    /// The server's `argv[0]`.
    pub arg0: OsString,
    /// Arguments after the executable (`node --cache-dir ... --log-file ...`).
    pub server_args: Vec<OsString>,
    /// The first mount's spec, given to every server on stdin.
    pub spec: Vec<u8>,
    /// For logs.
    pub cache_dir: PathBuf,
}

/// A server, with the holder's view of its link.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    started: Instant,
    /// What it reported, until its end of the link closed.
    reader: std::thread::JoinHandle<()>,
    ready: tokio::sync::watch::Receiver<Option<(usize, usize)>>,
    link: Arc<OwnedFd>,
}

#[derive(Default)]
struct Kept {
    mounts: BTreeMap<u64, (HeldMount, OwnedFd)>,
    ending: bool,
}

/// Deaths within `DEATH_WINDOW` after which a new server waits `RESTART_PAUSE` before
/// starting, and after which the holder gives the mounts up: a request that kills every
/// server (it is resent to each successor) must not restart servers for ever.
const DEATH_WINDOW: Duration = Duration::from_secs(60);
const DEATHS_BEFORE_PAUSE: usize = 10;
const DEATHS_BEFORE_GIVING_UP: usize = 30;
const RESTART_PAUSE: Duration = Duration::from_millis(500);

/// What the holder knows between servers.
struct Holder<'a> {
    cfg: &'a HolderConfig,
    pid: u32,
    kept: Arc<Mutex<Kept>>,
    restarts: u64,
    upgrades: u64,
    /// When recent servers died (see `DEATH_WINDOW`).
    deaths: std::collections::VecDeque<Instant>,
}

impl Holder<'_> {
    /// Starts a server from `exe` to take over what is kept, again and again while it cannot
    /// be started (no memory, no process slot), with the same pause and limit as deaths.
    /// `None`: given up (every mount let go).
    async fn start(&mut self, exe: &std::fs::File, upgrade: bool) -> Option<Server> {
        loop {
            match start_server(self, exe, Start::Later { upgrade }) {
                Ok(server) => return Some(server),
                Err(e) => {
                    tracing::error!("cannot start a server: {e:#}");
                    if !self.count_death().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Counts a server's death (or a start that failed): pauses once they come fast, and
    /// returns `false` (the mounts given up) once they come too fast for too long.
    async fn count_death(&mut self) -> bool {
        let now = Instant::now();
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW)
        {
            self.deaths.pop_front();
        }
        if self.deaths.len() >= DEATHS_BEFORE_GIVING_UP {
            tracing::error!(
                "{} servers died within {} s; giving the mounts up (their readers get errors) instead of restarting servers for ever",
                self.deaths.len(),
                DEATH_WINDOW.as_secs()
            );
            self.kept.lock().unwrap().mounts.clear();
            return false;
        }
        if self.deaths.len() >= DEATHS_BEFORE_PAUSE {
            tokio::time::sleep(RESTART_PAUSE).await;
        }
        true
    }
}

/// Runs the holder until its server ends on purpose or holds nothing; returns the exit code.
pub fn run_holder(cfg: HolderConfig, rt: &tokio::runtime::Runtime) -> Result<i32> {
    set_oom_score_adj("-1000");
    // What ps -o comm, top and the OOM killer's report call it (the server keeps "ossmount").
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"ossmount-hold".as_ptr()) };
    let holder_pid = std::process::id();
    // The executable every server runs: this one, until an upgrade succeeds. Held open, so
    // a restart after a crash runs the same build even once the file on disk is replaced.
    let mut server_exe =
        std::fs::File::open("/proc/self/exe").context("opening this executable")?;
    let exe_path = std::env::current_exe().context("finding this executable")?;
    let mut h = Holder {
        cfg: &cfg,
        pid: holder_pid,
        kept: Arc::new(Mutex::new(Kept::default())),
        restarts: 0,
        upgrades: 0,
        deaths: Default::default(),
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        // The first server's errors go to whoever started the node (it reads our stderr).
        let mut server = start_server(&h, &server_exe, Start::First)?;
        detach_stdio();
        loop {
            let status = tokio::select! {
                status = server.child.wait() => status?,
                _ = term.recv() => { forward(server.pid, libc::SIGTERM); continue; }
                _ = int.recv() => { forward(server.pid, libc::SIGTERM); continue; }
                _ = usr2.recv() => {
                    if h.kept.lock().unwrap().ending {
                        tracing::info!("upgrade asked for while the node ends: ignored");
                        continue;
                    }
                    if let Some(why) = h.cannot_upgrade() {
                        tracing::error!("upgrade refused: {why}");
                        continue;
                    }
                    // Opened before the server is asked to exit: a file that cannot be
                    // run changes nothing.
                    let exe = match std::fs::File::open(&exe_path) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::error!("upgrade refused: cannot open {}: {e}", exe_path.display());
                            continue;
                        }
                    };
                    h.upgrades += 1;
                    match upgrade(&mut h, exe, &mut server).await {
                        Ok(Some((next, exe))) => {
                            server = next;
                            server_exe = exe;
                        }
                        Ok(None) => return Ok(0),
                        Err(e) => {
                            h.upgrades -= 1;
                            tracing::error!("upgrade failed: {e:#}; the server before it is started again");
                            h.restarts += 1;
                            match h.start(&server_exe, false).await {
                                Some(next) => server = next,
                                None => return Ok(1),
                            }
                        }
                    }
                    continue;
                }
            };
            let _ = server.reader.join();
            let why = describe_end(&status);
            let (ending, held) = {
                let mut k = h.kept.lock().unwrap();
                // Connections unmounted meanwhile are not handed over; nor are those of a
                // kernel that cannot resend what the dead server had read (before Linux
                // 6.9): those readers would wait for ever. Letting go of the last descriptor
                // ends the connection, so they get an error at once, as without a holder.
                k.mounts.retain(|_, (mount, device)| {
                    if !mount.kernel_resends() {
                        tracing::error!(
                            "mount {} at {}: this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+), so it ends with its server",
                            mount.mount_id,
                            mount.mountpoint.display()
                        );
                        return false;
                    }
                    crate::fs::connected(device)
                });
                (k.ending, k.mounts.len())
            };
            if ending || held == 0 {
                tracing::info!("server pid {} ended ({why}); the holder ends with it", server.pid);
                h.kept.lock().unwrap().mounts.clear();
                return Ok(status.code().unwrap_or(1));
            }
            tracing::error!(
                "server pid {} ended after {:.1} s ({why}) with {held} mount(s) held: starting a new server to take them over",
                server.pid,
                server.started.elapsed().as_secs_f64()
            );
            if !h.count_death().await {
                return Ok(1);
            }
            h.restarts += 1;
            match h.start(&server_exe, false).await {
                Some(next) => server = next,
                None => return Ok(1),
            }
        }
    })
}

impl Holder<'_> {
    /// Why the kept mounts cannot be handed to a new server on purpose, if they cannot: a
    /// kernel that cannot resend would leave the old server's last requests unanswered.
    fn cannot_upgrade(&self) -> Option<String> {
        let k = self.kept.lock().unwrap();
        k.mounts
            .values()
            .find(|(m, _)| !m.kernel_resends())
            .map(|(m, _)| {
                format!(
                    "mount {} at {} is on a kernel without FUSE_NOTIFY_RESEND (Linux 6.9+); unmount and mount again to run the new version",
                    m.mount_id,
                    m.mountpoint.display()
                )
            })
    }
}

/// Starts a server from `exe` and hands it what is kept.
/// Which server `start_server` starts.
#[derive(Clone, Copy)]
enum Start {
    /// The node's first: its errors go to whoever started the node (our stderr).
    First,
    /// A successor, for a crash (`upgrade: false`) or an upgrade.
    Later { upgrade: bool },
}

fn start_server(h: &Holder<'_>, exe: &std::fs::File, start: Start) -> Result<Server> {
    let (cfg, holder_pid, kept) = (h.cfg, h.pid, &h.kept);
    let (restarts, upgrades) = (h.restarts, h.upgrades);
    let first = matches!(start, Start::First);
    let upgrade = matches!(start, Start::Later { upgrade: true });
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::process::Stdio;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd =
        tokio::process::Command::new(format!("/proc/{holder_pid}/fd/{}", exe.as_raw_fd()));
    // What ps shows: the executable's name, not the descriptor it is started from.
    cmd.arg0(&cfg.arg0)
        .args(&cfg.server_args)
        .env(HOLDER_FD_ENV, theirs_raw.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(false);
    if !first {
        // Nobody reads the holder's stderr after the first start.
        cmd.stderr(Stdio::null());
    }
    // SAFETY: fcntl and open/write/close are async-signal-safe. The server keeps its end of
    // the link across exec, and is the one an out-of-memory kill picks first.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(theirs_raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let path = c"/proc/self/oom_score_adj";
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"500".as_ptr().cast(), 3);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the ossmount server")?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        let spec = cfg.spec.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&spec).await;
        });
    }
    let link = Arc::new(ours);
    // The handover, before anything the server could report.
    {
        let k = kept.lock().unwrap();
        let hello = ToServer::Handover {
            version: HANDOVER_VERSION,
            holder_pid,
            restarts,
            upgrades,
            mounts: k.mounts.len(),
            upgrade,
        };
        send(&*link, &hello, None)?;
        for (mount, device) in k.mounts.values() {
            send(
                &*link,
                &ToServer::Mount {
                    mount: mount.clone(),
                },
                Some(device.as_raw_fd()),
            )?;
        }
        if !k.mounts.is_empty() {
            tracing::info!(
                "server pid {pid} started to take over {} mount(s) of {}",
                k.mounts.len(),
                cfg.cache_dir.display()
            );
        }
    }
    let (tell_ready, ready) = tokio::sync::watch::channel(None);
    let reader = std::thread::Builder::new()
        .name("holder-link".into())
        .spawn({
            let link = link.clone();
            let kept = kept.clone();
            move || loop {
                match recv::<ToHolder>(&*link) {
                    Ok(Some((ToHolder::Hold { mount, .. }, Some(device)))) => {
                        tracing::info!(
                            "holding mount {} at {}",
                            mount.mount_id,
                            mount.mountpoint.display()
                        );
                        kept.lock()
                            .unwrap()
                            .mounts
                            .insert(mount.mount_id, (mount, device));
                    }
                    Ok(Some((ToHolder::Release { mount_id }, _))) => {
                        kept.lock().unwrap().mounts.remove(&mount_id);
                    }
                    Ok(Some((ToHolder::Ready { taken, failed }, _))) => {
                        let _ = tell_ready.send(Some((taken, failed)));
                    }
                    Ok(Some((ToHolder::Ending, _))) => kept.lock().unwrap().ending = true,
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!("the server's link: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(Server {
        child,
        pid,
        started: Instant::now(),
        reader,
        ready,
        link,
    })
}

/// Replaces the server by `exe` (the executable now on disk): the old one exits without
/// unmounting (the kernel resends what it had read and not answered), the new one takes
/// every mount over and says so (`Ready`). Returns the new server, or `None` when there was
/// nothing to hand over (the old one ended). A new server that cannot take every mount over
/// exits before `Ready` (or is stopped), and an error is returned: the caller starts the
/// previous executable again.
async fn upgrade(
    h: &mut Holder<'_>,
    exe: std::fs::File,
    server: &mut Server,
) -> Result<Option<(Server, std::fs::File)>> {
    tracing::info!(
        "upgrade: asking server pid {} to exit for its successor",
        server.pid
    );
    let _ = send(&*server.link, &ToServer::Exit, None);
    if tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .is_err()
    {
        tracing::warn!("server pid {} did not exit within 10 s: killed", server.pid);
        forward(server.pid, libc::SIGKILL);
        let _ = server.child.wait().await;
    }
    let old = std::mem::replace(&mut server.reader, std::thread::spawn(|| {}));
    let _ = old.join();
    if h.kept.lock().unwrap().mounts.is_empty() {
        return Ok(None);
    }
    let mut next = start_server(h, &exe, Start::Later { upgrade: true })?;
    let outcome = tokio::select! {
        r = next.ready.wait_for(Option::is_some) => r.ok().and_then(|r| *r),
        status = next.child.wait() => {
            let status = status?;
            let _ = std::mem::replace(&mut next.reader, std::thread::spawn(|| {})).join();
            anyhow::bail!("the new server ended before it took over ({})", describe_end(&status));
        }
        _ = tokio::time::sleep(Duration::from_secs(60)) => None,
    };
    match outcome {
        Some((taken, 0)) => {
            tracing::info!(
                "upgrade: server pid {} took over {taken} mount(s)",
                next.pid
            );
            Ok(Some((next, exe)))
        }
        other => {
            forward(next.pid, libc::SIGKILL);
            let _ = next.child.wait().await;
            let _ = std::mem::replace(&mut next.reader, std::thread::spawn(|| {})).join();
            match other {
                Some((_, failed)) => {
                    anyhow::bail!("the new server could not take {failed} mount(s) over")
                }
                None => anyhow::bail!("the new server did not take over within 60 s"),
            }
        }
    }
}

fn forward(pid: u32, sig: libc::c_int) {
    if pid != 0 {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

/// Why a server ended, in words: its exit code or signal, and whether the kernel's
/// out-of-memory killer counted a kill in this cgroup meanwhile.
fn describe_end(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut why = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig} ({})",
            nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("?")
        ),
        _ => status.to_string(),
    };
    if status.signal() == Some(libc::SIGKILL) {
        if let Some(n) = cgroup_oom_kills() {
            if n > 0 {
                why.push_str(&format!(
                    "; the cgroup's memory.events counts {n} OOM kill(s): raise its memory limit, or lower --memory-limit"
                ));
            }
        }
    }
    why
}

/// `oom_kill` of this process's cgroup (`memory.events`), when cgroup v2 shows it.
fn cgroup_oom_kills() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let events =
        std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.events", path.trim())).ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

fn set_oom_score_adj(value: &str) {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", value) {
        tracing::info!("oom_score_adj {value} not set: {e}");
    }
}

/// Points stdin, stdout and stderr at /dev/null: nobody reads this process's pipes any more.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_the_link() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mount = HeldMount {
            mount_id: 7,
            spec: serde_json::json!({"k": "v"}),
            mountpoint: "/mnt/x".into(),
            init_request: "AAEC".into(),
            init_reply: "AwQ=".into(),
            own_mount: Some(("/mnt/x".into(), Some(42))),
        };
        send(&a, &ToServer::Mount { mount }, Some(w.as_raw_fd())).unwrap();
        drop(w);
        let (msg, fd) = recv::<ToServer>(&b).unwrap().unwrap();
        let ToServer::Mount { mount } = msg else {
            panic!("not a Mount")
        };
        let held = mount.into_held(fd.expect("a descriptor")).unwrap();
        assert_eq!(held.handshake.request, [0, 1, 2]);
        assert_eq!(held.handshake.reply, [3, 4]);
        assert_eq!(held.own_mount, Some(("/mnt/x".into(), Some(42))));
        nix::unistd::write(&held.device, b"through").unwrap();
        drop(held);
        let mut got = [0u8; 16];
        let n = nix::unistd::read(r.as_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], b"through");
        drop(a);
        assert!(
            recv::<ToServer>(&b).unwrap().is_none(),
            "EOF once the other side is gone"
        );
    }
}
