//! Wiring a mount together: check what the user gave (mountpoint, cache dir, credentials and
//! bucket with one request), open the cache, build the filesystem, run the FUSE session until
//! it is unmounted (`umount`, SIGINT or SIGTERM), then stop hydrations with their checkpoints
//! consistent and log the mount's counters.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cache::{Cache, Capacity};
use crate::fs::fuse::{self, KernelMount};
use crate::fs::{FsConfig, OssFs};
use crate::hydrate::{ConnectionLimiter, FetchMode, HydrationConfig};
use crate::metrics::RequestMetrics;
use crate::oss::OssUrl;
use crate::status::{self, MountStatusFile};
use crate::store::ListRequest;
use crate::store::ObjectStore;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub url: OssUrl,
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
    pub fn new(url: OssUrl, mountpoint: PathBuf, cache_dir: PathBuf) -> MountOptions {
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

pub fn check_mountpoint(path: &Path) -> Result<()> {
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
pub async fn preflight(store: &dyn ObjectStore, url: &OssUrl, prefix: &str) -> Result<()> {
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

/// Mounts and serves until unmounted. `on_mounted` runs once the kernel has the mount.
pub fn run_mount(
    opts: &MountOptions,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
    on_mounted: impl FnOnce(),
) -> Result<()> {
    check_mountpoint(&opts.mountpoint)?;
    raise_open_file_limit();
    let prefix = opts.prefix();
    rt.block_on(preflight(&*store, &opts.url, &prefix))?;
    let part_size = opts.part_size;
    let reserve = (opts.max_connections / 4).max(2);
    let limiter = if opts.adaptive {
        ConnectionLimiter::adaptive(opts.max_connections, reserve, opts.threads)
    } else {
        ConnectionLimiter::new(opts.max_connections, reserve)
    };
    opts.request_metrics.report_throttling_to(limiter.clone());
    let cfg = HydrationConfig {
        part_size,
        // Adaptive: one file may use the whole background share the limiter allows now.
        threads: if opts.adaptive {
            limiter.window_max()
        } else {
            opts.threads
        },
        mode: opts.mode,
        readahead_parts: opts.readahead.div_ceil(part_size).max(1) as usize,
        part_attempts: 2,
        retry_delay: Duration::from_millis(200),
        ..HydrationConfig::default()
    };
    crate::cache::private_dir(&opts.cache_dir)?;
    let defaults = Capacity::default_for(&opts.cache_dir);
    let capacity = Capacity {
        max_bytes: opts.cache_size.unwrap_or(defaults.max_bytes),
        min_free_disk: opts.min_free_disk.unwrap_or(defaults.min_free_disk),
    };
    let cache = Arc::new(Cache::open(
        &opts.cache_dir,
        store.clone(),
        cfg,
        limiter,
        capacity,
    )?);
    let fs = Arc::new(OssFs::new(
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
        },
        store.clone(),
        cache.clone(),
    ));
    let metrics_task = match &opts.metrics_addr {
        Some(addr) => {
            let (bound, task) = rt
                .block_on(crate::metrics::serve(
                    addr,
                    opts.request_metrics.clone(),
                    fs.clone(),
                ))
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!("metrics at http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let control = {
        let _rt = rt.enter();
        crate::control::serve(
            &opts.cache_dir,
            store,
            cache.clone(),
            opts.url.bucket.clone(),
        )
        .with_context(|| {
            format!(
                "cannot open the control socket in {}",
                opts.cache_dir.display()
            )
        })?
    };
    let kernel = KernelMount {
        fs_name: format!("ossmount:{}", opts.url.bucket),
        allow_other: opts.allow_other,
        passthrough: opts.passthrough,
        tuning: opts.fuse,
    };
    let mut session = fuse::mount(fs.clone(), rt.clone(), &opts.mountpoint, &kernel)
        .with_context(|| format!("cannot mount on {}", opts.mountpoint.display()))?;
    let unmounter = Arc::new(Mutex::new(session.unmounter()));
    let signal_task = rt.spawn({
        let unmounter = unmounter.clone();
        let mountpoint = opts.mountpoint.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received, unmounting {}", mountpoint.display());
            if let Err(e) = unmounter.lock().unwrap().unmount() {
                tracing::warn!("unmount failed: {e}");
            }
        }
    });
    tracing::info!(
        "mounted {} at {} (cache {})",
        opts.url,
        opts.mountpoint.display(),
        opts.cache_dir.display()
    );
    on_mounted();
    // Stopped by a signal, not an abort: a tick runs off the async workers, and must not
    // write the status after the last one below.
    let (stop_status, mut status_stopped) = tokio::sync::watch::channel(false);
    let status_task = rt.spawn({
        let fs = fs.clone();
        let opts = opts.clone();
        async move {
            loop {
                // Off the async workers: stopping a hydration syncs its records, and the
                // status is a file written.
                let (fs, opts) = (fs.clone(), opts.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    // Hydrations that finished after their last close give back their files.
                    fs.cache().reap();
                    fs.sweep_namespace();
                    write_mount_status(&fs, &opts);
                })
                .await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = status_stopped.changed() => break,
                }
            }
        }
    });
    let adapt_task = opts.adaptive.then(|| {
        let cache = cache.clone();
        rt.spawn(
            cache
                .limiter()
                .clone()
                .adapt(Duration::from_millis(250), move || {
                    cache
                        .engine_stats()
                        .bytes_fetched
                        .load(std::sync::atomic::Ordering::Relaxed)
                }),
        )
    });
    let result = session.run();
    if let Some(t) = adapt_task {
        t.abort();
    }
    signal_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    // Before the cache shuts down: prefetches asked through the socket use it.
    rt.block_on(control.shutdown());
    let _ = std::fs::remove_file(crate::control::socket_path(&opts.cache_dir));
    let _ = stop_status.send(true);
    let _ = rt.block_on(status_task);
    rt.block_on(cache.shutdown());
    write_mount_status(&fs, opts);
    tracing::info!(
        "unmounted {}: {}",
        opts.mountpoint.display(),
        fs.stats_line()
    );
    result.with_context(|| format!("the FUSE session on {} failed", opts.mountpoint.display()))
}

/// Refreshes `<cache>/status.json` for `ossmount status`.
fn write_mount_status(fs: &OssFs, opts: &MountOptions) {
    let cache = fs.cache();
    let hydrating = cache
        .active()
        .iter()
        .filter(|h| !h.is_complete())
        .filter_map(|h| {
            h.data_path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    let st = MountStatusFile {
        pid: std::process::id(),
        url: opts.url.to_string(),
        mountpoint: opts.mountpoint.display().to_string(),
        capacity_bytes: cache.capacity().max_bytes,
        min_free_disk: cache.capacity().min_free_disk,
        used_bytes: cache.used_bytes(),
        hydrating,
        counters: fs.counters(),
        updated_unix: status::unix_now(),
    };
    status::write_status_file(cache.dir(), &st);
}

/// Raises the soft limit on open descriptors to the hard limit (a mount holds one per open
/// file it serves, whatever a service manager's default soft limit is) and logs the figure.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!("open file limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("open file limit stays {soft} (hard {hard}): {e}"),
        },
        Ok((soft, _)) => tracing::info!("open file limit {soft}"),
        Err(e) => tracing::warn!("cannot read the open file limit: {e}"),
    }
}
