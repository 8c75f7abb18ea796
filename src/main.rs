//! The `ossmount` command: argument parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ossmount::config::ConnectionArgs;
use std::sync::Arc;

use ossmount::emulator::{Emulator, EmulatorConfig, Faults};
use ossmount::hydrate::download::{resumable_download, DownloadRequest, OnChange};
use ossmount::hydrate::{FetchMode, MAX_PART_SIZE};
use ossmount::mount::MountOptions;
use ossmount::oss::OssUrl;
use ossmount::progress;
use ossmount::size::{human_bytes, parse_duration, parse_size};

#[derive(Parser)]
#[command(
    name = "ossmount",
    version,
    about = "Mount an Alibaba Cloud OSS bucket read-only, with a resumable local cache"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// Log level (error, warn, info, debug, trace); RUST_LOG takes precedence
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List objects and prefixes: one decoded key per line
    Ls {
        /// oss://bucket/prefix/
        url: String,
        /// List every key below the prefix, not just one level
        #[arg(short, long)]
        recursive: bool,
        /// Show size and last-modified time
        #[arg(short, long)]
        long: bool,
    },
    /// Show an object's size, ETag, Last-Modified and CRC-64
    Stat { url: String },
    /// Download an object with parallel ranged GETs, resumable from a checkpoint (like the OSS
    /// SDKs' ResumableDownloadObject)
    Download {
        /// oss://bucket/key
        url: String,
        /// Local file to write (replaced only when the download is complete and verified)
        local: PathBuf,
        /// Bytes per part (PartSize), e.g. 8MiB
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        part_size: u64,
        /// Parts fetched at once (ParallelThreadCount)
        #[arg(long, default_value_t = 3)]
        threads: usize,
        /// Checkpoint file [default: LOCAL.dcp]
        #[arg(long, conflicts_with = "no_checkpoint")]
        checkpoint: Option<PathBuf>,
        /// Keep no checkpoint: an interrupted download starts over
        #[arg(long)]
        no_checkpoint: bool,
        /// When the object changes on the server mid-download
        #[arg(long, value_enum, default_value_t = OnChange::Restart)]
        on_change: OnChange,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
    },
    /// Mount a bucket (or a prefix) read-only; files are hydrated into the cache when opened
    Mount(MountArgs),
    /// Start a local OSS-compatible server with sample data and mount it (Ctrl-C to stop)
    Demo {
        /// Where the sample data, cache and mountpoint live (kept between runs, so a second
        /// run resumes what the first one fetched)
        #[arg(long, default_value = "ossmount-demo")]
        dir: PathBuf,
        /// Size of the big sample file
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        big_size: u64,
        /// Bandwidth cap per connection of the demo server, so parallel parts visibly help
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        bandwidth: u64,
    },
    /// Show a cache directory: every entry's parts present, state and last use, totals
    /// against capacity, and the mount's counters (works with or without a mount)
    Status {
        /// The cache directory [default: every cache under $XDG_CACHE_HOME/ossmount]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Hydrate the objects under a prefix into a cache ahead of use (resumable); a later
    /// mount with the same --cache-dir serves them without requests
    Prefetch {
        /// oss://bucket/prefix/
        url: String,
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long, default_value = "8MiB", value_parser = parse_size)]
        part_size: u64,
        #[arg(long, default_value_t = 3)]
        threads: usize,
        /// Objects hydrated at once
        #[arg(long, default_value_t = 4)]
        objects: usize,
        #[arg(long, value_parser = parse_size)]
        cache_size: Option<u64>,
        #[arg(long, value_parser = parse_size)]
        min_free_disk: Option<u64>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Serve a directory as OSS buckets (each subdirectory is a bucket), for tests and demos.
    /// The credential it accepts is --access-key-id/--access-key-secret (default
    /// emulator-ak/emulator-secret) and its region --region (default cn-hangzhou).
    Serve {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: String,
        /// Serve unsigned requests too
        #[arg(long)]
        allow_anonymous: bool,
        /// Added latency per request, e.g. 20ms
        #[arg(long, value_parser = parse_duration)]
        latency: Option<std::time::Duration>,
        /// Bandwidth cap per connection, e.g. 16MiB (per second)
        #[arg(long, value_parser = parse_size)]
        bandwidth: Option<u64>,
        /// Fraction of requests answered with 503
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Fraction of GET bodies cut by a connection reset
        #[arg(long, default_value_t = 0.0)]
        reset_rate: f64,
        /// Fraction of GET bodies that end early
        #[arg(long, default_value_t = 0.0)]
        truncate_rate: f64,
    },
}

