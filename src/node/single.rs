//! A mount served in this process with a node of its own that takes no other mounts: the
//! demo and the benchmarks, which want the mount's life in one process. Must not start
//! another process.

use std::sync::Arc;

use anyhow::Result;

use crate::mount::{check_mountpoint, MountOptions};
use crate::store::ObjectStore;

/// Mounts and serves in this process until unmounted (`umount`, SIGINT or SIGTERM), with a
/// node of its own that takes no other mounts (the demo, benchmarks). `on_mounted` runs once
/// the kernel has the mount.
pub fn run_mount(
    opts: &MountOptions,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
    on_mounted: impl FnOnce(),
) -> Result<()> {
    check_mountpoint(&opts.mountpoint)?;
    let node = super::Node::open(opts, store.clone(), rt.clone(), None, None)?;
    let session = match node.mount(opts.clone(), store, None, None) {
        Ok(s) => s,
        Err(e) => {
            rt.block_on(node.shutdown());
            return Err(e);
        }
    };
    let signal_task = rt.spawn({
        let session = session.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(
                "signal received, unmounting {}",
                session.opts.mountpoint.display()
            );
            if let Err(e) = session.unmount() {
                tracing::warn!("unmount failed: {e}");
            }
            // A handed-in descriptor is not ours to unmount: the signal ends the mount.
            !session.owns_mount()
        }
    });
    tracing::info!(
        "mounted {} at {} (cache {})",
        opts.url,
        opts.mountpoint.display(),
        opts.cache_dir.display()
    );
    on_mounted();
    let result = rt.block_on(async {
        tokio::select! {
            end = session.ended() => end,
            Ok(true) = signal_task => Ok(()),
        }
    });
    rt.block_on(node.shutdown());
    result.map_err(|e| {
        anyhow::anyhow!(
            "the FUSE session on {} failed: {e}",
            opts.mountpoint.display()
        )
    })
}
