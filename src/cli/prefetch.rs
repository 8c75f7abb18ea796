//! `ossmount prefetch`: hydrate a prefix into a cache directory ahead of use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use ossmount::cache::{Cache, Capacity};
use ossmount::hydrate::{validate_part_size, validate_threads, ConnectionLimiter, HydrationConfig};
use ossmount::size::{human_bytes, parse_size};
use ossmount::store::StoreUrl;

use super::connection::{ConnectionArgs, ObjectUrl};
use super::progress::Reporter;

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// oss://bucket/prefix/ or s3://bucket/prefix/
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
}

pub async fn run(conn: &ConnectionArgs, a: PrefetchArgs) -> Result<ExitCode> {
    let object_url = ObjectUrl::parse(&a.url).map_err(anyhow::Error::msg)?;
    let url = object_url.store_url();
    validate_part_size(a.part_size).map_err(anyhow::Error::msg)?;
    validate_threads(a.threads).map_err(anyhow::Error::msg)?;
    if ossmount::cache::lock_is_held(&a.cache_dir)
        && ossmount::control::socket_path(&a.cache_dir).exists()
    {
        // A running mount holds this cache: it does the work, this shows the progress.
        let mut reporter = Reporter::new(a.quiet, &url.to_string());
        let report = ossmount::control::request_prefetch(
            &a.cache_dir,
            url.scheme,
            &url.bucket,
            &url.key,
            a.objects,
            |p| reporter.update(p),
        )
        .await;
        reporter.finish();
        let report = report.map_err(anyhow::Error::msg)?;
        return Ok(print_report(&a, &url, &report, None));
    }
    let client = conn.store_for(&object_url, None).await?;
    ossmount::cache::private_dir(&a.cache_dir)?;
    let defaults = Capacity::default_for(&a.cache_dir);
    let capacity = Capacity {
        max_bytes: a.cache_size.unwrap_or(defaults.max_bytes),
        min_free_disk: a.min_free_disk.unwrap_or(defaults.min_free_disk),
    };
    let cfg = HydrationConfig {
        part_size: a.part_size,
        threads: a.threads,
        ..Default::default()
    };
    let limiter = ConnectionLimiter::new(a.threads * a.objects.max(1), 0);
    let cache = Cache::open(&a.cache_dir, client.clone(), cfg, limiter, capacity)?;
    let mut reporter = Reporter::new(a.quiet, &url.to_string());
    let report =
        ossmount::prefetch::prefetch(client, &cache, &url.bucket, &url.key, a.objects, |p| {
            reporter.update(p)
        })
        .await;
    reporter.finish();
    cache.shutdown().await;
    let report = report?;
    Ok(print_report(&a, &url, &report, Some(capacity.max_bytes)))
}

/// What was fetched, skipped and failed; the exit code.
fn print_report(
    a: &PrefetchArgs,
    url: &StoreUrl,
    report: &ossmount::prefetch::PrefetchReport,
    capacity: Option<u64>,
) -> ExitCode {
    for (key, size) in &report.skipped {
        eprintln!(
            "not prefetched (does not fit the cache's capacity{}): {}://{}/{key} ({})",
            capacity
                .map(|c| format!(" of {}", human_bytes(c)))
                .unwrap_or_default(),
            url.scheme,
            url.bucket,
            human_bytes(*size)
        );
    }
    for (key, err) in &report.failed {
        eprintln!("failed: {}://{}/{key}: {err}", url.scheme, url.bucket);
    }
    if !a.quiet {
        eprintln!(
            "prefetched {} objects into {} ({} fetched); {} skipped, {} failed",
            report.fetched.len(),
            a.cache_dir.display(),
            human_bytes(report.bytes_fetched),
            report.skipped.len(),
            report.failed.len()
        );
    }
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
