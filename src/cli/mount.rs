//! `ossmount mount`: the mount's flags, turned into `MountOptions` and a store (by the node
//! that serves the mount, from a `MountSpec`), and the command's side: ask the node, wait
//! for the end with `--foreground`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use ossmount::hydrate::{validate_part_size, validate_threads, FetchMode};
use ossmount::mount::MountOptions;
use ossmount::size::{parse_duration, parse_size};

use ossmount::node::join;
use ossmount::store::ObjectStore;

use super::connection::{ConnectionArgs, ObjectUrl};

#[derive(clap::Args, Clone, serde::Serialize, serde::Deserialize)]
pub struct MountArgs {
    /// oss://bucket or oss://bucket/prefix/ (or s3://bucket/prefix/ for S3-compatible
    /// storage)
    url: String,
    /// An existing directory to mount on
    mountpoint: PathBuf,
    /// Cache directory [default: $XDG_CACHE_HOME/ossmount/<bucket>-<id>]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bytes per part (PartSize)
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Background parts in flight per file, fixed (ParallelThreadCount) [default: adaptive:
    /// starts at 3 and adds connections while throughput rises, up to --max-connections]
    #[arg(long)]
    threads: Option<usize>,
    /// Requests in flight for the whole mount [default: 16; with --threads N, 4 x N, at
    /// least 8]
    #[arg(long)]
    max_connections: Option<usize>,
    /// auto: what reads need plus readahead, the whole file once it is read sequentially
    /// (or is small), also after close; open: whole files once opened; read: only what reads
    /// touch, plus readahead
    #[arg(long, default_value = "auto",
          value_parser = PossibleValuesParser::new(["auto", "open", "read"]).map(|s| match s.as_str() {
              "open" => FetchMode::All,
              "read" => FetchMode::OnDemand,
              _ => FetchMode::Auto,
          }))]
    hydrate: FetchMode,
    /// Bytes fetched ahead of a reader's position before the rest of the file
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    readahead: u64,
    /// How long listings and attributes are trusted, e.g. 60s
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    metadata_ttl: std::time::Duration,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long)]
    allow_other: bool,
    /// Owner of every file [default: you]
    #[arg(long)]
    uid: Option<u32>,
    /// Group of every file [default: your group]
    #[arg(long)]
    gid: Option<u32>,
    #[arg(long, default_value = "0444", value_parser = parse_mode)]
    file_mode: u16,
    #[arg(long, default_value = "0555", value_parser = parse_mode)]
    dir_mode: u16,
    /// Most the cache may hold, e.g. 20GiB [default: a quarter of the cache's filesystem]
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Free space to leave on the cache's filesystem [default: 5% of it, at most 5 GiB]
    #[arg(long, value_parser = parse_size)]
    min_free_disk: Option<u64>,
    /// Serve every read through ossmount, even of complete files the kernel could read
    /// directly (FUSE passthrough, used when the kernel offers it)
    #[arg(long)]
    no_passthrough: bool,
    /// Refuse objects that cannot be verified: no CRC-64 (OSS), or on S3 neither a
    /// CRC64NVME nor an ETag that is the MD5; without it they are served and shown as
    /// unverified
    #[arg(long)]
    require_crc: bool,
    /// Memory the node aims to stay under, e.g. 512MiB: read windows take a quarter of it,
    /// cached directory listings a quarter (the oldest are dropped beyond it) [default: half
    /// of the cgroup's memory.max; none without one]
    #[arg(long, value_parser = parse_memory_limit)]
    memory_limit: Option<u64>,
    /// The longest a read waits for its bytes before it fails with EIO, e.g. 60s
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    read_deadline: std::time::Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9101
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Stay in the foreground (logs to stderr) instead of detaching
    #[arg(short, long)]
    pub foreground: bool,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0444"))
}

/// A memory target: a size of at least 32 MiB (below that the node's own runtime, about
/// 13 MiB, and one 8 MiB read window leave nothing to share out).
fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < 32 << 20 {
        return Err(format!(
            "{s} is too small for a memory target: give at least 32MiB (e.g. 256MiB)"
        ));
    }
    Ok(n)
}

