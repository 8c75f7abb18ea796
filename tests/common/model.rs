//! What the engine's model tests share: running one generated case on its own runtime within
//! a bound, and the check that every part a checkpoint records holds exactly its bytes.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ossmount::hydrate::{Checkpoint, ObjectIdentity};

/// Runs one case on a fresh two-worker runtime; a case that does not end within `limit`
/// is a failure, not a hang.
pub fn run_bounded(
    limit: Duration,
    case: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async { tokio::time::timeout(limit, case).await });
    // Dropping a runtime waits for its blocking tasks for ever: a case that timed out may
    // have left one stuck (an engine's stop, a write), so the wait for them is bounded too.
    rt.shutdown_timeout(Duration::from_secs(10));
    match outcome {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

/// The checkpoint to resume `id` from, as the cache does: the one at `ckpt` if it is for
/// this version and data file, else none, and the entry's files are removed to start clean.
pub fn resume_or_clear(
    location: &str,
    id: &ObjectIdentity,
    ckpt: &Path,
    data: &Path,
) -> Option<Checkpoint> {
    let resume = Checkpoint::load(ckpt)
        .ok()
        .filter(|r| r.check_identity(location, id, data).is_ok());
    if resume.is_none() {
        let _ = std::fs::remove_file(ckpt);
        let _ = std::fs::remove_file(data);
    }
    resume
}

/// Every part the checkpoint at `ckpt` records holds exactly `want`'s bytes (no checkpoint:
/// nothing is claimed).
pub fn recorded_parts_are_exact(ckpt: &Path, data: &Path, want: &[u8]) -> Result<(), String> {
    let Ok(c) = Checkpoint::load(ckpt) else {
        return Ok(());
    };
    let layout = c.layout();
    let file = std::fs::read(data).map_err(|e| e.to_string())?;
    for p in c.present.ones() {
        let r = layout.range(p);
        let (s, e) = (r.start as usize, r.end as usize);
        if file.get(s..e) != want.get(s..e) {
            return Err(format!(
                "checkpoint records part {p} ({r:?}) but its bytes differ"
            ));
        }
    }
    Ok(())
}
