//! The control socket of a node (`<cache>/control.sock`, owner-only, in the owner-only
//! cache directory). `ossmount mount` on a cache directory a node serves asks it for one
//! more mount (with a `/dev/fuse` descriptor attached when it was handed one, SCM_RIGHTS);
//! `ossmount prefetch` asks it to do the work with the same cache, engine and connection
//! limits instead of being refused by the cache lock. One JSON request line per connection
//! (at most 64 KiB, within 5 s of connecting), answered by JSON lines. The server owns every
//! request it runs: its shutdown ends them all before the cache shuts down. Must not decide
//! what to fetch (that is `prefetch`) nor how a mount runs (that is `node`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::cache::Cache;
use crate::hydrate::Progress;
use crate::prefetch::{prefetch, PrefetchReport};
use crate::store::ObjectStore;

fn oss_scheme() -> String {
    "oss".into()
}

#[derive(Serialize, Deserialize)]
pub enum Request {
    Prefetch {
        /// The URL's scheme (`oss`, `s3`): only a mount of that store may serve the prefetch
        /// (absent from an older command: `oss`).
        #[serde(default = "oss_scheme")]
        scheme: String,
        bucket: String,
        prefix: String,
        objects: usize,
    },
    /// One more mount. `spec` is what the command line needs to build its options and
    /// store (it holds credentials: it never reaches a log); `foreground`: the client stays
    /// connected, hears `Ended`, and its leaving (or an `unmount` line) ends the mount.
    Mount {
        spec: serde_json::Value,
        foreground: bool,
        /// The command asked before and its node went away without an answer: a mount
        /// already served at the same mount point of the same URL may be the one it asked
        /// for (taken over by the new server), and is answered as this request's (absent
        /// from an older command: false).
        #[serde(default)]
        again: bool,
    },
    /// A foreground command whose node was replaced (crash, upgrade) watches its mount
    /// again: as after `Mount`, it hears `Mounted`, then `Ended`.
    Attach { mount_id: u64 },
}

/// Not `Debug`: a mount's spec holds its secrets.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Prefetch {
                scheme,
                bucket,
                prefix,
                ..
            } => {
                write!(f, "Prefetch({scheme}://{bucket}/{prefix})")
            }
            Request::Mount { foreground, .. } => write!(f, "Mount(foreground: {foreground})"),
            Request::Attach { mount_id } => write!(f, "Attach({mount_id})"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Progress {
        bytes_present: u64,
        bytes_total: u64,
    },
    Done(PrefetchReport),
    Error(String),
    Mounted {
        mount_id: u64,
        node_pid: u32,
        /// What the command should tell its user (settings of the node that differ from
        /// what it asked for).
        #[serde(default)]
        notes: Vec<String>,
    },
    /// The mount ended: unmounted (`None`) or why it failed.
    Ended(Option<String>),
}

/// What a control socket serves (the node; something smaller in tests).
pub trait Served: Send + Sync + 'static {
    /// The store and cache a prefetch of `scheme://bucket` runs with, or why there are none.
    fn prefetch_with(
        &self,
        scheme: &str,
        bucket: &str,
    ) -> Result<(Arc<dyn ObjectStore>, Arc<Cache>), String>;

    /// Runs a mount request to its end: answers on `w`, and for a foreground client reads
    /// `lines` (an `unmount` line or the client leaving ends the mount).
    fn mount(
        self: Arc<Self>,
        spec: serde_json::Value,
        foreground: bool,
        again: bool,
        fd: Option<std::os::fd::OwnedFd>,
        lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        w: OwnedWriteHalf,
    ) -> crate::store::BoxFut<'static, ()>;

    /// A foreground command watches mount `mount_id` again (its node was replaced).
    fn attach(
        self: Arc<Self>,
        mount_id: u64,
        _lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
        mut w: OwnedWriteHalf,
    ) -> crate::store::BoxFut<'static, ()> {
        Box::pin(async move {
            let msg = format!("mount {mount_id} is not served here");
            let _ = send(&mut w, &Reply::Error(msg)).await;
        })
    }
}

/// Where a mount's control socket lives.
pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("control.sock")
}

/// How much a client may send as its request, and how long it may take to: a client that
/// sends an endless line or nothing at all must not hold memory or a task for ever.
#[derive(Debug, Clone, Copy)]
struct RequestLimits {
    max_line: usize,
    deadline: Duration,
}

const REQUEST_LIMITS: RequestLimits = RequestLimits {
    max_line: 64 << 10,
    deadline: Duration::from_secs(5),
};

/// A control socket being served. `shutdown` ends it; dropping it aborts it without waiting.
pub struct ControlServer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Stops accepting, aborts every request still running (a prefetch among them) and waits
    /// until they have ended, so none of them touches the cache after this returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // The accept task owns the requests (a JoinSet): aborting it aborts them too.
        self.task.abort();
    }
}

