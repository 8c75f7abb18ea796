//! The mount conversation over the control socket, both sides. The command (`request_mount`)
//! sends one `Mount` request (with a `/dev/fuse` descriptor attached when it was handed
//! one) and hears `Mounted` or why not; a foreground command then stays connected until it
//! hears `Ended`, and asks for the unmount with an `unmount` line when it is told to stop.
//! The node (`serve_mount`) builds the mount from the request, starts it, answers, and for a
//! foreground command unmounts when the command asks or goes away (a mount on a handed-in
//! descriptor is its orchestrator's to unmount, and stays). Must not decide how a mount is
//! built (the node's factory) or run (`MountSession`).

use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::{MountSession, Node};
use crate::control::{socket_path, Reply, Request};

/// What a mount command asks a node for.
pub struct MountRequest {
    /// Built into options and a store by the node's factory. Holds secrets: never logged.
    pub spec: serde_json::Value,
    pub foreground: bool,
    /// A `/dev/fuse` descriptor to serve (the mount point was `/dev/fd/N`).
    pub fd: Option<RawFd>,
}

/// Why a node did not take a mount.
#[derive(Debug)]
pub enum JoinError {
    /// It answered no: the reason, for the user (nothing was mounted).
    Refused(String),
    /// It closed the connection without an answer (it was ending): ask again.
    Gone(String),
}

/// A mount a node took for this command.
pub struct Joined {
    pub mount_id: u64,
    pub node_pid: u32,
    /// Settings of the node that differ from what the command asked for.
    pub notes: Vec<String>,
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    /// Where to find the node again when it is replaced (see `wait`).
    cache_dir: Option<std::path::PathBuf>,
    /// Where the mount is (a path, not a descriptor): gone from the mount table while no
    /// server answers means it was unmounted meanwhile (see `reattach`).
    mountpoint: Option<std::path::PathBuf>,
}

/// The node serving `cache_dir`, if one answers on its socket.
pub async fn connect(cache_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(cache_dir)).await.ok()
}

/// Asks the node on `conn` for the mount; `again` after a node went away without answering
/// (see `Request::Mount`).
pub async fn request_mount(
    conn: UnixStream,
    req: &MountRequest,
    again: bool,
) -> Result<Joined, JoinError> {
    let request = Request::Mount {
        spec: req.spec.clone(),
        foreground: req.foreground,
        again,
    };
    let mut line = serde_json::to_vec(&request).expect("requests serialise");
    line.push(b'\n');
    if let Some(fd) = req.fd {
        crate::control::send_with_fd(&conn, &line, fd)
            .await
            .map_err(|e| JoinError::Gone(e.to_string()))?;
    }
    let (r, mut w) = conn.into_split();
    if req.fd.is_none() {
        w.write_all(&line)
            .await
            .map_err(|e| JoinError::Gone(e.to_string()))?;
    }
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str::<Reply>(&l) {
            Ok(Reply::Mounted {
                mount_id,
                node_pid,
                notes,
            }) => Ok(Joined {
                mount_id,
                node_pid,
                notes,
                lines,
                w,
                cache_dir: None,
                mountpoint: None,
            }),
            Ok(Reply::Error(e)) => Err(JoinError::Refused(e)),
            Ok(other) => Err(JoinError::Refused(format!("unexpected answer: {other:?}"))),
            Err(e) => Err(JoinError::Refused(format!("unreadable answer: {e}"))),
        },
        Ok(None) => Err(JoinError::Gone("the node closed the connection".into())),
        Err(e) => Err(JoinError::Gone(e.to_string())),
    }
}

impl Joined {
    /// The node's cache directory: a foreground `wait` finds the node there again when the
    /// one that took the mount is replaced.
    pub fn set_cache_dir(&mut self, dir: &Path) {
        self.cache_dir = Some(dir.to_path_buf());
    }

    /// The mount's path, so that a `wait` whose server is being replaced learns of an
    /// unmount that came meanwhile.
    pub fn set_mountpoint(&mut self, at: &Path) {
        self.mountpoint = Some(at.to_path_buf());
    }

