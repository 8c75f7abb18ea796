//! The `ossmount` command: argument parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ossmount::config::ConnectionArgs;
use std::sync::Arc;

use ossmount::emulator::{Emulator, EmulatorConfig, Faults};
use ossmount::hydrate::download::{resumable_download, DownloadRequest, OnChange};
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

fn init_logging(level: Option<&str>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(level.unwrap_or("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
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
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ossmount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
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