#[derive(clap::Args)]
struct MountArgs {
    /// oss://bucket or oss://bucket/prefix/
    url: String,
    /// An existing directory to mount on
    mountpoint: PathBuf,
    /// Cache directory [default: $XDG_CACHE_HOME/ossmount/<bucket>-<id>]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bytes per part (PartSize)
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Background parts in flight per file (ParallelThreadCount)
    #[arg(long, default_value_t = 3)]
    threads: usize,
    /// Requests in flight for the whole mount [default: 4 x threads, at least 8]
    #[arg(long)]
    max_connections: Option<usize>,
    /// open: hydrate whole files once opened; read: only what reads touch, plus readahead
    #[arg(long, value_enum, default_value_t = HydrateMode::Open)]
    hydrate: HydrateMode,
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
    /// Stay in the foreground (logs to stderr) instead of detaching
    #[arg(short, long)]
    foreground: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HydrateMode {
    Open,
    Read,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0444"))
}

fn init_logging(level: Option<&str>, default: &str, file: Option<std::fs::File>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(level.unwrap_or(default)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

/// Detaches: the parent waits until the child reports the mount is up (then exits 0) or the
/// child exits (then exits with its code; the child printed its error to our stderr).
/// Returns the child's end of the report pipe.
fn daemonize() -> std::io::Result<i32> {
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe/fork/read/waitpid, called before any thread exists.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                libc::close(fds[0]);
                libc::setsid();
                Ok(fds[1])
            }
            pid => {
                libc::close(fds[1]);
                let mut buf = [0u8; 2];
                let n = libc::read(fds[0], buf.as_mut_ptr() as *mut libc::c_void, 2);
                if n == 2 && &buf == b"ok" {
                    std::process::exit(0);
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    1
                };
                std::process::exit(if code == 0 { 1 } else { code });
            }
        }
    }
}

