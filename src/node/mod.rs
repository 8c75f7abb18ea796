//! The node server: one process owns a cache directory (its lock, entries, capacity and
//! LRU, its running hydrations, the connection budget, the control socket and the status
//! file) and serves every mount on it, each a `MountSession` with its own store, options and
//! counters. `ossmount mount` on a cache directory a node serves joins it over the control
//! socket (see `join`); a node with no mount left ends. Created, run and ended in one place:
//! `Node::open`, `Node::mount`, `Node::shutdown`. Must not speak HTTP or fuser itself (the
//! stores and `fs::fuse` do).

pub mod holder;
pub mod join;
mod session;
mod single;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::cache::{Cache, Capacity};
use crate::control::ControlServer;
use crate::fs::fuse;
use crate::fs::{ListingShare, MountCounters};
use crate::hydrate::{ConnectionLimiter, HydrationConfig};
use crate::memory::MemoryTarget;
use crate::mount::MountOptions;
use crate::status::{self, MountStatusFile, SessionStatus};
use crate::store::ObjectStore;

pub use session::{MountSession, SessionEnd, Source};
pub use single::run_mount;

/// Builds a mount's options and store from what a client sent (its command line and
/// environment); the command line's business, so the node takes it as a function.
pub type MountFactory = Arc<
    dyn Fn(
            serde_json::Value,
        ) -> crate::store::BoxFut<'static, Result<(MountOptions, Arc<dyn ObjectStore>)>>
        + Send
        + Sync,
>;

pub struct Node {
    cache_dir: PathBuf,
    /// The node-wide settings, from the first mount.
    settings: NodeSettings,
    cache: Arc<Cache>,
    rt: tokio::runtime::Handle,
    sessions: Mutex<Sessions>,
    /// Live sessions plus mounts being started: the node ends when it drops to 0.
    busy: watch::Sender<usize>,
    /// Mounts asked for since the node started, taken or not.
    asked: watch::Sender<u64>,
    /// Set once the node has decided to end (idle): no mount starts after it.
    closing: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    control: Mutex<Option<ControlServer>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The once-a-second work (`tick`): stopped by a signal and awaited at shutdown, never
    /// aborted, so a tick still running cannot write the status after the last write.
    ticker: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    factory: Option<MountFactory>,
    /// The process that keeps this node's connections across its death (see `holder`).
    holder: std::sync::OnceLock<Arc<holder::HolderLink>>,
    /// Mounts handed over are still being taken over (`Attach` waits for them).
    taking_over: std::sync::atomic::AtomicBool,
    /// What memory the node aims to stay under (from its first mount, or its cgroup).
    memory: MemoryTarget,
    /// Every mount's cached listings count against it (with a memory target).
    listing_share: Option<Arc<ListingShare>>,
    /// When the allocator last gave free memory back (see `tick`).
    last_trim: Mutex<std::time::Instant>,
}

/// What one node does for all its mounts, taken from its first.
#[derive(Debug, Clone, PartialEq)]
struct NodeSettings {
    part_size: u64,
    cache_size: Option<u64>,
    min_free_disk: Option<u64>,
    max_connections: usize,
    /// `None`: adaptive.
    threads: Option<usize>,
    mode: crate::hydrate::FetchMode,
    readahead: u64,
    /// `--memory-limit` as asked (`None`: the default, from the cgroup).
    memory_limit: Option<u64>,
}

impl NodeSettings {
    fn of(o: &MountOptions) -> NodeSettings {
        NodeSettings {
            part_size: o.part_size,
            cache_size: o.cache_size,
            min_free_disk: o.min_free_disk,
            max_connections: o.max_connections,
            threads: (!o.adaptive).then_some(o.threads),
            mode: o.mode,
            readahead: o.readahead,
            memory_limit: o.memory_limit,
        }
    }
}

