//! `ossmount upgrade`: replaces the server of running nodes by the `ossmount` executable now
//! on disk, without unmounting: it asks each node's holder (SIGUSR2) and waits until a new
//! server has taken every mount over, or the holder has gone back to the server before it.
//! Wiring only (the handover is `node::holder`'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use ossmount::status::MountStatusFile;

#[derive(clap::Args)]
pub struct UpgradeArgs {
    /// The cache directory whose node to upgrade [default: every node serving a cache under
    /// $XDG_CACHE_HOME/ossmount]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// How long to wait for each node's new server to take over, in seconds
    #[arg(long, default_value_t = 90)]
    timeout: u64,
}

pub fn run(a: UpgradeArgs) -> Result<ExitCode> {
    let dirs = match &a.cache_dir {
        Some(d) => vec![d.clone()],
        None => ossmount::status::default_cache_dirs()
            .into_iter()
            .filter(|d| ossmount::cache::lock_is_held(d))
            .collect(),
    };
    if dirs.is_empty() {
        bail!("no running ossmount node found; pass --cache-dir DIR");
    }
    let mut failed = 0;
    for d in &dirs {
        match upgrade_one(d, Duration::from_secs(a.timeout)) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed += 1;
                eprintln!("ossmount: {}: {e:#}", d.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_status(dir: &Path) -> Option<MountStatusFile> {
    std::fs::read(dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a holder (not another process that took a dead holder's number).
fn is_holder(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ossmount-hold")
}

/// Whether this kernel resends requests on a server's request (Linux 6.9+): without it, an
/// upgrade would leave the old server's last requests unanswered, so it is refused.
fn kernel_resends() -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (6, 9))
}

fn upgrade_one(dir: &Path, timeout: Duration) -> Result<String> {
    if !ossmount::cache::lock_is_held(dir) {
        bail!("no ossmount node serves this cache directory (nothing to upgrade)");
    }
    let Some(before) = read_status(dir) else {
        bail!("the node has not written its status yet; try again in a second");
    };
    let Some(holder) = before.holder_pid.filter(|p| is_holder(*p)) else {
        bail!(
            "the node (pid {}) runs without a holder, so its mounts cannot outlive it; unmount and mount again to run the new version",
            before.server_pid.max(before.pid)
        );
    };
    if kernel_resends() == Some(false) {
        bail!(
            "this kernel cannot resend a server's unanswered requests (FUSE_NOTIFY_RESEND, Linux 6.9+), so an upgrade could leave reads waiting; unmount and mount again to run the new version"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )?;
    let start = Instant::now();
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(50));
        let Some(now) = read_status(dir) else {
            continue;
        };
        if now.upgrades > before.upgrades && now.server_pid != before.server_pid && !now.taking_over
        {
            return Ok(format!(
                "{}: server pid {} (version {}) replaced by pid {} (version {}); {} mount(s) served, none unmounted",
                dir.display(),
                before.server_pid,
                before.version,
                now.server_pid,
                now.version,
                now.mounts.len()
            ));
        }
        if now.restarts > before.restarts && now.server_pid != before.server_pid {
            bail!(
                "the new server could not take the mounts over; the version before it (pid {}) serves them again; see {}",
                now.server_pid,
                dir.join("ossmount.log").display()
            );
        }
        if !alive(holder) {
            bail!(
                "the holder (pid {holder}) ended during the upgrade; see {}",
                dir.join("ossmount.log").display()
            );
        }
    }
    bail!(
        "no new server took over within {} s; see {}",
        timeout.as_secs(),
        dir.join("ossmount.log").display()
    )
}