    /// The mount was unmounted (its path left the mount table): known only for a mount at a
    /// path, and only when the table can be read.
    fn was_unmounted(&self) -> bool {
        self.mountpoint.as_deref().is_some_and(|at| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .is_ok_and(|table| !fuse_mounted_in(&table, at))
        })
    }

    /// Watches the mount again through whichever server serves the cache directory now
    /// (its holder started a new one): bounded, 60 s. `Ok(false)`: it was unmounted
    /// meanwhile (an `umount` right after the crash: the server that took it over ended
    /// with it before this command could ask), which is the end it was waiting for.
    async fn reattach(&mut self, asked_unmount: bool) -> Result<bool, String> {
        let gone = || "the node serving the mount ended before the mount did".to_string();
        let Some(dir) = self.cache_dir.clone() else {
            return Err(gone());
        };
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(60) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let Some(conn) = connect(&dir).await else {
                if self.was_unmounted() {
                    return Ok(false);
                }
                continue;
            };
            let (r, mut w) = conn.into_split();
            let mut line = serde_json::to_vec(&Request::Attach {
                mount_id: self.mount_id,
            })
            .expect("requests serialise");
            line.push(b'\n');
            if w.write_all(&line).await.is_err() {
                continue;
            }
            let mut lines = BufReader::new(r).lines();
            match lines.next_line().await {
                Ok(Some(l)) => match serde_json::from_str::<Reply>(&l) {
                    Ok(Reply::Mounted { node_pid, .. }) => {
                        self.node_pid = node_pid;
                        self.lines = lines;
                        self.w = w;
                        if asked_unmount {
                            let _ = self.w.write_all(b"unmount\n").await;
                        }
                        return Ok(true);
                    }
                    Ok(Reply::Error(_)) if self.was_unmounted() => return Ok(false),
                    Ok(Reply::Error(e)) => return Err(format!("the mount ended: {e}")),
                    _ => continue,
                },
                _ => continue,
            }
        }
        Err(gone())
    }

    /// Waits until the mount ends. At the first of `signals` (the command got SIGTERM or
    /// SIGINT) asks the node to unmount, at the second to detach, and goes on waiting for the
    /// end. `Err` when the mount failed or the node went away.
    pub async fn wait(
        mut self,
        signals: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<(), String> {
        let mut asked = 0;
        loop {
            tokio::select! {
                Some(()) = signals.recv() => {
                    asked += 1;
                    let line: &[u8] = if asked == 1 { b"unmount\n" } else { b"detach\n" };
                    if self.w.write_all(line).await.is_err() {
                        return Err("the node serving the mount is gone".into());
                    }
                }
                line = self.lines.next_line() => match line {
                    Ok(Some(l)) => match serde_json::from_str::<Reply>(&l) {
                        Ok(Reply::Ended(None)) => return Ok(()),
                        Ok(Reply::Ended(Some(e))) => return Err(format!("the mount failed: {e}")),
                        // Why the unmount has not happened yet (a busy mount).
                        Ok(Reply::Error(msg)) => eprintln!("ossmount: {msg}"),
                        _ => continue,
                    },
                    Ok(None) | Err(_) => {
                        if !self.reattach(asked > 0).await? {
                            return Ok(());
                        }
                    }
                },
            }
        }
    }
}

/// Whether `table` (mountinfo text) lists a FUSE filesystem mounted at `at`.
fn fuse_mounted_in(table: &str, at: &Path) -> bool {
    // mountinfo writes space, tab, newline and backslash as octal escapes.
    let mut want = String::new();
    for c in at.to_string_lossy().chars() {
        match c {
            ' ' => want.push_str("\\040"),
            '\t' => want.push_str("\\011"),
            '\n' => want.push_str("\\012"),
            '\\' => want.push_str("\\134"),
            c => want.push(c),
        }
    }
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fs_type = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|dash| fields.get(dash + 1));
        fields.get(4) == Some(&want.as_str()) && fs_type.is_some_and(|t| t.starts_with("fuse"))
    })
}

