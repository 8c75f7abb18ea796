//! The soak run's readers and what they check (the run itself is `soak.rs`). Every file has
//! a list of versions (seed and length); a read is right when its bytes are, as a whole,
//! exactly what one version holds at that offset — same bytes, same length, short only at
//! that version's end — and every read on one handle comes from the same version. A read on
//! a handle opened well after a replacement (metadata TTL plus slack) must come from the new
//! version. Errors are allowed, counted by kind; errors while the mount is going down are
//! "interrupted". Each read and open is timed, and a watchdog declares one hung when it
//! waits longer than the bound.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Findings kept word for word in the report; the counters go on past them.
const FINDINGS_KEPT: usize = 40;

/// A read in flight longer than this keeps the mount up (a kill would hide a hang).
pub const LONG_WAIT: Duration = Duration::from_secs(5);

/// One version of an object: its bytes are `ossmount::sample` bytes of `seed`.
#[derive(Debug, Clone)]
pub struct Version {
    pub seed: u64,
    pub len: u64,
    /// When the server started serving it; `None` while it is being written (the mount may
    /// already see it, so it counts as a candidate for reads).
    pub published: Option<Instant>,
}

pub struct SoakFile {
    pub key: String,
    /// Every version the server has had, oldest first (at most 64: reads name the versions
    /// they match with a bitmask).
    pub versions: RwLock<Vec<Version>>,
}

pub const MAX_VERSIONS: usize = 64;

/// A reader's current open or read, for the watchdog.
#[derive(Default)]
pub struct Slot {
    /// Milliseconds since the run started, plus one, when the operation began; 0 when idle.
    started_ms: AtomicU64,
    /// The current operation was already counted as hung (by the watchdog or the reader).
    flagged: AtomicBool,
    what: Mutex<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Successful read calls and the bytes they returned.
    pub reads: u64,
    pub bytes: u64,
    /// Files read from offset 0 to end of file on one handle without an error.
    pub whole_file_reads: u64,
    /// Failed opens and reads by kind: `interrupted` (the mount went down meanwhile) or the errno.
    pub errors: BTreeMap<String, u64>,
    pub wrong_reads: u64,
    pub wrong_bytes: u64,
    /// Reads of an old version on a handle opened well after the new one was published.
    pub stale_reads: u64,
    pub hung: u64,
    /// The longest a successful read waited.
    pub longest_read: Duration,
    /// What went wrong, with enough to replay it (seeds, file, offset).
    pub findings: Vec<String>,
}

impl Tally {
    fn finding(&mut self, text: String) {
        eprintln!("soak: {text}");
        if self.findings.len() < FINDINGS_KEPT {
            self.findings.push(text);
        }
    }
}

/// What the readers share with the run.
pub struct Shared {
    pub files: Vec<SoakFile>,
    pub mnt: PathBuf,
    pub stop: AtomicBool,
    /// Even while a mount is up, odd while it goes down and until the next one is up: an
    /// error in an operation that saw the epoch change was caused by the kill or stop.
    pub mount_epoch: AtomicU64,
    pub started: Instant,
    /// A read of an old version is stale on a handle opened this long after the new version
    /// was published.
    pub stale_after: Duration,
    pub hang_bound: Duration,
    pub slots: Vec<Slot>,
    pub tally: Mutex<Tally>,
}

