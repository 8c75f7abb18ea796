//! `ossmount fluid [--config /etc/fluid/config/config.json]`: the fuse container of a Fluid
//! ThinRuntime. Reads the config Fluid writes (`fluid_config`), mounts each of its mounts
//! in the foreground through the node of their cache directory (the same way as
//! `ossmount mount --foreground`), and ends with exit 0, unmounted, on SIGTERM (a busy
//! mount detached after a few seconds, since kubelet sends no second signal). Wiring
//! only: the parsing is `fluid_config`'s, the mounting `mount`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::fluid_config::{self, Keys, PlannedMount};
use super::mount::{self, Signals};
use super::{Cli, Command};

/// How long a busy mount has after SIGTERM to be unmounted before it is detached.
const DETACH_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(clap::Args)]
pub struct FluidArgs {
    /// The config Fluid's ThinRuntime writes into the fuse container
    #[arg(long, default_value = fluid_config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Check the config and print the mounts it asks for (mount point, URL, flags), then
    /// exit without mounting
    #[arg(long)]
    dry_run: bool,
}

/// The `ossmount mount --foreground` command line a planned mount stands for, parsed, with
/// the keys set (values never travel through a command line, not even this in-process one).
fn mount_command(
    p: &PlannedMount,
) -> Result<(super::connection::ConnectionArgs, mount::MountArgs)> {
    let mut argv: Vec<String> = vec!["ossmount".into(), "mount".into(), p.url.clone()];
    argv.push(p.mountpoint.display().to_string());
    argv.push("--foreground".into());
    argv.extend(p.flags.iter().cloned());
    if let Keys::Files { id, secret, token } = &p.keys {
        argv.extend(["--access-key-id-file".into(), id.display().to_string()]);
        argv.extend([
            "--access-key-secret-file".into(),
            secret.display().to_string(),
        ]);
        if let Some(token) = token {
            argv.extend(["--session-token-file".into(), token.display().to_string()]);
        }
    }
    let Cli { mut conn, cmd, .. } = Cli::parse_args(&argv)
        .map_err(|e| anyhow::anyhow!("mount {:?}: {}", p.name, e.render()))?;
    let Command::Mount(m) = cmd else {
        unreachable!("the command line names mount")
    };
    match &p.keys {
        Keys::Values { id, secret, token } => {
            conn.access_key_id = Some(id.clone());
            conn.access_key_secret = Some(secret.expose().to_string());
            conn.session_token = token.as_ref().map(|t| t.expose().to_string());
            conn.credentials_dir = None;
            conn.keys_on_command_line = super::connection::KeysOnCommandLine {
                id: true,
                secret: true,
                token: token.is_some(),
            };
        }
        Keys::Files { .. } => {
            // Keys from the environment would be a second source: the files win.
            conn.access_key_id = None;
            conn.access_key_secret = None;
            conn.session_token = None;
            conn.credentials_dir = None;
        }
        Keys::Chain => {}
    }
    Ok((conn, m))
}

