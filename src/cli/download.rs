//! `ossmount download`: the SDK-style resumable download of one object (`oss://` or `s3://`)
//! to a local file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use ossmount::hydrate::download::{resumable_download_with, DownloadRequest, OnChange};
use ossmount::metrics::RequestMetrics;
use ossmount::size::{human_bytes, parse_size};

use super::connection::{ConnectionArgs, ObjectUrl};
use super::progress::Reporter;

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// oss://bucket/key or s3://bucket/key
    url: String,
    /// Local file to write (replaced only when the download is complete and verified)
    local: PathBuf,
    /// Bytes per part (PartSize), e.g. 8MiB
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Parts fetched at once (ParallelThreadCount), or `auto`: start at 3 and add parts in
    /// flight while throughput rises, up to --max-connections
    #[arg(long, default_value = "3", value_parser = parse_threads)]
    threads: Threads,
    /// With --threads auto: connections at most
    #[arg(long, default_value_t = 16)]
    max_connections: usize,
    /// Checkpoint file [default: LOCAL.dcp]
    #[arg(long, conflicts_with = "no_checkpoint")]
    checkpoint: Option<PathBuf>,
    /// Keep no checkpoint: an interrupted download starts over
    #[arg(long)]
    no_checkpoint: bool,
    /// When the object changes on the server mid-download
    #[arg(long, default_value = "restart",
          value_parser = PossibleValuesParser::new(OnChange::NAMES).map(|s| s.parse::<OnChange>().expect("a listed name")))]
    on_change: OnChange,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
}

pub async fn run(conn: &ConnectionArgs, a: DownloadArgs) -> Result<ExitCode> {
    let url = ObjectUrl::parse(&a.url).map_err(anyhow::Error::msg)?;
    let mut req = DownloadRequest::new(url.bucket(), url.key(), &a.local);
    req.part_size = a.part_size;
    match a.threads {
        Threads::Fixed(n) => req.threads = n,
        Threads::Auto => {
            req.adaptive = true;
            req.max_connections = a.max_connections;
        }
    }
    req.on_change = a.on_change;
    if a.no_checkpoint {
        req.checkpoint = None;
    } else if let Some(c) = a.checkpoint {
        req.checkpoint = Some(c);
    }
    // Refuse bad values before building a client or sending anything.
    req.validate()?;
    let limiter = req.limiter();
    // "Slow down" answers (retried ones too) halve an adaptive download's connections.
    let throttling = Arc::new(RequestMetrics::default());
    throttling.report_throttling_to(limiter.clone());
    let store = conn.store_for(&url, Some(throttling)).await?;
    let started = std::time::Instant::now();
    let mut reporter = Reporter::new(a.quiet, &url.to_string());
    let result = resumable_download_with(store, &req, limiter, |p| reporter.update(p)).await;
    reporter.finish();
    let r = result?;
    if !a.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "downloaded {url} to {}: {} bytes in {:.1}s ({}/s); fetched {}, resumed {} from the checkpoint{}{}",
            a.local.display(),
            r.size,
            secs,
            human_bytes((r.bytes_fetched as f64 / secs.max(0.001)) as u64),
            human_bytes(r.bytes_fetched),
            human_bytes(r.bytes_resumed),
            if r.restarts > 0 {
                format!("; restarted {} time(s) because the object changed", r.restarts)
            } else {
                String::new()
            },
            r.digest_verified
                .map(|a| format!("; {a} verified"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--threads`: a fixed count, or `auto`.
#[derive(Clone, Copy, Debug)]
enum Threads {
    Fixed(usize),
    Auto,
}

fn parse_threads(s: &str) -> Result<Threads, String> {
    if s == "auto" {
        return Ok(Threads::Auto);
    }
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a thread count: give a number (e.g. 3) or auto"))?;
    ossmount::hydrate::validate_threads(n)?;
    Ok(Threads::Fixed(n))
}