impl Shared {
    pub fn new(
        files: Vec<SoakFile>,
        mnt: PathBuf,
        readers: usize,
        stale_after: Duration,
        hang_bound: Duration,
    ) -> Shared {
        Shared {
            files,
            mnt,
            stop: AtomicBool::new(false),
            mount_epoch: AtomicU64::new(1),
            started: Instant::now(),
            stale_after,
            hang_bound,
            slots: (0..readers).map(|_| Slot::default()).collect(),
            tally: Mutex::new(Tally::default()),
        }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Declares hung every operation in flight longer than the bound; returns whether one
    /// not (yet) declared hung has waited longer than `LONG_WAIT`.
    pub fn watchdog(&self) -> bool {
        let mut long_wait = false;
        let now = self.now_ms();
        for (i, slot) in self.slots.iter().enumerate() {
            let started = slot.started_ms.load(Ordering::Acquire);
            if started == 0 || slot.flagged.load(Ordering::Acquire) {
                continue;
            }
            let waited = Duration::from_millis((now + 1).saturating_sub(started));
            if waited > self.hang_bound && !slot.flagged.swap(true, Ordering::AcqRel) {
                let what = slot.what.lock().unwrap().clone();
                let mut t = self.tally.lock().unwrap();
                t.hung += 1;
                t.finding(format!(
                    "reader {i}: HUNG, still waiting after {waited:?}: {what}"
                ));
            } else if waited > LONG_WAIT {
                long_wait = true;
            }
        }
        long_wait
    }

    /// Runs one open or read under the watchdog; returns its result and how long it took.
    fn timed<T>(&self, reader: usize, what: String, op: impl FnOnce() -> T) -> (T, Duration) {
        let slot = &self.slots[reader];
        *slot.what.lock().unwrap() = what;
        slot.flagged.store(false, Ordering::Release);
        slot.started_ms.store(self.now_ms() + 1, Ordering::Release);
        let began = Instant::now();
        let result = op();
        let took = began.elapsed();
        slot.started_ms.store(0, Ordering::Release);
        if took > self.hang_bound && !slot.flagged.swap(true, Ordering::AcqRel) {
            let what = slot.what.lock().unwrap().clone();
            let mut t = self.tally.lock().unwrap();
            t.hung += 1;
            t.finding(format!(
                "reader {reader}: HUNG, returned only after {took:?}: {what}"
            ));
        }
        (result, took)
    }

    fn error(&self, epoch_before: u64, e: &std::io::Error) {
        let kind = match e.raw_os_error() {
            Some(libc::EIO) => "EIO".into(),
            Some(libc::ESTALE) => "ESTALE".into(),
            Some(libc::ENOENT) => "ENOENT".into(),
            Some(libc::ENOTCONN) => "ENOTCONN".into(),
            Some(libc::EBUSY) => "EBUSY".into(),
            Some(libc::ENOSPC) => "ENOSPC".into(),
            Some(n) => format!("errno {n}"),
            None => format!("{:?}", e.kind()),
        };
        self.error_kind(epoch_before, &kind);
    }

    /// Counts an error of `kind`, or as `interrupted` when the mount went down meanwhile.
    fn error_kind(&self, epoch_before: u64, kind: &str) {
        let interrupted =
            epoch_before % 2 == 1 || self.mount_epoch.load(Ordering::Acquire) != epoch_before;
        let kind = if interrupted { "interrupted" } else { kind };
        *self
            .tally
            .lock()
            .unwrap()
            .errors
            .entry(kind.into())
            .or_default() += 1;
    }
}

/// A reader thread: opens files at random until told to stop, and on each handle either
/// reads the whole file sequentially in random chunks or makes a few reads at random offsets
/// and sizes (some ending exactly at end of file, some past it).
pub fn reader_loop(sh: &Shared, reader: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !sh.stop.load(Ordering::Acquire) {
        let epoch = sh.mount_epoch.load(Ordering::Acquire);
        if epoch % 2 == 1 {
            // The mount is down: errors now would only measure the pause.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let file = &sh.files[rng.gen_range(0..sh.files.len())];
        let mut handle = Handle {
            sh,
            reader,
            file,
            epoch,
            opened_at: Instant::now(),
            versions_seen: u64::MAX,
        };
        let path = sh.mnt.join(&file.key);
        let (opened, _) = sh.timed(reader, format!("open {}", file.key), || File::open(&path));
        let f = match opened {
            Ok(f) => f,
            Err(e) => {
                sh.error(epoch, &e);
                continue;
            }
        };
        // The size the kernel shows for this handle: reads "at the end" end there.
        // Under the watchdog too: a getattr the mount never answers is a hang like a read.
        let (md, _) = sh.timed(reader, format!("fstat {}", file.key), || f.metadata());
        let size = match md {
            Ok(m) => m.len(),
            Err(e) => {
                sh.error(epoch, &e);
                continue;
            }
        };
        if rng.gen_bool(0.35) {
            handle.whole_file(&f, &mut rng);
        } else {
            handle.random_reads(&f, size, &mut rng);
        }
    }
}

/// One open file of one reader.
struct Handle<'a> {
    sh: &'a Shared,
    reader: usize,
    file: &'a SoakFile,
    epoch: u64,
    opened_at: Instant,
    /// Versions (bitmask) every read on this handle so far is consistent with.
    versions_seen: u64,
}

impl Handle<'_> {
    fn whole_file(&mut self, f: &File, rng: &mut StdRng) {
        let mut off = 0;
        loop {
            let chunk = rng.gen_range(4 << 10..=2 << 20);
            match self.checked_read(f, off, chunk) {
                Some(0) => break,
                Some(n) => off += n as u64,
                None => return,
            }
        }
        self.sh.tally.lock().unwrap().whole_file_reads += 1;
    }