#[derive(Default)]
struct Sessions {
    live: Vec<Arc<MountSession>>,
    /// Mount points of mounts being started (a second request for one waits for nothing:
    /// it is refused, so a retried request never stacks a second mount on the first).
    starting_at: Vec<PathBuf>,
    /// Final counters of the sessions that ended, for the status file's totals.
    ended: Vec<(String, String, MountCounters)>,
}

/// A mount point reserved by a mount being started.
struct MountpointReserved<'a>(&'a Node, PathBuf);

impl Drop for MountpointReserved<'_> {
    fn drop(&mut self) {
        let mut sessions = self.0.sessions.lock().unwrap();
        sessions.starting_at.retain(|p| *p != self.1);
    }
}

/// A mount being started: counted as busy until it is dropped, so the node does not end
/// between a client's request and its mount.
pub struct Starting<'a>(&'a Node);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n -= 1);
    }
}

impl Node {
    /// Takes the cache directory (its lock) with the node-wide settings of `first` (part
    /// size, capacity, connections, hydration mode and readahead), and starts the node's
    /// background work. `store` is the first mount's; every mount brings its own.
    pub fn open(
        first: &MountOptions,
        store: Arc<dyn ObjectStore>,
        rt: tokio::runtime::Handle,
        factory: Option<MountFactory>,
        holder: Option<Arc<holder::HolderLink>>,
    ) -> Result<Arc<Node>> {
        raise_open_file_limit();
        let opts = first;
        let part_size = opts.part_size;
        let reserve = (opts.max_connections / 4).max(2);
        let limiter = if opts.adaptive {
            ConnectionLimiter::adaptive(opts.max_connections, reserve, opts.threads)
        } else {
            ConnectionLimiter::new(opts.max_connections, reserve)
        };
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
        let memory = MemoryTarget::resolve(opts.memory_limit);
        tracing::info!("{}", memory.describe());
        let listing_share = memory.listed_entries_max().map(ListingShare::new);
        let defaults = Capacity::default_for(&opts.cache_dir);
        let capacity = Capacity {
            max_bytes: opts.cache_size.unwrap_or(defaults.max_bytes),
            min_free_disk: opts.min_free_disk.unwrap_or(defaults.min_free_disk),
        };
        let cache = Arc::new(Cache::open(
            &opts.cache_dir,
            store,
            cfg,
            limiter.clone(),
            capacity,
        )?);
        let node = Arc::new(Node {
            settings: NodeSettings::of(opts),
            cache_dir: opts.cache_dir.clone(),
            cache: cache.clone(),
            rt: rt.clone(),
            sessions: Mutex::default(),
            busy: watch::channel(0).0,
            asked: watch::channel(0).0,
            closing: Default::default(),
            next_id: AtomicU64::new(1),
            control: Mutex::new(None),
            tasks: Mutex::default(),
            ticker: Mutex::default(),
            factory,
            holder: Default::default(),
            taking_over: Default::default(),
            memory,
            listing_share,
            last_trim: Mutex::new(std::time::Instant::now()),
        });
        // Before the control socket takes a first mount: every mount is held, and numbered
        // past those handed over (their journals and places in the holder are theirs).
        if let Some(link) = holder {
            node.next_id
                .fetch_max(link.largest_handed_id + 1, Ordering::Relaxed);
            if link.largest_handed_id > 0 {
                node.taking_over.store(true, Ordering::SeqCst);
            }
            node.set_holder(link);
        }
        let control = {
            let _rt = rt.enter();
            crate::control::serve(&opts.cache_dir, node.clone()).with_context(|| {
                format!(
                    "cannot open the control socket in {}",
                    opts.cache_dir.display()
                )
            })?
        };
        *node.control.lock().unwrap() = Some(control);
        let (stop_ticks, mut ticks_stopped) = watch::channel(false);
        let ticker = rt.spawn({
            let node = Arc::downgrade(&node);
            async move {
                while let Some(node) = node.upgrade() {
                    // Off the async workers: stopping a hydration syncs its records, and
                    // the status is a file written.
                    let _ = tokio::task::spawn_blocking(move || node.tick()).await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = ticks_stopped.changed() => break,
                    }
                }
            }
        });
        *node.ticker.lock().unwrap() = Some((stop_ticks, ticker));
        let mut tasks = Vec::new();
        if opts.adaptive {
            let cache = cache.clone();
            tasks.push(
                rt.spawn(limiter.adapt(crate::hydrate::limiter::ADAPT_TICK, move || {
                    cache.engine_stats().bytes_fetched.load(Ordering::Relaxed)
                })),
            );
        }
        *node.tasks.lock().unwrap() = tasks;
        Ok(node)
    }

    /// The node-wide settings `opts` asks for that this node does not have (it keeps its
    /// first mount's), in words for the command's user.
    pub fn differences(&self, opts: &MountOptions) -> Vec<String> {
        let want = NodeSettings::of(opts);
        let have = &self.settings;
        let mut notes = Vec::new();
        let mut note = |what: &str, asked: String, kept: String| {
            if asked != kept {
                notes.push(format!(
                    "{what} {asked} was asked for, but the node serving this cache directory uses {kept} for every mount (set at its first mount)"
                ));
            }
        };
        note(
            "--part-size",
            want.part_size.to_string(),
            have.part_size.to_string(),
        );
        note(
            "--cache-size",
            format!("{:?}", want.cache_size),
            format!("{:?}", have.cache_size),
        );
        note(
            "--min-free-disk",
            format!("{:?}", want.min_free_disk),
            format!("{:?}", have.min_free_disk),
        );
        note(
            "--max-connections",
            want.max_connections.to_string(),
            have.max_connections.to_string(),
        );
        note(
            "--threads",
            format!("{:?}", want.threads),
            format!("{:?}", have.threads),
        );
        note(
            "--hydrate",
            format!("{:?}", want.mode),
            format!("{:?}", have.mode),
        );
        note(
            "--readahead",
            want.readahead.to_string(),
            have.readahead.to_string(),
        );
        let target = |t: Option<u64>| t.map_or("the default".to_string(), crate::size::human_bytes);
        note(
            "--memory-limit",
            target(want.memory_limit),
            target(have.memory_limit),
        );
        notes
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn factory(&self) -> Option<&MountFactory> {
        self.factory.as_ref()
    }

    /// Counts a mount about to start as busy (see `Starting`).
    /// `None` once the node is ending (`close_if_idle`): the caller asks another node.
    pub fn starting(&self) -> Option<Starting<'_>> {
        let mut took = false;
        // Under the watch's lock, as `close_if_idle` decides: a mount either starts before
        // the node decides to end (and keeps it from ending), or not at all.
        self.busy.send_if_modified(|n| {
            if self.closing.load(Ordering::SeqCst) {
                return false;
            }
            *n += 1;
            took = true;
            true
        });
        if !took {
            return None;
        }
        self.asked.send_modify(|n| *n += 1);
        Some(Starting(self))
    }

    /// Decides to end if nothing is live or starting; from then on no mount starts.
    pub fn close_if_idle(&self) -> bool {
        let mut closed = false;
        self.busy.send_if_modified(|n| {
            if *n == 0 {
                self.closing.store(true, Ordering::SeqCst);
                closed = true;
            }
            false
        });
        closed
    }

    /// Mounts one session over the node's cache with `store` (blocking: call it off the
    /// async runtime). `handed_in` is a `/dev/fuse` descriptor a client passed over the
    /// control socket. `spec` is what the holder needs to have the mount taken over by a
    /// successor (`None`: the mount does not outlive this process).
    pub fn mount(
        &self,
        opts: MountOptions,
        store: Arc<dyn ObjectStore>,
        handed_in: Option<std::os::fd::OwnedFd>,
        spec: Option<serde_json::Value>,
    ) -> Result<Arc<MountSession>> {
        let _starting = self
            .starting()
            .ok_or_else(|| anyhow::anyhow!("the node serving this cache directory is ending"))?;
        crate::mount::check_mountpoint(&opts.mountpoint).or_else(|e| match &handed_in {
            Some(_) => Ok(()),
            None => Err(e),
        })?;
        let _place = match &handed_in {
            Some(_) => None,
            None => Some(self.reserve_mountpoint(&opts.mountpoint)?),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.start_session(id, opts, store, Source::New(handed_in), spec)
    }

    /// Takes over mount `id`, a live connection a predecessor served (handed over by the
    /// holder), under the same number.
    pub fn take_over(
        &self,
        id: u64,
        opts: MountOptions,
        store: Arc<dyn ObjectStore>,
        held: fuse::Held,
        spec: serde_json::Value,
    ) -> Result<Arc<MountSession>> {
        let _starting = self
            .starting()
            .ok_or_else(|| anyhow::anyhow!("the node serving this cache directory is ending"))?;
        self.next_id.fetch_max(id + 1, Ordering::Relaxed);
        self.start_session(id, opts, store, Source::Held(held), Some(spec))
    }

    fn start_session(
        &self,
        id: u64,
        mut opts: MountOptions,
        store: Arc<dyn ObjectStore>,
        source: Source,
        spec: Option<serde_json::Value>,
    ) -> Result<Arc<MountSession>> {
        opts.request_metrics
            .report_throttling_to(self.cache.limiter().clone());
        // Read windows take their share of the node's memory target (per mount).
        opts.direct_memory = self.memory.direct_memory(opts.direct_memory);
        let holder = self.holder.get().cloned();
        // Only a mount a successor can take over needs what it must honour written down.
        let journal = holder
            .as_ref()
            .filter(|_| spec.is_some())
            .map(|_| self.journal_dir(id));
        let survival = match (&holder, spec, &journal) {
            (Some(h), Some(spec), Some(journal)) => Some(session::Survival {
                holder: h,
                spec,
                journal: journal.clone(),
            }),
            _ => None,
        };
        let session = Arc::new(MountSession::start(
            id,
            opts,
            store,
            &self.cache,
            source,
            survival,
            &self.rt,
        )?);
        if let Some(share) = &self.listing_share {
            session.fs.share_listings(share.clone());
        }
        self.sessions.lock().unwrap().live.push(session.clone());
        self.busy.send_modify(|n| *n += 1);
        // Ends the session's bookkeeping when its FUSE session ends, however it ends.
        let weak = Arc::downgrade(&session);
        self.rt.spawn({
            let busy = self.busy.clone();
            async move {
                if let Some(s) = weak.upgrade() {
                    let _ = s.ended().await;
                }
                if let Some(holder) = holder {
                    holder.release(id);
                }
                if let Some(dir) = journal {
                    // The connection is gone: nobody can ask for what it recorded.
                    let _ = std::fs::remove_dir_all(dir);
                }
                busy.send_modify(|n| *n -= 1);
            }
        });
        self.write_status();
        Ok(session)
    }

    /// Where mount `id` records the inode numbers and handles a successor must honour.
    fn journal_dir(&self, id: u64) -> PathBuf {
        self.cache_dir.join("journal").join(id.to_string())
    }

    /// Every mount handed over has been taken over (or given up).
    pub fn took_over(&self) {
        self.taking_over.store(false, Ordering::SeqCst);
        self.write_status();
    }

    /// Whether mounts handed over are still being taken over.
    pub fn taking_over(&self) -> bool {
        self.taking_over.load(Ordering::SeqCst)
    }

    /// Tells the holder this node ends on purpose: nothing of it is to be taken over.
    pub fn tell_holder_ending(&self) {
        if let Some(h) = self.holder.get() {
            h.ending();
        }
    }

    /// From now on the mounts of this node are kept by `link`'s holder across this
    /// process's death.
    fn set_holder(&self, link: Arc<holder::HolderLink>) {
        crate::metrics::SERVER_RESTARTS.store(link.info.restarts, Ordering::Relaxed);
        crate::metrics::SERVER_UPGRADES.store(link.info.upgrades, Ordering::Relaxed);
        let _ = self.holder.set(link);
    }

    /// `at` for a mount about to start, refused when this node serves a mount there or is
    /// starting one (given back when the guard drops).
    fn reserve_mountpoint(&self, at: &Path) -> Result<MountpointReserved<'_>> {
        let mut sessions = self.sessions.lock().unwrap();
        let served = sessions
            .live
            .iter()
            .any(|s| !s.has_ended() && s.opts.mountpoint == at);
        if served || sessions.starting_at.iter().any(|p| p == at) {
            anyhow::bail!(
                "this node already serves a mount at {} (unmount it first)",
                at.display()
            );
        }
        sessions.starting_at.push(at.to_path_buf());
        Ok(MountpointReserved(self, at.to_path_buf()))
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<Arc<MountSession>> {
        self.sessions.lock().unwrap().live.clone()
    }

    /// A live session serving `bucket` through the store of `scheme` (for a prefetch asked
    /// over the control socket): an `s3://` prefetch is never run with an OSS mount's client.
    pub fn session_for_bucket(&self, scheme: &str, bucket: &str) -> Option<Arc<MountSession>> {
        self.sessions()
            .into_iter()
            .find(|s| s.opts.url.scheme == scheme && s.opts.url.bucket == bucket && !s.has_ended())
    }

    /// Waits until a first mount has been asked for (taken or refused).
    pub async fn asked_once(&self) {
        let mut rx = self.asked.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Waits until no session is live and none is being started.
    pub async fn idle(&self) {
        let mut rx = self.busy.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Once a second: hydrations that finished after their last close give back their
    /// files, each mount's namespace forgets what the kernel let go of, ended sessions are
    /// closed, and the status file is refreshed.
    fn tick(&self) {
        self.cache.reap();
        self.retire_ended();
        for s in self.sessions() {
            s.fs.sweep_namespace();
        }
        self.give_back_memory();
        self.write_status();
    }

    /// Over half its memory target, the node has the allocator give its free memory back to
    /// the kernel (glibc keeps what dropped listings and nodes freed, so the resident set
    /// would not shrink with them), at most every 5 s: a trim walks the allocator's free
    /// lists.
    fn give_back_memory(&self) {
        let Some(limit) = self.memory.limit else {
            return;
        };
        let mut last = self.last_trim.lock().unwrap();
        if last.elapsed() < Duration::from_secs(5) || crate::memory::resident_bytes() < limit / 2 {
            return;
        }
        *last = std::time::Instant::now();
        crate::memory::give_back_free_memory();
    }

    fn retire_ended(&self) {
        let mut st = self.sessions.lock().unwrap();
        let (ended, live): (Vec<_>, Vec<_>) = st.live.drain(..).partition(|s| s.has_ended());
        st.live = live;
        for s in ended {
            s.close();
            st.ended.push((
                s.opts.url.to_string(),
                s.opts.mountpoint.display().to_string(),
                s.fs.counters(),
            ));
        }
    }

    /// Unmounts every session this process mounted (SIGTERM to the node); `lazily`:
    /// detaches the busy ones, so none stays behind dead when the node ends.
    pub fn unmount_all(&self, lazily: bool) {
        for s in self.sessions() {
            let done = if lazily { s.detach() } else { s.unmount() };
            if let Err(e) = done {
                tracing::warn!("unmount of {} failed: {e}", s.opts.mountpoint.display());
            }
        }
    }

    /// Stops the control socket (and the prefetches it runs), the background work and
    /// every hydration with its checkpoint consistent; writes the last status.
    pub async fn shutdown(&self) {
        let control = self.control.lock().unwrap().take();
        if let Some(c) = control {
            c.shutdown().await;
        }
        let _ = std::fs::remove_file(crate::control::socket_path(&self.cache_dir));
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let ticker = self.ticker.lock().unwrap().take();
        if let Some((stop, task)) = ticker {
            let _ = stop.send(true);
            let _ = task.await;
        }
        self.retire_ended();
        self.cache.shutdown().await;
        self.write_status();
    }

    /// Refreshes `<cache>/status.json` for `ossmount status`: every mount, and the totals.
    fn write_status(&self) {
        let cache = &self.cache;
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
        let st = self.sessions.lock().unwrap();
        let mut mounts: Vec<SessionStatus> = st
            .live
            .iter()
            .map(|s| SessionStatus {
                id: s.id,
                url: s.opts.url.to_string(),
                mountpoint: s.opts.mountpoint.display().to_string(),
                counters: s.fs.counters(),
            })
            .collect();
        let ended = st.ended.iter().map(|(url, mnt, c)| SessionStatus {
            id: 0,
            url: url.clone(),
            mountpoint: mnt.clone(),
            counters: c.clone(),
        });
        let all: Vec<SessionStatus> = mounts.iter().cloned().chain(ended).collect();
        if mounts.is_empty() {
            mounts = all.iter().rev().take(1).cloned().collect();
        }
        let first = mounts.first();
        let holder = self.holder.get().map(|h| h.info);
        let st = MountStatusFile {
            pid: std::process::id(),
            server_pid: std::process::id(),
            holder_pid: holder.map(|h| h.holder_pid),
            restarts: holder.map(|h| h.restarts).unwrap_or(0),
            upgrades: holder.map(|h| h.upgrades).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
            taking_over: self.taking_over(),
            url: first.map(|m| m.url.clone()).unwrap_or_default(),
            mountpoint: first.map(|m| m.mountpoint.clone()).unwrap_or_default(),
            capacity_bytes: cache.capacity().max_bytes,
            min_free_disk: cache.capacity().min_free_disk,
            used_bytes: cache.used_bytes(),
            hydrating,
            counters: MountCounters::total(all.iter().map(|m| &m.counters)),
            mounts,
            memory_limit: self.memory.limit,
            rss_bytes: crate::memory::resident_bytes(),
            peak_rss_bytes: crate::memory::peak_resident_bytes(),
            listed_entries: self.listing_share.as_ref().map_or(0, |s| s.entries()),
            updated_unix: status::unix_now(),
        };
        status::write_status_file(cache.dir(), &st);
    }
}

/// Raises the soft limit on open descriptors to the hard limit (a node holds one per open
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

impl crate::control::Served for Node {
    fn prefetch_with(
        &self,
        scheme: &str,
        bucket: &str,
    ) -> Result<(Arc<dyn ObjectStore>, Arc<Cache>), String> {
        let s = self.session_for_bucket(scheme, bucket).ok_or_else(|| {
            format!(
                "no mount of {scheme}://{bucket} is served from this cache directory; mount it first, or prefetch into another --cache-dir"
            )
        })?;
        Ok((s.fs.store().clone(), s.fs.cache().clone()))
    }

    fn mount(
        self: Arc<Self>,
        spec: serde_json::Value,
        foreground: bool,
        again: bool,
        fd: Option<std::os::fd::OwnedFd>,
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
        w: tokio::net::unix::OwnedWriteHalf,
    ) -> crate::store::BoxFut<'static, ()> {
        Box::pin(join::serve_mount(
            self, spec, foreground, again, fd, lines, w,
        ))
    }

    fn attach(
        self: Arc<Self>,
        mount_id: u64,
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
        w: tokio::net::unix::OwnedWriteHalf,
    ) -> crate::store::BoxFut<'static, ()> {
        Box::pin(join::serve_attach(self, mount_id, lines, w))
    }
}
