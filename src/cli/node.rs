//! `ossmount node` (hidden): the node server of one cache directory, started by the first
//! `ossmount mount` on it, and `join_or_start`, the mount command's way to reach it. The
//! node reads the first mount's spec on stdin (its node-wide settings: part size, capacity,
//! connections), serves mounts over the control socket, and ends with exit 0 once no mount
//! is left. Wiring only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use ossmount::node::holder::{
    detach_stdio, run_holder, HandedOver, HolderConfig, HolderLink, EXIT_CANNOT_TAKE_OVER,
};
use ossmount::node::join::{self, JoinError, Joined, MountRequest};
use ossmount::node::{MountFactory, Node};

use super::mount::MountSpec;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The cache directory to serve
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// Serve without a holder process: the mounts end with this process
    #[arg(long, env = "OSSMOUNT_NO_HOLDER")]
    pub no_holder: bool,
}

/// How a node started by a mount command logs.
pub struct NodeLog<'a> {
    pub level: Option<&'a str>,
    pub file: Option<&'a Path>,
}

/// A node nobody joins after this ends.
const FIRST_MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long a mount command waits for the node it started to take requests.
const NODE_START_WAIT: Duration = Duration::from_secs(30);

pub fn run(args: &NodeArgs, rt: &tokio::runtime::Runtime) -> Result<ExitCode> {
    let link = HolderLink::from_env()?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the first mount's spec on stdin")?;
    let spec: MountSpec = serde_json::from_str(&text)
        .context("stdin is not a mount spec (ossmount node is started by ossmount mount)")?;
    if link.is_none() && !args.no_holder {
        // This process is the holder; the server is its child (see node::holder).
        let code = run_holder(
            HolderConfig {
                arg0: std::env::args_os()
                    .next()
                    .unwrap_or_else(|| "ossmount".into()),
                server_args: std::env::args_os().skip(1).collect(),
                spec: text.into_bytes(),
                cache_dir: args.cache_dir.clone(),
            },
            rt,
        )?;
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    let (opts, store) = rt.block_on(spec.build())?;
    if opts.cache_dir != args.cache_dir {
        bail!(
            "the spec is for cache directory {}, not {}",
            opts.cache_dir.display(),
            args.cache_dir.display()
        );
    }
    let factory: MountFactory = Arc::new(|value| {
        Box::pin(async move {
            // Not the serde error itself: it may quote a value, and values hold secrets.
            let spec: MountSpec = serde_json::from_value(value).map_err(|_| {
                anyhow::anyhow!(
                    "the ossmount node serving this cache directory (pid {}, version {}) cannot read this mount's request: a different ossmount version? unmount its mounts, or use another --cache-dir",
                    std::process::id(),
                    env!("CARGO_PKG_VERSION")
                )
            })?;
            spec.build().await
        })
    });
    let (link, handed) = match link {
        Some((link, handed)) => (Some(Arc::new(link)), Some(handed)),
        None => (None, None),
    };
    let node = Node::open(
        &opts,
        store,
        rt.handle().clone(),
        Some(factory.clone()),
        link.clone(),
    )?;
    tracing::info!(
        "node serving {} (pid {}{})",
        args.cache_dir.display(),
        std::process::id(),
        match &link {
            Some(l) => format!(
                ", holder pid {}, restarts {}",
                l.info.holder_pid, l.info.restarts
            ),
            None => String::new(),
        }
    );
    // From here everything goes to the log: nobody waits on this process's pipes.
    detach_stdio();
    if let (Some(link), Some(handed)) = (link, handed) {
        take_over(&node, &factory, &link, handed, rt);
        std::thread::Builder::new()
            .name("holder-wait".into())
            .spawn(move || {
                if link.wait_for_exit_request() {
                    // A successor takes every connection over; what was read and not
                    // answered is resent to it. Nothing is unmounted, nothing cleaned up.
                    tracing::info!("exiting for a successor (upgrade)");
                    // SAFETY: ends the process at once, running no destructor (they would
                    // unmount).
                    unsafe { libc::_exit(0) };
                }
                tracing::warn!("the holder is gone: the mounts now end with this process");
            })?;
    }
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = tokio::time::timeout(FIRST_MOUNT_WAIT, node.asked_once()) => {}
            _ = term.recv() => return stop(&node).await,
            _ = int.recv() => return stop(&node).await,
        }
        loop {
            tokio::select! {
                _ = node.idle() => {
                    // A command may have asked for a mount since: then not idle after all.
                    if node.close_if_idle() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = term.recv() => return stop(&node).await,
                _ = int.recv() => return stop(&node).await,
            }
        }
    });
    rt.block_on(node.shutdown());
    node.tell_holder_ending();
    tracing::info!("node of {} ended", args.cache_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Serves every mount the holder handed over (blocking), then tells it how many it took.
/// A mount that cannot be taken over in an upgrade ends this process (code
/// `EXIT_CANNOT_TAKE_OVER`, nothing released): the holder goes back to the server before it.
/// After a crash it is tried again (a credential lookup may fail for a moment), then
/// released: the holder lets its connection go, so its readers get an error instead of
/// waiting for ever.
fn take_over(
    node: &Arc<Node>,
    factory: &MountFactory,
    link: &HolderLink,
    handed: Vec<HandedOver>,
    rt: &tokio::runtime::Runtime,
) {
    let (mut taken, mut failed) = (0, 0);
    for HandedOver { mount, device } in handed {
        let id = mount.mount_id;
        let at = mount.mountpoint.clone();
        let mut tries = 0;
        let done = loop {
            tries += 1;
            let spec = mount.spec.clone();
            let attempt = rt
                .block_on(factory(spec.clone()))
                .and_then(|(opts, store)| {
                    let held = mount.clone().into_held(device.try_clone()?)?;
                    node.take_over(id, opts, store, held, spec)
                });
            match attempt {
                Err(e) if !link.info.upgrade && tries < 3 => {
                    tracing::warn!("mount {id}: taking over failed ({e:#}); trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other,
            }
        };
        match done {
            Ok(_) => taken += 1,
            Err(e) if link.info.upgrade => {
                tracing::error!(
                    "mount {id} at {} cannot be taken over by this version: {e:#}; the version before it serves on",
                    at.display()
                );
                // SAFETY: ends the process at once, running no destructor (they would
                // unmount what this process has taken over).
                unsafe { libc::_exit(EXIT_CANNOT_TAKE_OVER) };
            }
            Err(e) => {
                failed += 1;
                tracing::error!(
                    "mount {id} at {} could not be taken over: {e:#}",
                    at.display()
                );
                link.release(id);
            }
        }
    }
    node.took_over();
    link.ready(taken, failed);
}

/// SIGTERM to the node: unmount every mount it made, and end (bounded: busy mounts and
/// handed-in descriptors end with the process).
async fn stop(node: &Node) {
    tracing::info!("signal received: unmounting every mount of this node");
    node.unmount_all(false);
    if tokio::time::timeout(Duration::from_secs(10), node.idle())
        .await
        .is_err()
    {
        // Busy ones are detached: gone from the namespace, not left dead behind the node.
        node.unmount_all(true);
    }
    node.close_if_idle();
}

/// Asks the node serving `cache_dir` for the mount, starting a node when none answers. A
/// node that was ending as it was asked is asked again (a new one started if need be).
pub async fn join_or_start(
    cache_dir: &Path,
    spec: &MountSpec,
    req: &MountRequest,
    log: &NodeLog<'_>,
) -> Result<Joined> {
    let mut last = String::new();
    // A node that went away without answering may have mounted it first.
    let mut again = false;
    for attempt in 0..10u32 {
        let conn = match join::connect(cache_dir).await {
            Some(c) => Some(c),
            None => start_node(cache_dir, spec, log).await?,
        };
        // `None`: another node holds the cache and is ending; ask again in a moment.
        if let Some(conn) = conn {
            match join::request_mount(conn, req, again).await {
                Ok(mut j) => {
                    j.set_cache_dir(cache_dir);
                    return Ok(j);
                }
                Err(JoinError::Refused(msg)) => bail!("{msg}"),
                Err(JoinError::Gone(why)) => {
                    last = why;
                    again = true;
                }
            }
        } else {
            last = "the node holding the cache directory was ending".into();
        }
        tokio::time::sleep(Duration::from_millis((100u64 << attempt).min(2000))).await;
    }
    bail!(
        "the ossmount node of {} kept ending before it took the mount ({last}); try again",
        cache_dir.display()
    )
}

/// Starts `ossmount node` for `cache_dir` in a session of its own, with none of this
/// process's environment but what it needs to run (the mount's credentials travel in the
/// spec), and waits until it takes requests. Returns a connection to it.
async fn start_node(
    cache_dir: &Path,
    spec: &MountSpec,
    log: &NodeLog<'_>,
) -> Result<Option<tokio::net::UnixStream>> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the ossmount executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node").arg("--cache-dir").arg(cache_dir);
    if let Some(level) = log.level {
        cmd.args(["--log-level", level]);
    }
    let log_file = log
        .file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cache_dir.join("ossmount.log"));
    cmd.arg("--log-file").arg(&log_file);
    cmd.env_clear();
    for keep in ["PATH", "HOME", "RUST_LOG", "NO_COLOR", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the node must not share this command's session
    // (a terminal's Ctrl-C, or a supervisor killing the command's group, must not reach it).
    // close_range(3, ~0, CLOSE_RANGE_CLOEXEC): the node keeps none of this command's other
    // descriptors (an orchestrator's /dev/fuse, a wrapper's lock, a supervisor's pipe).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the ossmount node")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        // A node that died before reading it says why on stderr, read below.
        let _ = stdin.write_all(&serde_json::to_vec(spec).expect("a spec serialises"));
    }
    let started = Instant::now();
    loop {
        if let Some(conn) = join::connect(cache_dir).await {
            // Reaped when it ends, so a long-lived starter (the CSI plugin, PID 1 of its
            // container) keeps no zombie of each node that served and ended.
            drop(child.stderr.take());
            std::thread::spawn(move || child.wait());
            return Ok(Some(conn));
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            if err.contains("in use by another ossmount process") {
                // Another node holds the cache: one just started (it takes requests in a
                // moment), or one ending (asked again after it has).
                return Ok(wait_for_socket(cache_dir, Instant::now()).await);
            }
            let err = err.trim().trim_start_matches("ossmount: error: ");
            bail!(
                "the ossmount node for {} could not start ({status}): {err}",
                cache_dir.display()
            );
        }
        if started.elapsed() > NODE_START_WAIT {
            let _ = child.kill();
            bail!(
                "the ossmount node for {} did not start within {} s; see {}",
                cache_dir.display(),
                NODE_START_WAIT.as_secs(),
                log_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_socket(cache_dir: &Path, since: Instant) -> Option<tokio::net::UnixStream> {
    while since.elapsed() < Duration::from_secs(5) {
        if let Some(conn) = join::connect(cache_dir).await {
            return Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
