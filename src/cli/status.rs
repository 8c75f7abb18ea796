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
    /// Print once even on a terminal (where status otherwise refreshes every second)
    #[arg(long)]
    once: bool,
}

pub fn run(a: StatusArgs) -> Result<ExitCode> {
    let dirs = match a.cache_dir {
        Some(d) => vec![d],
        None => ossmount::status::default_cache_dirs(),
    };
    if dirs.is_empty() {
        anyhow::bail!("no cache directories found; pass --cache-dir DIR");
    }
    use std::io::IsTerminal;
    if !a.json && !a.once && std::io::stdout().is_terminal() {
        // A live view of what is hydrating: redraw every second until Ctrl-C.
        loop {
            let mut screen = String::from("\x1b[2J\x1b[H");
            for d in &dirs {
                match ossmount::status::cache_status(d) {
                    Ok(s) => screen.push_str(&ossmount::status::render(&s)),
                    Err(e) => screen.push_str(&format!("{}: {e}\n", d.display())),
                }
            }
            screen.push_str("\n(refreshing every second; Ctrl-C to quit, --once to print once)\n");
            print!("{screen}");
            std::io::Write::flush(&mut std::io::stdout())?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
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