/// Serves requests until `shutdown`. A socket left by a dead node is replaced (the caller
/// holds the cache lock, so no live node owns it). Needs a Tokio runtime.
pub fn serve(cache_dir: &Path, served: Arc<dyn Served>) -> std::io::Result<ControlServer> {
    serve_with_limits(cache_dir, served, REQUEST_LIMITS)
}

fn serve_with_limits(
    cache_dir: &Path,
    served: Arc<dyn Served>,
    limits: RequestLimits,
) -> std::io::Result<ControlServer> {
    let path = socket_path(cache_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let (stop, stopped) = oneshot::channel();
    let cache_dir = Arc::new(cache_dir.to_path_buf());
    let task = tokio::spawn(async move {
        let mut requests = JoinSet::new();
        let on_connection = |(conn, _)| {
            // Forget the requests that have ended, so the set holds only running ones.
            while requests.try_join_next().is_some() {}
            let served = served.clone();
            let cache_dir = cache_dir.clone();
            requests.spawn(async move {
                if let Err(e) = handle(conn, served, limits, &cache_dir).await {
                    tracing::warn!("control connection: {e}");
                }
            });
        };
        tokio::select! {
            _ = crate::net::accept_loop("control socket", || listener.accept(), on_connection) => {}
            _ = stopped => {}
        }
        requests.shutdown().await;
    });
    Ok(ControlServer {
        stop: Some(stop),
        task,
    })
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    w.write_all(&line).await
}

/// Why a command on `conn` may not mount through this node: it runs in another mount
/// namespace (another pod or container), where this node could neither see its mount point
/// nor would it outlive this node's namespace. `None` when it shares this node's.
fn foreign_mount_namespace(conn: &UnixStream, cache_dir: &Path) -> Option<String> {
    let pid = conn.peer_cred().ok()?.pid()?;
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    // The peer's namespace unreadable (it is gone): nothing to mount for anyway.
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
    (theirs != ours).then(|| {
        format!(
            "the node serving the cache directory {} runs in another mount namespace (another pod or container) than this command, and could not mount there; give each mount namespace its own cache directory (--cache-dir; ossmount fluid uses one per runtime)",
            cache_dir.display()
        )
    })
}

async fn handle(
    conn: UnixStream,
    served: Arc<dyn Served>,
    limits: RequestLimits,
    cache_dir: &Path,
) -> std::io::Result<()> {
    let (req, fd, rest) = read_request(&conn, limits).await;
    let foreign = match &req {
        Ok(Request::Mount { .. } | Request::Attach { .. }) => {
            foreign_mount_namespace(&conn, cache_dir)
        }
        _ => None,
    };
    let (r, mut w) = conn.into_split();
    let req = match req {
        Ok(req) => req,
        Err(problem) => return send(&mut w, &Reply::Error(problem)).await,
    };
    let (scheme, bucket, prefix, objects) = match req {
        Request::Mount {
            spec,
            foreground,
            again,
        } => {
            if let Some(why) = foreign {
                tracing::warn!("a mount request refused: {why}");
                return send(&mut w, &Reply::Error(why)).await;
            }
            // A client sends nothing more before its mount is answered.
            if !rest.is_empty() {
                let msg = "nothing may follow a mount request before its answer".to_string();
                return send(&mut w, &Reply::Error(msg)).await;
            }
            let lines = BufReader::new(r).lines();
            served.mount(spec, foreground, again, fd, lines, w).await;
            return Ok(());
        }
        Request::Attach { mount_id } => {
            if let Some(why) = foreign {
                return send(&mut w, &Reply::Error(why)).await;
            }
            let lines = BufReader::new(r).lines();
            served.attach(mount_id, lines, w).await;
            return Ok(());
        }
        Request::Prefetch {
            scheme,
            bucket,
            prefix,
            objects,
        } => (scheme, bucket, prefix, objects),
    };
    let (store, cache) = match served.prefetch_with(&scheme, &bucket) {
        Ok(found) => found,
        Err(msg) => return send(&mut w, &Reply::Error(msg)).await,
    };
    tracing::info!(prefix = %prefix, "prefetch asked through the control socket");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if send(&mut w, &reply).await.is_err() {
                break; // the caller went away; the prefetch goes on
            }
        }
    });
    let progress_tx = tx.clone();
    let report = prefetch(
        store,
        &cache,
        &bucket,
        &prefix,
        objects,
        move |p: &Progress| {
            let _ = progress_tx.send(Reply::Progress {
                bytes_present: p.bytes_present,
                bytes_total: p.bytes_total,
            });
        },
    )
    .await;
    let _ = tx.send(match report {
        Ok(r) => Reply::Done(r),
        Err(e) => Reply::Error(e.to_string()),
    });
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// The request line, read within `limits`, straight from the socket (`recvmsg`, so a
/// `/dev/fuse` descriptor sent with it arrives too; any other descriptor is closed), and the
/// bytes that came after the line. What went wrong otherwise, for the reply.
async fn read_request(
    conn: &UnixStream,
    limits: RequestLimits,
) -> (Result<Request, String>, Option<OwnedFd>, Vec<u8>) {
    let mut line = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    let read = async {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            conn.readable().await?;
            let got = conn.try_io(Interest::READABLE, || {
                recv_with_fds(conn.as_raw_fd(), &mut buf)
            });
            let (n, fds) = match got {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            for f in fds {
                if fd.is_none() {
                    fd = Some(f);
                }
            }
            if n == 0 {
                return Ok(());
            }
            line.extend_from_slice(&buf[..n]);
            if line.contains(&b'\n') || line.len() > limits.max_line {
                return Ok(());
            }
        }
    };
    let outcome = match tokio::time::timeout(limits.deadline, read).await {
        Err(_) => Err(format!(
            "no complete request within {} s",
            limits.deadline.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(())) => Ok(()),
    };
    let end = line.iter().position(|b| *b == b'\n');
    let request = outcome.and_then(|()| {
        if end.unwrap_or(line.len()) > limits.max_line {
            return Err(format!("request longer than {} bytes", limits.max_line));
        }
        serde_json::from_slice(&line[..end.unwrap_or(line.len())])
            .map_err(|e| format!("bad request: {e}"))
    });
    let rest = end.map(|e| line[e + 1..].to_vec()).unwrap_or_default();
    (request, fd, rest)
}

/// One `recvmsg`: the bytes read into `buf`, and the descriptors that came with them.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(
            "a descriptor sent with the request was dropped (this process is at its open file limit)",
        ));
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for this process.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends `line` with `fd` attached (SCM_RIGHTS) on a connected socket.
pub(crate) async fn send_with_fd(conn: &UnixStream, line: &[u8], fd: RawFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    let mut sent = 0;
    while sent < line.len() {
        conn.writable().await?;
        let cmsgs = [ControlMessage::ScmRights(&fds)];
        let attach: &[ControlMessage] = if sent == 0 { &cmsgs } else { &[] };
        let res = conn.try_io(Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&line[sent..])];
            Ok(sendmsg::<()>(
                conn.as_raw_fd(),
                &iov,
                attach,
                MsgFlags::empty(),
                None,
            )?)
        });
        match res {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks the mount behind `cache_dir` to prefetch; `on_progress` sees its progress.
pub async fn request_prefetch(
    cache_dir: &Path,
    scheme: &str,
    bucket: &str,
    prefix: &str,
    objects: usize,
    mut on_progress: impl FnMut(&Progress),
) -> Result<PrefetchReport, String> {
    let path = socket_path(cache_dir);
    let conn = UnixStream::connect(&path)
        .await
        .map_err(|e| format!("cannot reach the mount at {}: {e}", path.display()))?;
    let (r, mut w) = conn.into_split();
    let req = Request::Prefetch {
        scheme: scheme.into(),
        bucket: bucket.into(),
        prefix: prefix.into(),
        objects,
    };
    let mut line = serde_json::to_vec(&req).expect("requests serialise");
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await.map_err(|e| e.to_string())? {
        match serde_json::from_str::<Reply>(&l).map_err(|e| e.to_string())? {
            Reply::Progress {
                bytes_present,
                bytes_total,
            } => on_progress(&Progress {
                bytes_present,
                bytes_total,
                ..Progress::default()
            }),
            Reply::Done(r) => return Ok(r),
            Reply::Error(e) => return Err(e),
            other => return Err(format!("unexpected answer to a prefetch: {other:?}")),
        }
    }
    Err("the mount closed the control connection before it finished".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Capacity;
    use crate::hydrate::{ConnectionLimiter, HydrationConfig};
    use crate::store::memory::MemoryStore;
    use tokio::io::AsyncRead;

    const BUCKET: &str = "bkt";
    /// Every wait of these tests ends by then, pass or fail.
    const BOUND: Duration = Duration::from_secs(10);

    struct Mount {
        dir: tempfile::TempDir,
        store: Arc<MemoryStore>,
        cache: Arc<Cache>,
    }

    fn mount() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new("http://127.0.0.1:1");
        let cache = Cache::open(
            dir.path(),
            store.clone(),
            HydrationConfig {
                part_size: 4096,
                ..Default::default()
            },
            ConnectionLimiter::new(2, 0),
            Capacity::unlimited(),
        )
        .unwrap();
        Mount {
            dir,
            store,
            cache: Arc::new(cache),
        }
    }

    /// One bucket's store and cache, and no mounts.
    struct OneBucket {
        store: Arc<MemoryStore>,
        cache: Arc<Cache>,
    }

    impl Served for OneBucket {
        fn prefetch_with(
            &self,
            _scheme: &str,
            bucket: &str,
        ) -> Result<(Arc<dyn ObjectStore>, Arc<Cache>), String> {
            if bucket != BUCKET {
                return Err(format!("this cache serves bucket {BUCKET}, not {bucket}"));
            }
            Ok((self.store.clone(), self.cache.clone()))
        }

        fn mount(
            self: Arc<Self>,
            _spec: serde_json::Value,
            _foreground: bool,
            _again: bool,
            _fd: Option<OwnedFd>,
            _lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
            mut w: OwnedWriteHalf,
        ) -> crate::store::BoxFut<'static, ()> {
            Box::pin(async move {
                let _ = send(&mut w, &Reply::Error("no mounts here".into())).await;
            })
        }
    }

    impl Mount {
        fn serve(&self, limits: RequestLimits) -> ControlServer {
            let served = Arc::new(OneBucket {
                store: self.store.clone(),
                cache: self.cache.clone(),
            });
            serve_with_limits(self.dir.path(), served, limits).unwrap()
        }

        async fn connect(&self) -> UnixStream {
            UnixStream::connect(socket_path(self.dir.path()))
                .await
                .unwrap()
        }
    }

    /// The lines the server sends until it closes the connection.
    async fn replies_until_closed(conn: impl AsyncRead + Unpin) -> Vec<String> {
        let mut lines = BufReader::new(conn).lines();
        let mut got = Vec::new();
        // A reset (the server closed with our bytes unread) ends the stream as a close does.
        while let Ok(Some(l)) = lines.next_line().await {
            got.push(l);
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endless_and_silent_clients_are_cut_off_and_others_still_served() {
        let m = mount();
        let server = m.serve(RequestLimits {
            deadline: Duration::from_millis(500),
            ..REQUEST_LIMITS
        });

        let silent = m.connect().await;
        let endless = m.connect().await;
        let (endless_r, mut endless_w) = endless.into_split();
        let flood = tokio::spawn(async move {
            // 10 MiB and no newline; the write fails once the server hangs up, as it should.
            let _ = endless_w.write_all(&vec![b'x'; 10 << 20]).await;
            endless_w // held open: only the server may end this connection
        });

        // While both are connected, an ordinary request is answered (here: refused for
        // naming another bucket, which needs no object).
        let answered = tokio::time::timeout(
            BOUND,
            request_prefetch(m.dir.path(), "oss", "other", "", 1, |_| {}),
        )
        .await
        .expect("a normal client is answered while the others hang on");
        assert!(
            answered.as_ref().unwrap_err().contains("not other"),
            "{answered:?}"
        );

        let endless_got = tokio::time::timeout(BOUND, replies_until_closed(endless_r))
            .await
            .expect("the server closes a connection whose request line never ends");
        for reply in &endless_got {
            assert!(reply.contains("request longer than"), "{reply}");
        }
        let silent_got = tokio::time::timeout(BOUND, replies_until_closed(silent))
            .await
            .expect("the server closes a connection that sends nothing");
        assert_eq!(silent_got.len(), 1, "{silent_got:?}");
        assert!(
            silent_got[0].contains("no complete request"),
            "{silent_got:?}"
        );
        drop(flood);
        tokio::time::timeout(BOUND, server.shutdown())
            .await
            .expect("shutdown ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_the_prefetches_it_runs() {
        let m = mount();
        m.store.put(BUCKET, "big.bin", vec![7u8; 256 << 10]);
        m.store.stall(true); // the prefetch's GETs hang until the end of the test
        let server = m.serve(REQUEST_LIMITS);
        let dir = m.dir.path().to_path_buf();
        let client =
            tokio::spawn(async move { request_prefetch(&dir, "oss", BUCKET, "", 1, |_| {}).await });
        tokio::time::timeout(BOUND, async {
            while m.cache.active().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the prefetch starts hydrating");

        tokio::time::timeout(BOUND, server.shutdown())
            .await
            .expect("shutdown waits for the aborted prefetch, not for its download");
        // Nothing of the control server holds the cache any more: its prefetch is gone.
        assert_eq!(Arc::strong_count(&m.cache), 1);
        let outcome = tokio::time::timeout(BOUND, client)
            .await
            .expect("the caller hears the connection close")
            .unwrap();
        assert!(
            outcome.as_ref().is_err_and(|e| e.contains("closed")),
            "{outcome:?}"
        );
        m.store.stall(false);
        tokio::time::timeout(BOUND, m.cache.shutdown())
            .await
            .expect("the cache shuts down once the store answers again");
    }
}
