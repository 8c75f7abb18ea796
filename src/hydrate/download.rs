//! The standalone resumable download, like the OSS SDKs' `ResumableDownloadObject`: HEAD the
//! object, resume from a checkpoint that still matches it (or start over), fetch the parts
//! into `<target>.tmp`, check the whole-object CRC-64 (and, where the store gives one, the
//! whole object's MD5, read back from the temp file), rename into place, delete the
//! checkpoint. Bad arguments are refused before any request is sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{sync_dir, Checkpoint};
use super::{
    ConnectionLimiter, EngineStats, FetchMode, HydrateError, Hydration, HydrationConfig,
    HydrationFiles, ObjectIdentity, Progress,
};
use crate::store::{ObjectStore, StoreError};

/// What to do when the object changes on the server mid-download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnChange {
    /// Discard what was fetched and download the new version (up to 3 times).
    #[default]
    Restart,
    /// Stop with an error (the partial data is discarded).
    Fail,
}

impl OnChange {
    /// The spellings `FromStr` accepts, for command-line help.
    pub const NAMES: [&'static str; 2] = ["restart", "fail"];
}

impl std::str::FromStr for OnChange {
    type Err = String;
    fn from_str(s: &str) -> Result<OnChange, String> {
        match s.to_ascii_lowercase().as_str() {
            "restart" => Ok(OnChange::Restart),
            "fail" => Ok(OnChange::Fail),
            _ => Err(format!("{s:?} is not a choice here: use restart or fail")),
        }
    }
}

/// A download request, with the SDK's parameter names in mind.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub bucket: String,
    pub key: String,
    pub local_path: PathBuf,
    /// PartSize: bytes per ranged GET.
    pub part_size: u64,
    /// ParallelThreadCount: parts in flight at once (where `adaptive` starts).
    pub threads: usize,
    /// `--threads auto`: add parts in flight while throughput rises, up to
    /// `max_connections`, and halve them when the server asks to slow down
    /// (`ConnectionLimiter::adapt`).
    pub adaptive: bool,
    pub max_connections: usize,
    /// The `.dcp` checkpoint; `None` means a failed download starts over next time.
    pub checkpoint: Option<PathBuf>,
    pub on_change: OnChange,
    /// Attempts per part before the run fails (the checkpoint is kept for the next run).
    pub part_attempts: u32,
}

impl DownloadRequest {
    pub fn new(bucket: &str, key: &str, local_path: impl Into<PathBuf>) -> DownloadRequest {
        let local_path = local_path.into();
        let mut dcp = local_path.clone().into_os_string();
        dcp.push(".dcp");
        DownloadRequest {
            bucket: bucket.into(),
            key: key.into(),
            local_path,
            part_size: 8 << 20,
            threads: 3,
            adaptive: false,
            max_connections: 16,
            checkpoint: Some(PathBuf::from(dcp)),
            on_change: OnChange::Restart,
            part_attempts: 3,
        }
    }

    /// `<local>.tmp`: the data goes here until it is complete and verified.
    pub fn temp_path(&self) -> PathBuf {
        let mut p = self.local_path.clone().into_os_string();
        p.push(".tmp");
        PathBuf::from(p)
    }

