//! The cache directory itself: where default caches live, the lock that keeps a second
//! process out (flock, with the holder's pid for the error), and whether it is held. Must not
//! know about entries or hydrations.

use std::fs::File;
use std::io::Write;
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
