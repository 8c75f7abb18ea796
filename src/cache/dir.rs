//! The cache directory itself: where default caches live, the lock that keeps a second
//! process out (flock, with the holder's pid for the error), and whether it is held. Must not
//! know about entries or hydrations.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{Cache, CacheError};

/// `$XDG_CACHE_HOME/ossmount/<bucket>-<hash>` (or `~/.cache/...`), one per endpoint, bucket
/// and prefix, so two mounts never share a cache directory by accident.
pub fn default_cache_dir(endpoint: &str, bucket: &str, prefix: &str) -> PathBuf {
    let id = Cache::entry_name(endpoint, bucket, prefix);
    cache_base_dir().join(format!("{bucket}-{}", &id[..8]))
}

/// `$XDG_CACHE_HOME/ossmount`, else `~/.cache/ossmount`: where default caches live.
pub fn cache_base_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("ossmount")
}

/// Whether a process holds the cache lock (a mount or prefetch runs).
pub fn lock_is_held(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    // A shared lock is refused while an exclusive one is held; ours is released on drop.
    Flock::lock(f, FlockArg::LockSharedNonblock).is_err()
}

/// Takes the cache directory's lock, or says who holds it.
pub(super) fn lock_dir(dir: &Path) -> Result<Flock<File>, CacheError> {
    let path = dir.join("lock");
    let unusable = |source| CacheError::Unusable {
        path: dir.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(unusable)?;
    let mut f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err(_) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            return Err(CacheError::Locked {
                path: dir.to_path_buf(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
    };
    f.set_len(0).map_err(unusable)?;
    write!(f, "{}", std::process::id()).map_err(unusable)?;
    Ok(f)
}

/// Creates `path` owner-only (0700, parents too), or checks an existing one: a symlink, or a
/// directory another user owns, is refused; one of ours that others may read is narrowed
/// to 0700 (caches made by earlier versions).
pub fn private_dir(path: &Path) -> Result<(), CacheError> {
    let refuse = |reason: String| CacheError::NotPrivate {
        path: path.to_path_buf(),
        reason,
    };
    let unusable = |source| CacheError::Unusable {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(unusable)?;
            std::fs::symlink_metadata(path).map_err(unusable)?
        }
        Err(e) => return Err(unusable(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not by you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::info!(
            "narrowing {} to owner-only access (was {:o})",
            path.display(),
            meta.mode() & 0o777
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(unusable)?;
    }
    Ok(())
}
