//! How a FUSE session meets the kernel: the mount itself (our own mount(2) as root through
//! `fs::kernel`, fuser's fusermount3 path without the privilege, or a `/dev/fuse` descriptor
//! handed in), the session that serves it, and how it is ended. The requests themselves are
//! the adapter's (`fs::fuse`). No policy here.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::super::OssFs;
use super::takeover::{self, Handshake, Init, Stand};
use super::FuseAdapter;

/// How the kernel is to see a mount.
#[derive(Debug, Clone)]
pub struct KernelMount {
    /// What `mount` and `/proc/mounts` show as the source.
    pub fs_name: String,
    /// Let other users in (the kernel's allow_other).
    pub allow_other: bool,
    /// Hand complete files to the kernel when it offers FUSE passthrough.
    pub passthrough: bool,
    pub tuning: FuseTuning,
}

/// What the session asks of the kernel and how many threads read its requests. The defaults
/// are what `examples/bench_mount_read.rs --fuse` measured best (README, Performance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseTuning {
    /// The kernel's readahead for a file, in bytes (also the largest read it sends).
    pub max_readahead: u32,
    /// Requests the kernel keeps in flight in the background (readahead, async reads).
    pub max_background: u16,
    /// Threads reading requests from /dev/fuse.
    pub threads: usize,
}

impl Default for FuseTuning {
    fn default() -> FuseTuning {
        FuseTuning {
            max_readahead: 1 << 20,
            max_background: 64,
            threads: 2,
        }
    }
}

/// Where the kernel meets the session.
pub enum Target<'a> {
    /// A directory this process mounts on (and unmounts when asked).
    Path(&'a Path),
    /// A `/dev/fuse` descriptor an orchestrator opened and mounted with mount(2) `fd=N`
    /// (the CSI drivers' contract): this process only serves it; it never mounts or
    /// unmounts anything, and the session ends when the orchestrator unmounts.
    Fd(std::os::fd::OwnedFd),
    /// A connection a predecessor process served, handed over by the holder: its INIT is
    /// replayed, not answered again (see `takeover`).
    Held(Held),
}

/// A live connection as a holder keeps it, and as a successor takes it over.
pub struct Held {
    pub device: OwnedFd,
    pub handshake: Handshake,
    /// Where a predecessor mounted it itself (and so this process unmounts it): the
    /// canonical mount point and the kernel's mount id. `None` for a handed-in descriptor.
    pub own_mount: Option<(PathBuf, Option<u64>)>,
}

/// A mounted FUSE session: `run` serves requests until the filesystem is unmounted.
pub struct MountedSession {
    session: fuser::Session<FuseAdapter>,
    mounted_by: MountedBy,
    /// The connection and its INIT, for a holder to keep (`None` when fuser mounted it
    /// through fusermount3 and kept the exchange to itself).
    held: Option<Held>,
}

/// Who made the kernel mount, and so how it is unmounted.
enum MountedBy {
    /// This process, with mount(2) as `fuse.ossmount` (root).
    Own(Arc<Mutex<super::super::kernel::OwnMount>>),
    /// fuser through fusermount3 (without the privilege to mount).
    Fuser,
    /// An orchestrator that handed the descriptor in: only it unmounts.
    HandedIn,
}

/// Ends a session from elsewhere (a signal handler).
pub enum Unmounter {
    Own(Arc<Mutex<super::super::kernel::OwnMount>>),
    Fuser(fuser::SessionUnmounter),
    HandedIn,
}

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Own(m) => m.lock().unwrap().unmount(),
            Unmounter::Fuser(u) => u.unmount(),
            Unmounter::HandedIn => Ok(()),
        }
    }

    /// Detaches (lazily unmounts) a mount this process made as root; like `unmount`
    /// otherwise.
    pub fn detach(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Own(m) => m.lock().unwrap().detach(),
            other => other.unmount(),
        }
    }
}

impl MountedSession {
    pub fn unmounter(&mut self) -> Unmounter {
        match &self.mounted_by {
            MountedBy::Own(m) => Unmounter::Own(m.clone()),
            MountedBy::Fuser => Unmounter::Fuser(self.session.unmount_callable()),
            MountedBy::HandedIn => Unmounter::HandedIn,
        }
    }

    /// The connection and its INIT exchange, for a holder to keep while this process serves
    /// it (once; `None` for a mount fuser made through fusermount3).
    pub fn take_held(&mut self) -> Option<Held> {
        self.held.take()
    }

    /// Whether an `Unmounter` can end the session (false for a handed-in descriptor: only
    /// whoever mounted it can unmount it).
    pub fn owns_mount(&self) -> bool {
        !matches!(self.mounted_by, MountedBy::HandedIn)
    }