    fn random_reads(&mut self, f: &File, size: u64, rng: &mut StdRng) {
        for _ in 0..rng.gen_range(1..=12) {
            let len = match rng.gen_range(0..10) {
                0..=3 => rng.gen_range(1..=4096),
                4..=7 => rng.gen_range(4096..=256 << 10),
                // Several parts in one read.
                _ => rng.gen_range(256 << 10..=3 << 20),
            };
            let off = match rng.gen_range(0..10) {
                // A footer: the read ends exactly at end of file.
                0..=1 => size.saturating_sub(len as u64),
                // At or past the end.
                2 => size + rng.gen_range(0..4096),
                _ => rng.gen_range(0..=size),
            };
            if self.checked_read(f, off, len).is_none() {
                return;
            }
            if self.sh.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// One `pread` of `len` bytes at `off`, judged against the file's versions. `None` when
    /// it failed (the handle is then given up).
    fn checked_read(&mut self, f: &File, off: u64, len: usize) -> Option<usize> {
        let sh = self.sh;
        let mut buf = vec![0u8; len];
        let what = format!(
            "pread of {len} at {off} in {} (opened {:.1} s into the run)",
            self.file.key,
            (self.opened_at - sh.started).as_secs_f64()
        );
        let (result, took) = sh.timed(self.reader, what.clone(), || f.read_at(&mut buf, off));
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                sh.error(self.epoch, &e);
                return None;
            }
        };
        let versions = self.file.versions.read().unwrap().clone();
        let judged = judge(&versions, off, len, &buf[..n]);
        let mut t = sh.tally.lock().unwrap();
        t.reads += 1;
        t.bytes += n as u64;
        t.longest_read = t.longest_read.max(took);
        let who = format!("reader {}: {what}", self.reader);
        let timeline = || timeline(&versions, sh.started);
        let matches = match judged {
            Judged::Wrong {
                wrong_bytes,
                detail,
            } => {
                t.wrong_reads += 1;
                t.wrong_bytes += wrong_bytes;
                t.finding(format!("{who}: WRONG BYTES: {detail}; {}", timeline()));
                return Some(n);
            }
            Judged::Exact(matches) => (matches, false),
            Judged::Short(matches) => (matches, true),
        };
        let (matches, short) = matches;
        drop(t);
        if short {
            // The kernel returns what it has when a later page fails (the error shows on the
            // next read): an error, not wrong bytes.
            sh.error_kind(self.epoch, "short read");
        }
        let mut t = sh.tally.lock().unwrap();
        if matches & self.versions_seen == 0 {
            t.wrong_reads += 1;
            t.wrong_bytes += n.max(1) as u64;
            t.finding(format!(
                "{who}: returned {n} bytes: MIXED VERSIONS on one handle: earlier reads were {}, this one is {}; {}",
                describe(self.versions_seen, &versions),
                describe(matches, &versions),
                timeline()
            ));
            return Some(n);
        }
        self.versions_seen &= matches;
        let newest_seen = 63 - matches.leading_zeros() as usize;
        let successor = versions.get(newest_seen + 1);
        if let Some(published) = successor.and_then(|v| v.published) {
            if self.opened_at > published + sh.stale_after {
                t.stale_reads += 1;
                t.finding(format!(
                    "{who}: STALE: returned version {newest_seen}, though version {} was published {:.1} s before the open; {}",
                    newest_seen + 1,
                    (self.opened_at - published).as_secs_f64(),
                    timeline()
                ));
            }
        }
        Some(n)
    }
}

enum Judged {
    /// The versions (bitmask) the read is exactly right for.
    Exact(u64),
    /// Fewer bytes than the versions (bitmask) hold there, but right ones.
    Short(u64),
    Wrong {
        wrong_bytes: u64,
        detail: String,
    },
}