fn mount_options(conn: &ConnectionArgs, m: &MountArgs) -> Result<MountOptions> {
    let url = ObjectUrl::parse(&m.url).map_err(anyhow::Error::msg)?;
    validate_part_size(m.part_size).map_err(anyhow::Error::msg)?;
    if let Some(t) = m.threads {
        validate_threads(t).map_err(anyhow::Error::msg)?;
    }
    let cache_dir = m.cache_dir.clone().unwrap_or_else(|| {
        let env = ossmount::store::s3::credentials::ChainEnvironment::from_process();
        let endpoint = conn.cache_dir_endpoint(&url, &env);
        ossmount::cache::default_cache_dir(&endpoint, url.bucket(), url.key())
    });
    let mut o = MountOptions::new(url.store_url(), m.mountpoint.clone(), cache_dir);
    o.part_size = m.part_size;
    if let Some(t) = m.threads {
        (o.threads, o.adaptive) = (t, false);
        o.max_connections = (t * 4).max(8);
    }
    o.max_connections = m.max_connections.unwrap_or(o.max_connections).max(1);
    o.mode = m.hydrate;
    o.readahead = m.readahead;
    o.metadata_ttl = m.metadata_ttl;
    o.allow_other = m.allow_other;
    o.uid = m.uid.unwrap_or(o.uid);
    o.gid = m.gid.unwrap_or(o.gid);
    o.file_mode = m.file_mode;
    o.dir_mode = m.dir_mode;
    o.cache_size = m.cache_size;
    o.min_free_disk = m.min_free_disk;
    o.passthrough = !m.no_passthrough;
    o.require_crc = m.require_crc;
    o.read_deadline = m.read_deadline;
    o.memory_limit = m.memory_limit;
    o.metrics_addr = m.metrics_addr.clone();
    Ok(o)
}

/// What a mount command sends its node: its parsed arguments and the environment its
/// credential chain reads. Holds secrets: it travels only over the owner-only control
/// socket (or the node's stdin) and is never logged.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub conn: ConnectionArgs,
    pub mount: MountArgs,
    pub env: std::collections::BTreeMap<String, String>,
}

impl MountSpec {
    /// The mount's options and its store, as the node runs it.
    pub async fn build(self) -> Result<(MountOptions, Arc<dyn ObjectStore>)> {
        let opts = mount_options(&self.conn, &self.mount)?;
        let url = ObjectUrl::parse(&self.mount.url).map_err(anyhow::Error::msg)?;
        // 3 attempts: a read fails promptly when the server is gone.
        let store = self
            .conn
            .store_in(
                &url,
                Some(opts.request_metrics.clone()),
                Some(Arc::new(self.env)),
                3,
            )
            .await?;
        Ok((opts, store))
    }
}

/// SIGTERM and SIGINT, caught from the command's start: one that arrives while the node
/// mounts (the mount may already serve before the command hears so) asks for the unmount
/// once the mount is there, instead of killing the command.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn catch(rt: &tokio::runtime::Runtime) -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Every signal from now on, in order, to each of `to` (one per foreground mount).
    pub fn forward(
        self,
        rt: &tokio::runtime::Runtime,
        to: Vec<tokio::sync::mpsc::UnboundedSender<()>>,
    ) {
        self.forward_escalating(rt, to, None)
    }

    /// As `forward`, and with `detach_after`, a second notice to every mount still waiting
    /// that long after the first signal, as if a second signal had come: a busy mount is
    /// detached then. For a container runtime that sends one SIGTERM and then SIGKILL,
    /// which would leave a dead mount behind.
    pub fn forward_escalating(
        mut self,
        rt: &tokio::runtime::Runtime,
        to: Vec<tokio::sync::mpsc::UnboundedSender<()>>,
        detach_after: Option<std::time::Duration>,
    ) {
        rt.spawn(async move {
            let mut first = true;
            loop {
                tokio::select! {
                    _ = self.term.recv() => {}
                    _ = self.int.recv() => {}
                }
                if first {
                    first = false;
                    if let Some(after) = detach_after {
                        let later = to.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            for tx in &later {
                                let _ = tx.send(());
                            }
                        });
                    }
                }
                // Sent to every mount still waiting; none left: nobody listens any more.
                let sent = to.iter().filter(|tx| tx.send(()).is_ok()).count();
                if sent == 0 {
                    break;
                }
            }
        });
    }
}