    /// Serves until unmounted (`umount`, or an `Unmounter`); a mount this process made and
    /// that is still there then (the session failed) is detached.
    pub fn run(self) -> std::io::Result<()> {
        let MountedSession {
            session,
            mounted_by,
            held,
        } = self;
        drop(held);
        let result = session.run();
        drop(mounted_by);
        result
    }
}

/// Mounts `fs` read-only on `target` (or serves the descriptor handed in); requests are
/// answered on `rt`. Returns once the kernel's INIT has been answered.
pub fn mount(
    fs: Arc<OssFs>,
    rt: tokio::runtime::Handle,
    target: Target<'_>,
    kernel: &KernelMount,
) -> std::io::Result<MountedSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(kernel.fs_name.clone()),
        fuser::MountOption::Subtype("ossmount".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
    ];
    // SessionACL::All is what adds the kernel's allow_other option.
    config.acl = if kernel.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(kernel.tuning.threads.max(1));
    // Every reader thread on the one descriptor: a cloned descriptor (FUSE_DEV_IOC_CLONE)
    // has its own queue of requests being answered, which the kernel fails when its last
    // holder (this process) dies, so a successor could not have them resent.
    config.clone_fd = false;
    let mut adapter = FuseAdapter::new(fs, rt, kernel.passthrough);
    adapter.tuning = kernel.tuning;
    let notifier = adapter.notifier.clone();
    let acl = config.acl;
    let (session, mounted_by, held) = match target {
        Target::Path(mountpoint) => {
            match super::super::kernel::mount(mountpoint, &kernel.fs_name, kernel.allow_other)? {
                Some((fd, own)) => {
                    let mount = Some((own.target().to_path_buf(), own.kernel_mount_id()));
                    // Unmounted (detached) if the kernel's INIT cannot be answered.
                    let own = Arc::new(Mutex::new(own));
                    let (session, held) =
                        serve_replayable(adapter, fd, acl, config, Init::Fresh, mount)?;
                    (session, MountedBy::Own(own), Some(held))
                }
                None => (
                    fuser::Session::new(adapter, mountpoint, &config)?,
                    MountedBy::Fuser,
                    None,
                ),
            }
        }
        Target::Fd(fd) => {
            let (session, held) = serve_replayable(adapter, fd, acl, config, Init::Fresh, None)?;
            (session, MountedBy::HandedIn, Some(held))
        }
        Target::Held(held) => {
            let Held {
                device,
                handshake,
                own_mount,
            } = held;
            let (session, held) = serve_replayable(
                adapter,
                device,
                acl,
                config,
                Init::TakeOver(handshake),
                own_mount.clone(),
            )?;
            let mounted_by = match own_mount {
                Some((target, id)) => MountedBy::Own(Arc::new(Mutex::new(
                    super::super::kernel::OwnMount::adopt(&target, id, held.device.try_clone()?)?,
                ))),
                None => MountedBy::HandedIn,
            };
            // Whatever the predecessor had read and not answered comes again, to us.
            match takeover::request_resend(&held.device) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the connection ended (unmounted) before it was taken over",
                    ))
                }
                Err(e) => tracing::warn!(
                    "the kernel did not take FUSE_NOTIFY_RESEND ({e}): requests the previous server had read are not answered"
                ),
            }
            (session, mounted_by, Some(held))
        }
    };
    let _ = notifier.set(session.notifier());
    Ok(MountedSession {
        session,
        mounted_by,
        held,
    })
}

/// Starts fuser on `device` through a stand-in socket (see `takeover`), so the INIT
/// exchange is known and can be replayed by a successor. Returns the session and what a
/// holder keeps: a duplicate of `device` with the exchange.
fn serve_replayable(
    adapter: FuseAdapter,
    device: OwnedFd,
    acl: fuser::SessionACL,
    config: fuser::Config,
    init: Init,
    own_mount: Option<(PathBuf, Option<u64>)>,
) -> std::io::Result<(fuser::Session<FuseAdapter>, Held)> {
    let request = match &init {
        Init::Fresh => takeover::read_init(&device)?,
        Init::TakeOver(h) => h.request.clone(),
    };
    let (stand, stand_in) = Stand::new(request)?;
    let session = fuser::Session::from_fd(adapter, stand_in, acl, config)?;
    let handshake = stand.connect(&init, &device).map_err(|e| match e {
        takeover::TakeOverError::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::Unsupported, other.to_string()),
    })?;
    Ok((
        session,
        Held {
            device,
            handshake,
            own_mount,
        },
    ))
}
