//! What a mount is asked to be (`MountOptions`) and the checks before anything is mounted:
//! the mount point (a directory, or `/dev/fd/N`: a `/dev/fuse` descriptor an orchestrator
//! mounted itself, which is then only served, never mounted or unmounted), and one request
//! that proves the credentials, endpoint and bucket. Running a mount is the node's
//! (`node`); this module must not start one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::hydrate::FetchMode;
use crate::metrics::RequestMetrics;
use crate::store::{ListRequest, ObjectStore, StoreUrl};

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The bucket and prefix, as the user wrote them (`oss://` or `s3://`).
    pub url: StoreUrl,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub part_size: u64,
    /// Background parts in flight per file (ParallelThreadCount); with `adaptive`, where the
    /// mount-wide background share starts.
    pub threads: usize,
    /// Concurrency follows throughput, up to `max_connections` (see `ConnectionLimiter::adapt`).
    pub adaptive: bool,
    pub max_connections: usize,
    pub mode: FetchMode,
    pub readahead: u64,
    pub metadata_ttl: Duration,
    pub allow_other: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// `None`: the defaults for the cache's filesystem (see `Capacity::default_for`).
    pub cache_size: Option<u64>,
    pub min_free_disk: Option<u64>,
    /// Hand complete files to the kernel (FUSE passthrough) when it offers it.
    pub passthrough: bool,
    /// Refuse objects the server announces no CRC-64 for.
    pub require_crc: bool,
    /// The longest a read waits for its bytes.
    pub read_deadline: Duration,
    /// Memory for the windows of objects larger than the cache, all readers together.
    pub direct_memory: u64,
    /// `--memory-limit`: the node's memory target (node-wide; `None`: half the cgroup's
    /// `memory.max`, if any, see `memory::MemoryTarget`).
    pub memory_limit: Option<u64>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_addr: Option<String>,
    /// The request counters the client reports to (set as its observer by the caller).
    pub request_metrics: Arc<RequestMetrics>,
    /// Kernel readahead, background requests and FUSE threads (measured defaults).
    pub fuse: crate::fs::fuse::FuseTuning,
}

impl MountOptions {
    /// The defaults of `ossmount mount` (the SDKs' PartSize and ParallelThreadCount, whole-file
    /// hydration, files owned by the caller, read-only modes, passthrough when offered).
    pub fn new(url: StoreUrl, mountpoint: PathBuf, cache_dir: PathBuf) -> MountOptions {
        MountOptions {
            url,
            mountpoint,
            cache_dir,
            part_size: 8 << 20,
            threads: 3,
            adaptive: true,
            max_connections: 16,
            mode: FetchMode::Auto,
            readahead: 16 << 20,
            metadata_ttl: Duration::from_secs(60),
            allow_other: false,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            file_mode: 0o444,
            dir_mode: 0o555,
            cache_size: None,
            min_free_disk: None,
            passthrough: true,
            require_crc: false,
            read_deadline: Duration::from_secs(60),
            direct_memory: crate::fs::DEFAULT_DIRECT_MEMORY,
            memory_limit: None,
            metrics_addr: None,
            request_metrics: Arc::default(),
            fuse: Default::default(),
        }
    }

    /// The mount prefix: the URL's key with a trailing `/` (or empty for the whole bucket).
    pub fn prefix(&self) -> String {
        let k = &self.url.key;
        if k.is_empty() || k.ends_with('/') {
            k.clone()
        } else {
            format!("{k}/")
        }
    }
}

/// The descriptor of a mount point given as `/dev/fd/N` (or `/proc/self/fd/N`): a
/// `/dev/fuse` descriptor an orchestrator opened, mounted with mount(2) `fd=N`, and let this
/// process inherit.
pub fn fuse_fd(mountpoint: &Path) -> Option<std::os::fd::RawFd> {
    let s = mountpoint.to_str()?;
    let n = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))?;
    n.parse().ok().filter(|n| *n >= 0)
}

/// `/dev/fuse` is character device 10:229.
fn check_fuse_fd(path: &Path, fd: std::os::fd::RawFd) -> Result<()> {
    let how = "the orchestrator opens /dev/fuse, mounts it with mount(2) -o fd=N, and starts \
               ossmount with that descriptor inherited";
    // SAFETY: fstat of a descriptor number writes only into `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        bail!(
            "{} is not an open descriptor ({}): {how}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let is_fuse = st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) == 10
        && libc::minor(st.st_rdev) == 229;
    if !is_fuse {
        bail!("{} is not a /dev/fuse descriptor: {how}", path.display());
    }
    Ok(())
}

pub fn check_mountpoint(path: &Path) -> Result<()> {
    if let Some(fd) = fuse_fd(path) {
        return check_fuse_fd(path, fd);
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("mountpoint {} is not a directory", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist: create it first (mkdir -p {})",
            path.display(),
            path.display()
        ),
        Err(e) => bail!(
            "mountpoint {} is not usable ({e}); if an earlier ossmount died, run: umount {}",
            path.display(),
            path.display()
        ),
    }
}

/// One request that proves the credentials, region, endpoint and bucket before mounting.
pub async fn preflight(store: &dyn ObjectStore, url: &StoreUrl, prefix: &str) -> Result<()> {
    store
        .list_page(
            &url.bucket,
            ListRequest {
                prefix: prefix.to_string(),
                max_keys: Some(1),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot list {url} (checked before mounting)"))?;
    Ok(())
}