async fn send(w: &mut OwnedWriteHalf, reply: &Reply) -> bool {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    w.write_all(&line).await.is_ok()
}

/// The node's side of one mount request.
pub(super) async fn serve_mount(
    node: Arc<Node>,
    spec: serde_json::Value,
    foreground: bool,
    again: bool,
    fd: Option<OwnedFd>,
    lines: Lines<BufReader<OwnedReadHalf>>,
    mut w: OwnedWriteHalf,
) {
    let Some(starting) = node.starting() else {
        // Ending: no answer, so the command asks again (a new node if need be).
        return;
    };
    let Some(factory) = node.factory().cloned() else {
        send(
            &mut w,
            &Reply::Error("this process serves no further mounts".into()),
        )
        .await;
        return;
    };
    let (opts, store) = match factory(spec.clone()).await {
        Ok(built) => built,
        Err(e) => {
            send(&mut w, &Reply::Error(format!("{e:#}"))).await;
            return;
        }
    };
    if crate::mount::fuse_fd(&opts.mountpoint).is_some() && fd.is_none() {
        let msg = format!(
            "{} names a descriptor, but none arrived with the request; the command must hold an open /dev/fuse descriptor N mounted with mount(2) -o fd=N",
            opts.mountpoint.display()
        );
        send(&mut w, &Reply::Error(msg)).await;
        return;
    }
    if again && fd.is_none() {
        if let Some(session) = mount_taken_over(&node, &opts).await {
            // Its earlier request mounted this, and the server that did was replaced before
            // it answered: the command watches the mount the new server took over.
            let _told = starting;
            let mounted = Reply::Mounted {
                mount_id: session.id,
                node_pid: std::process::id(),
                notes: Vec::new(),
            };
            if send(&mut w, &mounted).await && foreground {
                watch_for_command(&node, &session, lines, w).await;
            }
            return;
        }
    }
    let notes = node.differences(&opts);
    let n = node.clone();
    let session =
        match tokio::task::spawn_blocking(move || n.mount(opts, store, fd, Some(spec))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!("a mount asked over the control socket failed: {e:#}");
                send(&mut w, &Reply::Error(format!("{e:#}"))).await;
                return;
            }
            Err(e) => {
                send(&mut w, &Reply::Error(format!("the mount panicked: {e}"))).await;
                return;
            }
        };
    // `starting` is held until the command has heard the end: the node does not end (and
    // close this connection) between the session's end and the `Ended` that tells of it.
    let _told = starting;
    let mounted = Reply::Mounted {
        mount_id: session.id,
        node_pid: std::process::id(),
        notes,
    };
    if !send(&mut w, &mounted).await {
        tracing::info!("the command of mount {} left before it heard", session.id);
    }
    if !foreground {
        return;
    }
    watch_for_command(&node, &session, lines, w).await;
}

/// The live mount that `is` picks, waited for while this server takes mounts over (a mount
/// handed over may not be taken over yet; bounded, 60 s).
async fn live_session(
    node: &Arc<Node>,
    is: impl Fn(&MountSession) -> bool,
) -> Option<Arc<MountSession>> {
    let find = || {
        node.sessions()
            .into_iter()
            .find(|s| !s.has_ended() && is(s))
    };
    let start = std::time::Instant::now();
    let mut found = find();
    while found.is_none()
        && node.taking_over()
        && start.elapsed() < std::time::Duration::from_secs(60)
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        found = find();
    }
    found
}

/// The live mount of `opts`' URL at its mount point.
async fn mount_taken_over(
    node: &Arc<Node>,
    opts: &crate::mount::MountOptions,
) -> Option<Arc<MountSession>> {
    live_session(node, |s| {
        s.opts.mountpoint == opts.mountpoint && s.opts.url == opts.url
    })
    .await
}

