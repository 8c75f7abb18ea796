//! What the engine's model tests share: running one generated case on its own runtime within
//! a bound, the durability probe (fresh for each run), and the check that every part a
//! checkpoint records holds exactly its bytes.

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use fixedbitset::FixedBitSet;
use ossmount::hydrate::{Checkpoint, DurabilityProbe, ObjectIdentity, PartLayout};

/// Fails a run the moment a part is recorded whose range was never synced in it. One per run:
/// a range synced in an earlier run (or for an earlier version) must not excuse a record in
/// this one; only the parts the run resumes (recorded, and checked, before) count as synced.
#[derive(Default)]
pub struct Probe {
    synced: Mutex<Vec<Range<u64>>>,
    violations: Mutex<Vec<String>>,
}

impl Probe {
    /// A probe for a run that resumes from `resume`.
    pub fn resuming(resume: Option<&Checkpoint>) -> Probe {
        let probe = Probe::default();
        if let Some(r) = resume {
            let layout = r.layout();
            let mut synced = probe.synced.lock().unwrap();
            synced.extend(r.present.ones().map(|p| layout.range(p)));
        }
        probe
    }

    /// What went wrong so far (emptied).
    pub fn violations(&self) -> Vec<String> {
        std::mem::take(&mut *self.violations.lock().unwrap())
    }
}

impl DurabilityProbe for Probe {
    fn synced(&self, range: Range<u64>) {
        self.synced.lock().unwrap().push(range);
    }

    fn recording(&self, present: &FixedBitSet, layout: PartLayout) {
        let synced = self.synced.lock().unwrap();
        for p in present.ones() {
            let r = layout.range(p);
            if !synced.iter().any(|s| s.start <= r.start && r.end <= s.end) {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("part {p} ({r:?}) recorded before it was synced"));
            }
        }
    }
}

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
    let outcome = match rt.block_on(async { tokio::time::timeout(limit, case).await }) {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {limit:?}")),
    };
    // A case that failed may leave a hydration running; its tasks are dropped here. Bounded,
    // so a task that never yields is reported with the case instead of hanging the test.
    rt.shutdown_timeout(Duration::from_secs(10));
    outcome
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