    /// Refuses values that cannot work, before any request is made.
    pub fn validate(&self) -> Result<(), DownloadError> {
        let bad = |m: String| Err(DownloadError::Invalid(m));
        super::validate_part_size(self.part_size).map_err(DownloadError::Invalid)?;
        super::validate_threads(self.threads).map_err(DownloadError::Invalid)?;
        if self.adaptive && self.max_connections < self.threads {
            return bad(format!(
                "--max-connections {} is below --threads {}: raise it (e.g. --max-connections 16)",
                self.max_connections, self.threads
            ));
        }
        if self.local_path.is_dir() {
            return bad(format!(
                "{} is a directory: give a file path to download to (e.g. {})",
                self.local_path.display(),
                self.local_path
                    .join(self.key.rsplit('/').next().unwrap_or("object"))
                    .display()
            ));
        }
        let check_dir = |p: &Path, what: &str| -> Result<(), DownloadError> {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dir.is_dir() {
                return Err(DownloadError::Invalid(format!(
                    "the directory {} for the {what} does not exist: create it first (mkdir -p {})",
                    dir.display(),
                    dir.display()
                )));
            }
            Ok(())
        };
        check_dir(&self.local_path, "local file")?;
        if let Some(c) = &self.checkpoint {
            check_dir(c, "checkpoint")?;
            if c.is_dir() {
                return bad(format!(
                    "checkpoint path {} is a directory: give a file path such as {}.dcp",
                    c.display(),
                    self.local_path.display()
                ));
            }
        }
        if self.key.is_empty() || self.key.ends_with('/') {
            return bad(format!(
                "{}/{} names a prefix, not an object: give the object's full key",
                self.bucket, self.key
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadResult {
    pub size: u64,
    pub etag: String,
    pub part_size: u64,
    pub parts_total: usize,
    /// Parts fetched in this run (including those fetched again after a restart).
    pub part_requests: u64,
    pub bytes_fetched: u64,
    /// Bytes taken from the checkpoint instead of the network.
    pub bytes_resumed: u64,
    /// Times the download started over because the object changed.
    pub restarts: u32,
    /// The whole-object digest that was checked and matched (the store gave one): `MD5`
    /// or `CRC64NVME`.
    pub digest_verified: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Hydrate(Arc<HydrateError>),
    #[error("local file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// The store's error behind this failure, if any (for printing code and request id).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            DownloadError::Store(e) => Some(e),
            DownloadError::Hydrate(h) => h.store_error(),
            _ => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a resumable download. `on_progress` is called a few times a second while parts
/// arrive.
pub async fn resumable_download(
    store: Arc<dyn ObjectStore>,
    req: &DownloadRequest,
    on_progress: impl FnMut(&Progress),
) -> Result<DownloadResult, DownloadError> {
    let limiter = req.limiter();
    resumable_download_with(store, req, limiter, on_progress).await
}

impl DownloadRequest {
    /// The connections the download may use: `threads`, or adaptive from there.
    pub fn limiter(&self) -> Arc<ConnectionLimiter> {
        if self.adaptive {
            ConnectionLimiter::adaptive(self.max_connections, 0, self.threads)
        } else {
            ConnectionLimiter::new(self.threads, 0)
        }
    }
}

/// `resumable_download` on connections from `limiter` (made by `DownloadRequest::limiter`),
/// so the caller can report throttling to it. An adaptive limiter is adapted while the
/// download runs.
pub async fn resumable_download_with(
    store: Arc<dyn ObjectStore>,
    req: &DownloadRequest,
    limiter: Arc<ConnectionLimiter>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<DownloadResult, DownloadError> {
    req.validate()?;
    let stats = Arc::new(EngineStats::default());
    let adapting = limiter.is_adaptive().then(|| {
        let stats = stats.clone();
        AbortOnDrop(tokio::spawn(
            limiter
                .clone()
                .adapt(crate::hydrate::limiter::ADAPT_TICK, move || {
                    stats.bytes_fetched.load(Ordering::Relaxed)
                }),
        ))
    });
    let temp = req.temp_path();
    let mut restarts = 0;
    let mut fetched_before_restart = 0;
    let mut requests_before_restart = 0;
    loop {
        let meta = store.head(&req.bucket, &req.key).await?;
        let id = ObjectIdentity::from_meta(&req.bucket, &req.key, &meta);
        let resume = load_resume(&*store, req, &id, &temp);
        let cfg = HydrationConfig {
            part_size: req.part_size,
            // Adaptive: as many workers as the limiter may ever allow; it decides how many run.
            threads: if adapting.is_some() {
                limiter.window_max()
            } else {
                req.threads
            },
            mode: FetchMode::All,
            readahead_parts: 0,
            part_attempts: req.part_attempts.max(1),
            retry_delay: Duration::from_millis(500),
            stats: stats.clone(),
            ..HydrationConfig::default()
        };
        let files = HydrationFiles {
            data: temp.clone(),
            checkpoint: req.checkpoint.clone(),
            // The user's file: the usual mode, as any download would create it.
            data_mode: 0o666,
        };
        let h = Hydration::start(
            store.clone(),
            id.clone(),
            files,
            cfg,
            limiter.clone(),
            resume.as_ref(),
        )
        .map_err(|e| DownloadError::Hydrate(Arc::new(e)))?;
        let outcome = {
            let wait = h.wait_complete();
            tokio::pin!(wait);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    r = &mut wait => break r,
                    _ = tick.tick() => on_progress(&h.progress()),
                }
            }
        };
        let progress = h.progress();
        on_progress(&progress);
        h.shutdown().await;
        match outcome {
            Ok(()) => {
                finish(req, &temp)?;
                return Ok(DownloadResult {
                    size: id.size,
                    etag: id.etag,
                    part_size: h.layout().part_size,
                    parts_total: progress.parts_total,
                    part_requests: progress.part_requests + requests_before_restart,
                    bytes_fetched: progress.bytes_fetched + fetched_before_restart,
                    bytes_resumed: progress.bytes_resumed,
                    restarts,
                    digest_verified: id.digest.map(|d| d.algorithm()),
                });
            }
            Err(e) => {
                let changed = matches!(*e, HydrateError::ObjectChanged { .. });
                let corrupt = e.is_corrupt();
                if changed || corrupt {
                    // Never keep bytes of a version that is gone or that failed its checksum.
                    discard(req, &temp);
                }
                if changed && req.on_change == OnChange::Restart && restarts < 3 {
                    restarts += 1;
                    fetched_before_restart += progress.bytes_fetched;
                    requests_before_restart += progress.part_requests;
                    tracing::warn!(bucket = %req.bucket, key = %req.key, "the object changed on the server; starting over with the new version");
                    continue;
                }
                if req.checkpoint.is_none() {
                    let _ = std::fs::remove_file(&temp);
                }
                return Err(DownloadError::Hydrate(e));
            }
        }
    }
}

/// The checkpoint to resume from, if there is one that still describes this exact object in
/// this temp file; any other is deleted (with its temp file) and logged.
fn load_resume(
    store: &dyn ObjectStore,
    req: &DownloadRequest,
    id: &ObjectIdentity,
    temp: &Path,
) -> Option<Checkpoint> {
    let Some(path) = &req.checkpoint else {
        let _ = std::fs::remove_file(temp);
        return None;
    };
    if !path.exists() {
        let _ = std::fs::remove_file(temp);
        return None;
    }
    let verdict = Checkpoint::load(path).and_then(|c| {
        c.check_identity(&store.location(), id, temp)?;
        Ok(c)
    });
    match verdict {
        Ok(c) => {
            if c.part_size != req.part_size {
                tracing::info!(
                    "resuming with the checkpoint's part size {} (not {})",
                    c.part_size,
                    req.part_size
                );
            }
            tracing::info!(
                "resuming from {}: {}/{} parts present",
                path.display(),
                c.parts_present(),
                c.layout().count()
            );
            Some(c)
        }
        Err(reason) => {
            tracing::warn!(
                "discarding checkpoint {}: {reason}; starting over",
                path.display()
            );
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(temp);
            None
        }
    }
}

fn discard(req: &DownloadRequest, temp: &Path) {
    if let Some(c) = &req.checkpoint {
        let _ = std::fs::remove_file(c);
    }
    let _ = std::fs::remove_file(temp);
}

/// Makes the verified temp file the target and removes the checkpoint, in that order.
fn finish(req: &DownloadRequest, temp: &Path) -> Result<(), DownloadError> {
    if !temp.exists() {
        // An empty object: nothing was fetched, the file is simply empty.
        std::fs::File::create(temp).map_err(io(temp))?;
    }
    std::fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(io(temp))?;
    std::fs::rename(temp, &req.local_path).map_err(io(&req.local_path))?;
    sync_dir(&req.local_path).map_err(io(&req.local_path))?;
    if let Some(c) = &req.checkpoint {
        match std::fs::remove_file(c) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(c)(e)),
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