/// A foreground command that watched mount `mount_id` through a server now gone watches it
/// again through this one.
pub(super) async fn serve_attach(
    node: Arc<Node>,
    mount_id: u64,
    lines: Lines<BufReader<OwnedReadHalf>>,
    mut w: OwnedWriteHalf,
) {
    let Some(_told) = node.starting() else {
        return;
    };
    let Some(session) = live_session(&node, |s| s.id == mount_id).await else {
        let msg = format!("mount {mount_id} is not served from this cache directory any more");
        send(&mut w, &Reply::Error(msg)).await;
        return;
    };
    let mounted = Reply::Mounted {
        mount_id,
        node_pid: std::process::id(),
        notes: Vec::new(),
    };
    if send(&mut w, &mounted).await {
        watch_for_command(&node, &session, lines, w).await;
    }
}

/// The command's lines, until it is gone: `unmount` (its first SIGTERM or Ctrl-C), then
/// `detach` (its second: the mount leaves the namespace now, ends when its files close).
async fn watch_for_command(
    node: &Arc<Node>,
    session: &Arc<MountSession>,
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut w: OwnedWriteHalf,
) {
    let mut gone = false;
    loop {
        tokio::select! {
            end = session.ended() => {
                // Logged and out of the status before the command hears of it.
                node.retire_ended();
                node.write_status();
                send(&mut w, &Reply::Ended(end.err())).await;
                return;
            }
            line = lines.next_line(), if !gone => match line {
                Ok(Some(l)) if matches!(l.trim(), "unmount" | "detach") => {
                    if !session.owns_mount() {
                        // Only its orchestrator unmounts it; the command may end now.
                        unmount(session, false);
                        send(&mut w, &Reply::Ended(None)).await;
                        return;
                    }
                    let lazily = l.trim() == "detach";
                    let done = if lazily { session.detach() } else { session.unmount() };
                    let mnt = session.opts.mountpoint.display();
                    match done {
                        Ok(()) if lazily => {
                            tracing::info!("{mnt} detached: it ends when its last file is closed");
                            send(&mut w, &Reply::Ended(None)).await;
                            return;
                        }
                        Ok(()) => {}
                        Err(e) => {
                            let msg = format!(
                                "{mnt} is busy ({e}): it is unmounted once its files are closed; a second SIGTERM or Ctrl-C detaches it now (as umount -l does)"
                            );
                            send(&mut w, &Reply::Error(msg)).await;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // The command is gone (killed): its mount goes with it, as a mount's
                    // did with its process, but detached if busy so it never stays dead.
                    tracing::info!("the command of mount {} is gone: unmounting", session.id);
                    gone = true;
                    unmount(session, true);
                }
            },
        }
    }
}

fn unmount(s: &MountSession, lazily: bool) {
    if !s.owns_mount() {
        tracing::info!(
            "mount {} is on a handed-in descriptor: it stays until its orchestrator unmounts it",
            s.id
        );
        return;
    }
    if let Err(e) = s.unmount() {
        if lazily {
            if let Err(e) = s.detach() {
                tracing::warn!("detaching {} failed: {e}", s.opts.mountpoint.display());
            }
        } else {
            tracing::warn!(
                "unmount of {} failed: {e}; it ends when its files are closed and it is unmounted",
                s.opts.mountpoint.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuse_mounted_in;
    use std::path::Path;

    #[test]
    fn a_fuse_mount_is_found_at_its_escaped_path_and_nothing_else_counts() {
        let table = "\
36 25 0:32 / /tmp/a\\040b/mnt rw,nosuid,nodev - fuse.ossmount ossmount rw,user_id=0
37 25 0:33 / /tmp/plain rw - tmpfs tmpfs rw
38 25 0:34 / /tmp/plainer rw shared:5 - fuse.ossmount ossmount rw
";
        assert!(fuse_mounted_in(table, Path::new("/tmp/a b/mnt")));
        assert!(fuse_mounted_in(table, Path::new("/tmp/plainer")));
        assert!(!fuse_mounted_in(table, Path::new("/tmp/plain")), "tmpfs");
        assert!(!fuse_mounted_in(table, Path::new("/tmp/a b")), "unmounted");
    }
}
