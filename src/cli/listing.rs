//! `ossmount ls` and `ossmount stat`: listings and one object's metadata, printed, from
//! `oss://` or `s3://` URLs alike (through `ObjectStore`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use ossmount::size::human_bytes;

use super::connection::{ConnectionArgs, ObjectUrl};

#[derive(clap::Args)]
pub struct LsArgs {
    /// oss://bucket/prefix/ or s3://bucket/prefix/
    url: String,
    /// List every key below the prefix, not just one level
    #[arg(short, long)]
    recursive: bool,
    /// Show size and last-modified time
    #[arg(short, long)]
    long: bool,
}

#[derive(clap::Args)]
pub struct StatArgs {
    url: String,
}

pub async fn ls(conn: &ConnectionArgs, a: LsArgs) -> Result<ExitCode> {
    let url = ObjectUrl::parse(&a.url).map_err(anyhow::Error::msg)?;
    let store = conn.store_for(&url, None).await?;
    let delimiter = if a.recursive { None } else { Some("/") };
    let page = ossmount::store::list_all(&*store, url.bucket(), url.key(), delimiter).await?;
    let mut out = std::io::stdout().lock();
    for p in &page.common_prefixes {
        if a.long {
            writeln!(out, "{:>14}  {:<24}  {p}", "DIR", "")?;
        } else {
            writeln!(out, "{p}")?;
        }
    }
    for o in &page.objects {
        if a.long {
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

pub async fn stat(conn: &ConnectionArgs, a: StatArgs) -> Result<ExitCode> {
    let url = ObjectUrl::parse(&a.url).map_err(anyhow::Error::msg)?;
    let store = conn.store_for(&url, None).await?;
    let meta = store
        .head(url.bucket(), url.key())
        .await
        .with_context(|| format!("cannot stat {url}"))?;
    println!("object:        {url}");
    println!("size:          {} ({})", meta.size, human_bytes(meta.size));
    println!("etag:          {}", meta.etag);
    println!("last-modified: {}", meta.last_modified);
    match (meta.crc64, meta.digest) {
        (Some(c), _) => println!("crc64:         {c}"),
        // S3: the whole object is checked by this instead of a CRC-64.
        (None, Some(d)) => println!("checksum:      {} {}", d.algorithm(), d.hex()),
        (None, None) => println!("crc64:         (not given by the server: not verifiable)"),
    }
    if let Some(ct) = &meta.content_type {
        println!("content-type:  {ct}");
    }
    Ok(ExitCode::SUCCESS)
}
