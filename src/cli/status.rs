//! `ossmount status`: what a cache directory holds, with or without a mount.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The cache directory [default: every cache under $XDG_CACHE_HOME/ossmount]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> Result<ExitCode> {
    let dirs = match a.cache_dir {
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
    if a.json {
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