pub fn run(
    a: &FluidArgs,
    rt: &tokio::runtime::Runtime,
    log: &super::node::NodeLog<'_>,
) -> Result<ExitCode> {
    let signals = Signals::catch(rt)?;
    let planned = fluid_config::load(&a.config).map_err(anyhow::Error::msg)?;
    let commands = planned
        .iter()
        .map(mount_command)
        .collect::<Result<Vec<_>>>()?;
    if a.dry_run {
        for (p, (conn, _)) in planned.iter().zip(&commands) {
            // Paths of key files are no secrets; values are never printed.
            let keys = match &p.keys {
                Keys::Chain => "keys from the default chain".to_string(),
                Keys::Files { .. } => {
                    format!(
                        "keys from {}",
                        conn.credential_files()?.expect("files").source
                    )
                }
                Keys::Values { .. } => "keys from the config's values".to_string(),
            };
            println!(
                "{} {} {} ({keys})",
                p.mountpoint.display(),
                p.url,
                p.flags.join(" ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if planned.is_empty() {
        // Fluid writes no mounts for a Dataset mounted dynamically later: this pod has
        // nothing to serve, and must not crash-loop over it.
        eprintln!(
            "ossmount fluid: {} asks for no mounts; waiting for SIGTERM",
            a.config.display()
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        signals.forward(rt, vec![tx]);
        rt.block_on(rx.recv());
        eprintln!("ossmount fluid: SIGTERM with no mounts: done");
        return Ok(ExitCode::SUCCESS);
    }
    let mut joined = Vec::new();
    for (p, (conn, m)) in planned.iter().zip(&commands) {
        let made = prepare_mountpoint(&p.mountpoint)
            .and_then(|()| mount::join(conn, m, rt, log))
            .with_context(|| {
                format!(
                    "mount {:?} ({}) at {}",
                    p.name,
                    p.url,
                    p.mountpoint.display()
                )
            });
        match made {
            Ok(j) => joined.push(j),
            Err(e) => {
                // The mounts made so far go too: a fuse pod serves all of its Dataset or
                // none (Fluid restarts it).
                end_all(rt, joined);
                return Err(e);
            }
        }
    }
    eprintln!(
        "ossmount fluid: {} mount(s) up; SIGTERM unmounts them",
        joined.len()
    );
    let (senders, waits): (Vec<_>, Vec<_>) = joined
        .into_iter()
        .map(|j| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            (tx, async move { j.wait(&mut rx).await })
        })
        .unzip();
    // Kubelet sends one SIGTERM, then SIGKILL after the grace period: a mount still busy
    // (an application holds a file open) is detached after a short wait rather than left
    // dead by the kill. The detached mount serves its open files while the node lives.
    signals.forward_escalating(rt, senders, Some(DETACH_AFTER));
    let ended = rt.block_on(futures_util::future::join_all(waits));
    let failed: Vec<String> = ended.into_iter().filter_map(Result::err).collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Unmounts mounts already made (as their first SIGTERM would) and waits for them.
fn end_all(rt: &tokio::runtime::Runtime, joined: Vec<ossmount::node::join::Joined>) {
    let waits = joined.into_iter().map(|j| async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(());
        if let Err(e) = j.wait(&mut rx).await {
            eprintln!("ossmount: {e}");
        }
    });
    rt.block_on(futures_util::future::join_all(waits));
}

/// Creates the mount point (Fluid creates `targetPath`'s parent, not the mount points
/// under it). A dead FUSE mount left there by a fuse container that was killed (its
/// `stat` says ENOTCONN) is detached first, as Fluid's own mount helper does.
fn prepare_mountpoint(path: &std::path::Path) -> Result<()> {
    if let Err(e) = std::fs::metadata(path) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            eprintln!(
                "ossmount: {} holds a dead FUSE mount (a killed fuse container's): detaching it",
                path.display()
            );
            nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching the dead mount at {}", path.display()))?;
        }
    }
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create the mount point {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_mount_becomes_a_foreground_mount_command() {
        let p = PlannedMount {
            name: "n".into(),
            url: "oss://bkt/pre/".into(),
            mountpoint: "/t".into(),
            flags: vec![
                "--endpoint".into(),
                "http://127.0.0.1:1".into(),
                "--cache-size".into(),
                "1GiB".into(),
                "--cache-dir".into(),
                "/c".into(),
            ],
            keys: Keys::Files {
                id: "/s/akId".into(),
                secret: "/s/akSecret".into(),
                token: Some("/s/stsToken".into()),
            },
        };
        let (conn, m) = mount_command(&p).unwrap();
        assert!(m.foreground);
        assert_eq!(conn.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(conn.session_token_file, Some(PathBuf::from("/s/stsToken")));
        let files = conn.credential_files().unwrap().unwrap();
        assert_eq!(files.access_key_id, PathBuf::from("/s/akId"));
        let bad = PlannedMount {
            flags: vec!["--cache-size".into(), "lots".into()],
            ..p
        };
        let err = match mount_command(&bad) {
            Ok(_) => panic!("an unreadable size was taken"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("mount \"n\"") && err.contains("lots"), "{err}");
    }
}
