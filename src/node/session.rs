//! One mount of a node: its store (its endpoint and credentials), its filesystem (namespace,
//! options, counters) over the node's shared cache, its FUSE session on its own thread, its
//! metrics endpoint if it asked for one, and how it ends (`umount`, `unmount()`, or its
//! session failing). Created, run and ended here; the node only keeps the list. Must not
//! touch the cache directory's lock, control socket or status file (the node's).

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::fs::fuse::{self, Held, KernelMount, Target, Unmounter};
use crate::fs::{FsConfig, OssFs};
use crate::mount::{fuse_fd, preflight, MountOptions};
use crate::store::ObjectStore;

/// How a session ended: `Ok` when unmounted, else why it failed.
pub type SessionEnd = Result<(), String>;

/// What a mount needs to outlive this process: the holder that keeps its connection, the
/// spec a successor builds it from, and the journal of what the kernel was told.
pub struct Survival<'a> {
    pub holder: &'a super::holder::HolderLink,
    /// Holds credentials: memory and the holder only.
    pub spec: serde_json::Value,
    pub journal: std::path::PathBuf,
}

/// Where a session's connection comes from.
pub enum Source {
    /// A new mount: made here, or on a `/dev/fuse` descriptor handed in.
    New(Option<std::os::fd::OwnedFd>),
    /// A live connection a predecessor served, handed over by the holder.
    Held(Held),
}

pub struct MountSession {
    pub id: u64,
    pub opts: MountOptions,
    pub fs: Arc<OssFs>,
    unmounter: Mutex<Unmounter>,
    owns_mount: bool,
    ended: watch::Receiver<Option<SessionEnd>>,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl MountSession {
    /// Proves the store can list the mount's prefix, mounts (or takes the handed-in
    /// descriptor, or the held connection) and starts serving. Returns once the kernel's
    /// INIT has been answered; the connection is given to the holder (`hold`) first.
    pub(super) fn start(
        id: u64,
        opts: MountOptions,
        store: Arc<dyn ObjectStore>,
        cache: &Cache,
        source: Source,
        survival: Option<Survival<'_>>,
        rt: &tokio::runtime::Handle,
    ) -> Result<MountSession> {
        let prefix = opts.prefix();
        let taking_over = matches!(source, Source::Held(_));
        if !taking_over {
            // A connection taken over is served whatever the store says now: its readers
            // get each request's own error, not a dead mount.
            rt.block_on(preflight(&*store, &opts.url, &prefix))?;
        }
        let journal = survival.as_ref().map(|s| crate::fs::JournalConfig {
            dir: s.journal.clone(),
            resume: taking_over,
        });
        let fs = Arc::new(OssFs::try_new(
            FsConfig {
                bucket: opts.url.bucket.clone(),
                prefix,
                metadata_ttl: opts.metadata_ttl,
                uid: opts.uid,
                gid: opts.gid,
                file_mode: opts.file_mode,
                dir_mode: opts.dir_mode,
                require_crc: opts.require_crc,
                read_deadline: opts.read_deadline,
                direct_memory: opts.direct_memory,
                journal,
            },
            store.clone(),
            Arc::new(cache.for_store(store)),
        )
        .context("cannot open the mount's journal (the inode numbers and handles a successor must honour)")?);
        let metrics = match &opts.metrics_addr {
            Some(addr) => {
                let served = rt
                    .block_on(crate::metrics::serve(
                        addr,
                        opts.request_metrics.clone(),
                        fs.clone(),
                    ))
                    .with_context(|| format!("cannot serve metrics on {addr}"));
                match served {
                    Ok((bound, task)) => {
                        tracing::info!("metrics at http://{bound}/metrics (of {})", opts.url);
                        Some(task)
                    }
                    Err(e) if taking_over => {
                        tracing::warn!("{e:#}; the mount is taken over without its metrics");
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let kernel = KernelMount {
            fs_name: format!("ossmount:{}", opts.url.bucket),
            allow_other: opts.allow_other,
            passthrough: opts.passthrough,
            tuning: opts.fuse,
        };
        let target = match (source, fuse_fd(&opts.mountpoint)) {
            (Source::Held(held), _) => Target::Held(held),
            (Source::New(Some(fd)), _) => Target::Fd(fd),
            // SAFETY: check_mountpoint proved it an open /dev/fuse descriptor handed to this
            // process to serve; nothing else here uses it.
            (Source::New(None), Some(n)) => {
                Target::Fd(unsafe { std::os::fd::FromRawFd::from_raw_fd(n) })
            }
            (Source::New(None), None) => Target::Path(&opts.mountpoint),
        };
        let mounted = fuse::mount(fs.clone(), rt.clone(), target, &kernel);
        let mut session = match mounted {
            Ok(s) => s,
            Err(e) => {
                if let Some(t) = metrics {
                    t.abort();
                }
                return Err(e)
                    .with_context(|| format!("cannot mount on {}", opts.mountpoint.display()));
            }
        };
        // The holder has the connection before anything is served on it: a death from now
        // on is survived.
        if let (Some(held), Some(s)) = (session.take_held(), survival) {
            let record = super::holder::HeldMount::of(id, s.spec, &opts.mountpoint, &held);
            s.holder.hold(record, &held);
        }
        let owns_mount = session.owns_mount();
        let unmounter = Mutex::new(session.unmounter());
        let (tell_end, ended) = watch::channel(None);
        std::thread::Builder::new()
            .name(format!("fuse-session-{id}"))
            .spawn(move || {
                let end = session.run().map_err(|e| e.to_string());
                let _ = tell_end.send(Some(end));
            })
            .context("cannot start the FUSE session thread")?;
        tracing::info!(
            "{} {} at {} (mount {id})",
            if taking_over { "took over" } else { "mounted" },
            opts.url,
            opts.mountpoint.display()
        );
        let session = MountSession {
            id,
            opts,
            fs,
            unmounter,
            owns_mount,
            ended,
            metrics,
        };
        Ok(session)
    }

    /// Asks the kernel to unmount (a plain umount: busy files make it fail, as `umount`
    /// does). A no-op on a handed-in descriptor: only its orchestrator can unmount it.
    pub fn unmount(&self) -> std::io::Result<()> {
        self.unmounter.lock().unwrap().unmount()
    }

    /// Detaches the mount (MNT_DETACH): it leaves the namespace now, and ends once its open
    /// files are closed. For a mount whose command is gone, so it never stays dead.
    pub fn detach(&self) -> std::io::Result<()> {
        self.unmounter.lock().unwrap().detach()
    }

    /// Whether this process made the kernel mount (and so can unmount it).
    pub fn owns_mount(&self) -> bool {
        self.owns_mount
    }

    /// Waits until the session has ended; returns how.
    pub async fn ended(&self) -> SessionEnd {
        let mut rx = self.ended.clone();
        let end = rx
            .wait_for(Option::is_some)
            .await
            .map(|e| e.clone().expect("waited for Some"));
        end.unwrap_or_else(|_| Err("the session thread is gone".into()))
    }

    pub fn has_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Stops what the session runs besides the FUSE thread (its metrics endpoint).
    pub(super) fn close(&self) {
        if let Some(t) = &self.metrics {
            t.abort();
        }
        tracing::info!(
            "unmounted {} (mount {}): {}",
            self.opts.mountpoint.display(),
            self.id,
            self.fs.stats_line()
        );
    }
}
