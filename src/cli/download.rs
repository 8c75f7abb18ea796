//! `ossmount download`: the SDK-style resumable download of one object to a local file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use ossmount::hydrate::download::{resumable_download, DownloadRequest, OnChange};
use ossmount::oss::OssUrl;
use ossmount::size::{human_bytes, parse_size};

use super::connection::ConnectionArgs;
use super::progress::Reporter;

#[derive(clap::Args)]
pub struct DownloadArgs {
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
    #[arg(long, default_value = "restart",
          value_parser = PossibleValuesParser::new(OnChange::NAMES).map(|s| s.parse::<OnChange>().expect("a listed name")))]
    on_change: OnChange,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
}

pub async fn run(conn: &ConnectionArgs, a: DownloadArgs) -> Result<ExitCode> {
    let url = OssUrl::parse(&a.url).map_err(anyhow::Error::msg)?;
    let mut req = DownloadRequest::new(&url.bucket, &url.key, &a.local);
    req.part_size = a.part_size;
    req.threads = a.threads;
    req.on_change = a.on_change;
    if a.no_checkpoint {
        req.checkpoint = None;
    } else if let Some(c) = a.checkpoint {
        req.checkpoint = Some(c);
    }
    // Refuse bad values before building a client or sending anything.
    req.validate()?;
    let client = conn.client().await?;
    let started = std::time::Instant::now();
    let mut reporter = Reporter::new(a.quiet, &url.to_string());
    let result = resumable_download(Arc::new(client), &req, |p| reporter.update(p)).await;
    reporter.finish();
    let r = result?;
    if !a.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "downloaded {url} to {}: {} bytes in {:.1}s ({}/s); fetched {}, resumed {} from the checkpoint{}",
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
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