/// Asks the node serving the mount's cache directory for it, starting one when none runs,
/// with `env` as the environment its credential chain reads (the command's, or the CSI
/// plugin's with a volume's secrets). Returns once the node has mounted it.
pub async fn ask_node(
    conn: &ConnectionArgs,
    m: &MountArgs,
    env: std::collections::BTreeMap<String, String>,
    log: &super::node::NodeLog<'_>,
) -> Result<(MountOptions, join::Joined)> {
    // Paths as this command means them: the node resolves nothing against its own
    // working directory (another command's).
    let mut m = m.clone();
    if ossmount::mount::fuse_fd(&m.mountpoint).is_none() {
        m.mountpoint = std::path::absolute(&m.mountpoint)?;
    }
    if let Some(dir) = &m.cache_dir {
        m.cache_dir = Some(std::path::absolute(dir)?);
    }
    let mut conn = conn.clone();
    conn.make_paths_absolute()?;
    let opts = mount_options(&conn, &m)?;
    // The default directory as this command found it: the node, in another environment,
    // might name another (an S3 one depends on AWS_ENDPOINT_URL).
    m.cache_dir = Some(opts.cache_dir.clone());
    ossmount::mount::check_mountpoint(&opts.mountpoint)?;
    ossmount::cache::private_dir(&opts.cache_dir)?;
    let spec = MountSpec {
        conn,
        mount: m.clone(),
        env,
    };
    let req = join::MountRequest {
        spec: serde_json::to_value(&spec).expect("a spec serialises"),
        foreground: m.foreground,
        fd: ossmount::mount::fuse_fd(&opts.mountpoint),
    };
    let joined = super::node::join_or_start(&opts.cache_dir, &spec, &req, log).await?;
    Ok((opts, joined))
}

/// What of this command's environment the node's credential chain for `url` reads: the OSS
/// chain's variables, and for an `s3://` URL the AWS ones (keys, profile, endpoint, region).
pub fn chain_environment(url: &str) -> std::collections::BTreeMap<String, String> {
    let mut env = ossmount::oss::credentials::chain_environment();
    if url.starts_with("s3://") {
        env.extend(std::env::vars().filter(|(k, _)| k.starts_with("AWS_")));
    }
    env
}

/// Asks the node serving the mount's cache directory for the mount, in this command's
/// credential environment, starting a node when none runs, and says so on stderr; returns
/// once mounted.
pub fn join(
    conn: &ConnectionArgs,
    m: &MountArgs,
    rt: &tokio::runtime::Runtime,
    log: &super::node::NodeLog<'_>,
) -> Result<join::Joined> {
    let env = chain_environment(&m.url);
    let (opts, mut joined) = rt.block_on(ask_node(conn, m, env, log))?;
    if ossmount::mount::fuse_fd(&opts.mountpoint).is_none() {
        joined.set_mountpoint(&opts.mountpoint);
    }
    tracing::debug!(
        "mount {} served by node {}",
        joined.mount_id,
        joined.node_pid
    );
    let how_to_end = match ossmount::mount::fuse_fd(&opts.mountpoint) {
        Some(_) => "unmounting the target ends it".to_string(),
        None => format!("unmount with: umount {}", opts.mountpoint.display()),
    };
    eprintln!(
        "mounted {} at {} (served by ossmount node pid {}, cache {}); {how_to_end}",
        opts.url,
        opts.mountpoint.display(),
        joined.node_pid,
        opts.cache_dir.display(),
    );
    for note in &joined.notes {
        eprintln!("ossmount: note: {note}");
    }
    Ok(joined)
}

/// `ossmount mount`: asks the node serving the cache directory for the mount, starting one
/// when none runs; returns once mounted, or with `--foreground` once the mount has ended.
pub fn run(
    conn: &ConnectionArgs,
    m: &MountArgs,
    rt: &tokio::runtime::Runtime,
    log: &super::node::NodeLog<'_>,
) -> Result<ExitCode> {
    let signals = Signals::catch(rt)?;
    let joined = join(conn, m, rt, log)?;
    if !m.foreground {
        return Ok(ExitCode::SUCCESS);
    }
    // Every SIGTERM/SIGINT, in order: the first asks for the unmount, the next to detach.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    signals.forward(rt, vec![tx]);
    rt.block_on(joined.wait(&mut rx))
        .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}