/// In the detached child once mounted: tell the parent, and let go of the terminal.
fn report_mounted(fd: i32) {
    // SAFETY: writes to and closes our pipe end; dup2 onto the standard descriptors.
    unsafe {
        libc::write(fd, b"ok".as_ptr() as *const libc::c_void, 2);
        libc::close(fd);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut daemon_fd = None;
    match &cli.cmd {
        Command::Mount(m) if !m.foreground => {
            let log = match mount_log_file(&cli, m) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ossmount: error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            match daemonize() {
                Ok(fd) => daemon_fd = Some(fd),
                Err(e) => {
                    eprintln!("ossmount: error: cannot detach: {e}; try --foreground");
                    return ExitCode::FAILURE;
                }
            }
            init_logging(cli.log_level.as_deref(), "info", Some(log));
        }
        Command::Mount(_) | Command::Demo { .. } => {
            init_logging(cli.log_level.as_deref(), "info", None)
        }
        _ => init_logging(cli.log_level.as_deref(), "warn", None),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ossmount: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Command::Mount(ref m) => mount(&cli, m, &rt, daemon_fd),
        Command::Demo {
            ref dir,
            big_size,
            bandwidth,
        } => demo(dir, big_size, bandwidth, &rt),
        _ => rt.block_on(run(cli)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ossmount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mount_options(cli: &Cli, m: &MountArgs) -> Result<MountOptions> {
    let url = OssUrl::parse(&m.url).map_err(anyhow::Error::msg)?;
    let endpoint = cli.conn.endpoint.clone().unwrap_or_default();
    if m.part_size == 0 || m.part_size > MAX_PART_SIZE {
        anyhow::bail!("--part-size must be between 1 byte and 5 GiB (e.g. 8MiB)");
    }
    if m.threads == 0 || m.threads > 256 {
        anyhow::bail!("--threads must be between 1 and 256");
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Ok(MountOptions {
        cache_dir: m
            .cache_dir
            .clone()
            .unwrap_or_else(|| ossmount::mount::default_cache_dir(&endpoint, &url)),
        url,
        mountpoint: m.mountpoint.clone(),
        part_size: m.part_size,
        threads: m.threads,
        max_connections: m.max_connections.unwrap_or((m.threads * 4).max(8)).max(1),
        mode: match m.hydrate {
            HydrateMode::Open => FetchMode::All,
            HydrateMode::Read => FetchMode::OnDemand,
        },
        readahead: m.readahead,
        metadata_ttl: m.metadata_ttl,
        allow_other: m.allow_other,
        uid: m.uid.unwrap_or(uid),
        gid: m.gid.unwrap_or(gid),
        file_mode: m.file_mode,
        dir_mode: m.dir_mode,
        cache_size: m.cache_size,
        min_free_disk: m.min_free_disk,
        passthrough: !m.no_passthrough,
    })
}

/// The detached mount logs to `<cache dir>/ossmount.log`; checked before detaching.
fn mount_log_file(cli: &Cli, m: &MountArgs) -> Result<std::fs::File> {
    let opts = mount_options(cli, m)?;
    ossmount::mount::check_mountpoint(&opts.mountpoint)?;
    std::fs::create_dir_all(&opts.cache_dir)
        .with_context(|| format!("cannot create cache directory {}", opts.cache_dir.display()))?;
    let path = opts.cache_dir.join("ossmount.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot write {}; choose another --cache-dir",
                path.display()
            )
        })
}

fn mount(
    cli: &Cli,
    m: &MountArgs,
    rt: &tokio::runtime::Runtime,
    daemon_fd: Option<i32>,
) -> Result<ExitCode> {
    let opts = mount_options(cli, m)?;
    let mut cfg = cli.conn.client_config()?;
    cfg.retry.max_attempts = cli.conn.max_attempts.unwrap_or(3).max(1);
    let _guard = rt.enter();
    let client = ossmount::oss::OssClient::new(cfg)?;
    ossmount::mount::run_mount(&opts, Arc::new(client), rt.handle().clone(), || {
        if let Some(fd) = daemon_fd {
            report_mounted(fd);
        } else {
            eprintln!(
                "mounted {} at {}; unmount with: umount {}",
                opts.url,
                opts.mountpoint.display(),
                opts.mountpoint.display()
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn demo(
    dir: &std::path::Path,
    big_size: u64,
    bandwidth: u64,
    rt: &tokio::runtime::Runtime,
) -> Result<ExitCode> {
    let data = dir.join("data");
    let mnt = dir.join("mnt");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let bucket = "demo-bucket";
    ossmount::sample::write_demo_bucket(&data.join(bucket), big_size)?;
    let mut ecfg = EmulatorConfig::new(&data, "demo-ak", "demo-secret");
    ecfg.faults.bandwidth_per_connection = bandwidth;
    ecfg.faults.latency_ms = 10;
    let emu = rt.block_on(Emulator::start(ecfg, "127.0.0.1:0"))?;
    let endpoint = ossmount::oss::Endpoint::parse(&emu.endpoint()).map_err(anyhow::Error::msg)?;
    let mut cfg = ossmount::oss::ClientConfig::new(endpoint);
    cfg.region = Some(emu.region().to_string());
    cfg.credentials = Some(ossmount::oss::Credentials {
        access_key_id: "demo-ak".into(),
        access_key_secret: ossmount::oss::Secret::new("demo-secret"),
        security_token: None,
    });
    cfg.retry.max_attempts = 3;
    let _guard = rt.enter();
    let client = ossmount::oss::OssClient::new(cfg)?;
    let url = OssUrl::parse(&format!("oss://{bucket}/")).map_err(anyhow::Error::msg)?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let opts = MountOptions {
        url,
        mountpoint: mnt.clone(),
        cache_dir: cache.clone(),
        part_size: 8 << 20,
        threads: 4,
        max_connections: 16,
        mode: FetchMode::All,
        readahead: 16 << 20,
        metadata_ttl: std::time::Duration::from_secs(60),
        allow_other: false,
        uid,
        gid,
        file_mode: 0o444,
        dir_mode: 0o555,
        cache_size: None,
        min_free_disk: None,
        passthrough: true,
    };
    let m = mnt.display();
    let result = ossmount::mount::run_mount(&opts, Arc::new(client), rt.handle().clone(), || {
        eprintln!(
            "\nossmount demo: a local OSS-compatible server at {} ({}/s per connection) is mounted at {m}\n\n  ls -l {m} {m}/photos/2024 | head     listings only, nothing downloaded\n  time cp {m}/big/dataset.bin /tmp/      4 parts at a time into {}\n  getfattr -d {m}/big/dataset.bin       hydration state\n\nStop with Ctrl-C (or umount {m}); run the demo again to resume a partial file from the cache.\n",
            emu.endpoint(),
            human_bytes(bandwidth),
            cache.display()
        );
    });
    eprintln!("{}", emu.summary());
    rt.block_on(emu.shutdown());
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Command::Mount(_) | Command::Demo { .. } => unreachable!("run synchronously by main"),
        Command::Ls {
            url,
            recursive,
            long,
        } => {
            let url = OssUrl::parse(&url).map_err(anyhow::Error::msg)?;
            let client = cli.conn.client()?;
            let delimiter = if recursive { None } else { Some("/") };
            let page = client.list_all(&url.bucket, &url.key, delimiter).await?;
            let mut out = std::io::stdout().lock();
            use std::io::Write;
            for p in &page.common_prefixes {
                if long {
                    writeln!(out, "{:>14}  {:<24}  {p}", "DIR", "")?;
                } else {
                    writeln!(out, "{p}")?;
                }
            }
            for o in &page.objects {
                if long {
                    writeln!(
                        out,
                        "{:>14}  {:<24}  {}",
                        o.size,
                        ossmount::oss::time::iso8601_extended(o.last_modified),
                        o.key
                    )?;
                } else {
                    writeln!(out, "{}", o.key)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stat { url } => {
            let url = OssUrl::parse(&url).map_err(anyhow::Error::msg)?;
            let client = cli.conn.client()?;
            let meta = client
                .head_object(&url.bucket, &url.key)
                .await
                .with_context(|| format!("cannot stat {url}"))?;
            println!("object:        {url}");
            println!("size:          {} ({})", meta.size, human_bytes(meta.size));
            println!("etag:          {}", meta.etag);
            println!("last-modified: {}", meta.last_modified);
            match meta.crc64 {
                Some(c) => println!("crc64:         {c}"),
                None => println!("crc64:         (not given by the server)"),
            }
            if let Some(ct) = &meta.content_type {
                println!("content-type:  {ct}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Download {
            url,
            local,
            part_size,
            threads,
            checkpoint,
            no_checkpoint,
            on_change,
            quiet,
        } => {
            let url = OssUrl::parse(&url).map_err(anyhow::Error::msg)?;
            let mut req = DownloadRequest::new(&url.bucket, &url.key, &local);
            req.part_size = part_size;
            req.threads = threads;
            req.on_change = on_change;
            if no_checkpoint {
                req.checkpoint = None;
            } else if let Some(c) = checkpoint {
                req.checkpoint = Some(c);
            }
            // Refuse bad values before building a client or sending anything.
            req.validate()?;
            let client = cli.conn.client()?;
            let started = std::time::Instant::now();
            let mut reporter = progress::Reporter::new(quiet, &url.to_string());
            let result = resumable_download(Arc::new(client), &req, |p| reporter.update(p)).await;
            reporter.finish();
            let r = result?;
            if !quiet {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "downloaded {url} to {}: {} bytes in {:.1}s ({}/s); fetched {}, resumed {} from the checkpoint{}",
                    local.display(),
                    r.size,
                    secs,
                    human_bytes((r.bytes_fetched as f64 / secs.max(0.001)) as u64),
                    human_bytes(r.bytes_fetched),
                    human_bytes(r.bytes_resumed),
                    if r.restarts > 0 { format!("; restarted {} time(s) because the object changed", r.restarts) } else { String::new() }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { cache_dir, json } => {
            let dirs = match cache_dir {
                Some(d) => vec![d],
                None => ossmount::status::default_cache_dirs(),
            };
            if dirs.is_empty() {
                anyhow::bail!("no cache directories found; pass --cache-dir DIR");
            }
            let mut all = Vec::new();
            for d in dirs {
                all.push(
                    ossmount::status::cache_status(&d)
                        .with_context(|| format!("cannot read the cache at {}", d.display()))?,
                );
            }
            if json {
                let v = if all.len() == 1 {
                    serde_json::to_string_pretty(&all[0])?
                } else {
                    serde_json::to_string_pretty(&all)?
                };
                println!("{v}");
            } else {
                for s in &all {
                    print!("{}", ossmount::status::render(s));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prefetch {
            url,
            cache_dir,
            part_size,
            threads,
            objects,
            cache_size,
            min_free_disk,
            quiet,
        } => {
            let url = OssUrl::parse(&url).map_err(anyhow::Error::msg)?;
            if part_size == 0 || part_size > MAX_PART_SIZE || threads == 0 {
                anyhow::bail!("--part-size must be 1 byte to 5 GiB and --threads at least 1");
            }
            let client: Arc<dyn ossmount::store::ObjectStore> = Arc::new(cli.conn.client()?);
            std::fs::create_dir_all(&cache_dir)
                .with_context(|| format!("cannot create {}", cache_dir.display()))?;
            let defaults = ossmount::cache::Capacity::default_for(&cache_dir);
            let capacity = ossmount::cache::Capacity {
                max_bytes: cache_size.unwrap_or(defaults.max_bytes),
                min_free_disk: min_free_disk.unwrap_or(defaults.min_free_disk),
            };
            let cfg = ossmount::hydrate::HydrationConfig {
                part_size,
                threads,
                ..Default::default()
            };
            let limiter = ossmount::hydrate::ConnectionLimiter::new(threads * objects.max(1), 0);
            let cache =
                ossmount::cache::Cache::open(&cache_dir, client.clone(), cfg, limiter, capacity)?;
            let mut reporter = progress::Reporter::new(quiet, &url.to_string());
            let report =
                ossmount::prefetch::prefetch(client, &cache, &url.bucket, &url.key, objects, |p| {
                    reporter.update(p)
                })
                .await;
            reporter.finish();
            cache.shutdown().await;
            let report = report?;
            for (key, size) in &report.skipped {
                eprintln!(
                    "not prefetched (does not fit --cache-size {}): oss://{}/{key} ({})",
                    human_bytes(capacity.max_bytes),
                    url.bucket,
                    human_bytes(*size)
                );
            }
            for (key, err) in &report.failed {
                eprintln!("failed: oss://{}/{key}: {err}", url.bucket);
            }
            if !quiet {
                eprintln!(
                    "prefetched {} objects into {} ({} fetched); {} skipped, {} failed",
                    report.fetched.len(),
                    cache_dir.display(),
                    human_bytes(report.bytes_fetched),
                    report.skipped.len(),
                    report.failed.len()
                );
            }
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Serve {
            root,
            addr,
            allow_anonymous,
            latency,
            bandwidth,
            error_rate,
            reset_rate,
            truncate_rate,
        } => {
            // The server takes its one credential and region from the same options the
            // clients use (--access-key-id, --access-key-secret, --region or OSS_* variables).
            let mut cfg = EmulatorConfig::new(
                &root,
                cli.conn.access_key_id.as_deref().unwrap_or("emulator-ak"),
                cli.conn
                    .access_key_secret
                    .as_deref()
                    .unwrap_or("emulator-secret"),
            );
            cfg.region = cli
                .conn
                .region
                .clone()
                .unwrap_or_else(|| "cn-hangzhou".into());
            cfg.allow_anonymous = allow_anonymous;
            cfg.faults = Faults {
                latency_ms: latency.map(|d| d.as_millis() as u64).unwrap_or(0),
                bandwidth_per_connection: bandwidth.unwrap_or(0),
                error_rate,
                reset_rate,
                truncate_rate,
                ..Faults::default()
            };
            let emu = Emulator::start(cfg, &addr)
                .await
                .with_context(|| format!("cannot serve {} on {addr}", root.display()))?;
            eprintln!(
                "serving {} at {} (region {}); Ctrl-C to stop",
                root.display(),
                emu.endpoint(),
                emu.region()
            );
            wait_for_signal().await;
            eprintln!("{}", emu.summary());
            for (name, c) in emu.object_report() {
                eprintln!(
                    "  {name}: {} requests, {} body bytes",
                    c.requests, c.body_bytes
                );
            }
            emu.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