/// Checks what one read of `asked` bytes at `off` returned against every version: exactly
/// that version's bytes there, as many as it holds up to `asked` — or, short, a prefix of
/// them. A read that returns nothing where a version holds bytes is an early end of file:
/// wrong, not short.
fn judge(versions: &[Version], off: u64, asked: usize, got: &[u8]) -> Judged {
    let expected_len = |v: &Version| (v.len.saturating_sub(off)).min(asked as u64) as usize;
    let (mut exact, mut short) = (0u64, 0u64);
    let mut scratch = vec![0u8; got.len().min(CHUNK)];
    for (i, v) in versions.iter().enumerate() {
        let expected = expected_len(v);
        let fits = got.len() == expected || (!got.is_empty() && got.len() < expected);
        if fits && holds(v.seed, off, got, &mut scratch) {
            if got.len() == expected {
                exact |= 1 << i;
            } else {
                short |= 1 << i;
            }
        }
    }
    if exact != 0 {
        return Judged::Exact(exact);
    }
    if short != 0 {
        return Judged::Short(short);
    }
    // No version fits: measure how far off the closest one is.
    let mut want = vec![0u8; got.len()];
    let closest = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let expected = expected_len(v);
            let overlap = expected.min(got.len());
            ossmount::sample::fill(v.seed, off, &mut want[..overlap]);
            let differing = (0..overlap).filter(|&k| got[k] != want[k]).count();
            let first_diff = (0..overlap).find(|&k| got[k] != want[k]);
            let wrong = (differing + got.len().abs_diff(expected)) as u64;
            (wrong, i, expected, first_diff)
        })
        .min_by_key(|c| c.0);
    let (wrong_bytes, i, expected, first_diff) = closest.expect("a file has a version");
    let v = &versions[i];
    // Which version the differing bytes come from, when one does.
    let from = first_diff.and_then(|j| {
        let probe = &got[j..(j + 64).min(got.len())];
        let mut want = vec![0u8; probe.len()];
        versions.iter().position(|w| {
            ossmount::sample::fill(w.seed, off + j as u64, &mut want);
            want == probe
        })
    });
    Judged::Wrong {
        wrong_bytes,
        detail: format!(
            "returned {} bytes; the closest version is {i} ({} bytes), which holds {expected} there; {}",
            got.len(),
            v.len,
            match (first_diff, from) {
                (Some(j), Some(w)) => format!(
                    "from offset {} on the bytes are version {w}'s",
                    off + j as u64
                ),
                (Some(j), None) => format!(
                    "the bytes at offset {} are no version's",
                    off + j as u64
                ),
                (None, _) => "the bytes it did return are right, the length is not".into(),
            },
        ) + &past_the_end(versions, v, off, got),
    }
}

/// What a read returned past the end of the version it otherwise matches: zeros, another
/// version's bytes, or neither.
fn past_the_end(versions: &[Version], v: &Version, off: u64, got: &[u8]) -> String {
    let end = v.len.saturating_sub(off) as usize;
    if got.len() <= end {
        return String::new();
    }
    let extra = &got[end..];
    if extra.iter().all(|&b| b == 0) {
        return format!("; the {} bytes past its end are zeros", extra.len());
    }
    let mut want = vec![0u8; extra.len()];
    let other = versions.iter().position(|w| {
        ossmount::sample::fill(w.seed, v.len, &mut want);
        w.len >= v.len + extra.len() as u64 && want == extra
    });
    match other {
        Some(w) => format!("; the {} bytes past its end are version {w}'s", extra.len()),
        None => format!("; the {} bytes past its end are no version's", extra.len()),
    }
}

/// The versions with their seeds, lengths and when they were published, for findings.
fn timeline(versions: &[Version], started: Instant) -> String {
    let items: Vec<String> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let when = match v.published {
                Some(at) => format!(
                    "{:.1} s",
                    at.saturating_duration_since(started).as_secs_f64()
                ),
                None => "being written".into(),
            };
            format!("{i}: seed {:#x}, {} bytes, from {when}", v.seed, v.len)
        })
        .collect();
    format!("versions [{}]", items.join("; "))
}

/// Bytes compared at a time: a wrong version is usually rejected by its first chunk.
const CHUNK: usize = 64 << 10;

/// Whether `got` is exactly the bytes of the stream `seed` at `off`.
fn holds(seed: u64, off: u64, got: &[u8], scratch: &mut [u8]) -> bool {
    got.chunks(CHUNK).enumerate().all(|(c, chunk)| {
        let want = &mut scratch[..chunk.len()];
        ossmount::sample::fill(seed, off + (c * CHUNK) as u64, want);
        chunk == want
    })
}

fn describe(mask: u64, versions: &[Version]) -> String {
    let names: Vec<String> = (0..versions.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| format!("{i} ({} bytes)", versions[i].len))
        .collect();
    format!("version {}", names.join(" or "))
}
