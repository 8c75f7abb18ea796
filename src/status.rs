//! What `ossmount status` shows: every cache entry (object, parts present of total, bytes,
//! state, last use) read straight from the checkpoints, the totals against capacity, and a
//! running mount's counters from the `status.json` it refreshes every second. Works with or
//! without a mount: it never takes the cache lock. It reads the cache directory and owns the
//! `status.json` format; it must not reach into a running filesystem or mount.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cache;
use crate::fs::MountCounters;
use crate::hydrate::checkpoint::{Checkpoint, Verdict};

/// Written by the node serving a cache directory into it (`pid` is the node's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountStatusFile {
    /// The serving process (the same as `server_pid`; kept for older readers).
    pub pid: u32,
    /// The process serving the mounts now (replaced when it dies; see `holder_pid`).
    #[serde(default)]
    pub server_pid: u32,
    /// The process keeping the mounts' connections across the server's death, if any.
    #[serde(default)]
    pub holder_pid: Option<u32>,
    /// How many times a server died and a new one took its mounts over.
    #[serde(default)]
    pub restarts: u64,
    /// How many times the server was replaced by `ossmount upgrade`.
    #[serde(default)]
    pub upgrades: u64,
    /// The version of the serving process.
    #[serde(default)]
    pub version: String,
    /// The server is still taking over the mounts its holder handed it.
    #[serde(default)]
    pub taking_over: bool,
    pub url: String,
    pub mountpoint: String,
    pub capacity_bytes: u64,
    pub min_free_disk: u64,
    pub used_bytes: u64,
    /// Checkpoint names (entry hashes) being hydrated right now.
    pub hydrating: Vec<String>,
    /// Every mount's counters added up (the engine's and the cache's are the node's).
    pub counters: MountCounters,
    /// Each mount the node serves now (the last one when none is left).
    #[serde(default)]
    pub mounts: Vec<SessionStatus>,
    /// The node's memory target in bytes (`--memory-limit`, or half the cgroup's
    /// `memory.max`); `None`: none.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// The node's resident set now (`VmRSS`) and at its peak (`VmHWM`), in bytes.
    #[serde(default)]
    pub rss_bytes: u64,
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Entries every mount's cached listings show (counted against the memory target).
    #[serde(default)]
    pub listed_entries: u64,
    pub updated_unix: u64,
}

/// One mount of a node, in the status file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionStatus {
    pub id: u64,
    pub url: String,
    pub mountpoint: String,
    pub counters: MountCounters,
}

/// Writes a mount's status into its cache directory (temp file, then rename, so a reader
/// never sees half a record).
pub fn write_status_file(cache_dir: &Path, st: &MountStatusFile) {
    let path = cache_dir.join("status.json");
    let tmp = cache_dir.join("status.json.tmp");
    let body = serde_json::to_vec_pretty(st).unwrap_or_default();
    // Owner-only, like the rest of the cache: it names the bucket and the mount.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryStatus {
    /// The URL scheme of the store the entry was read from (`oss`, `s3`).
    pub scheme: &'static str,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub parts_present: usize,
    pub parts_total: usize,
    pub bytes_present: u64,
    /// complete (CRC-64 checked), unverified (complete, the server gave no CRC-64), corrupt
    /// (failed the check; discarded at the next open), partial or hydrating
    pub state: String,
    pub last_use: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    pub cache_dir: String,
    /// The mount using this cache now, if any.
    pub mounted: Option<MountStatusFile>,
    /// The last mount's status when none runs now.
    pub last_mount: Option<MountStatusFile>,
    pub entries: Vec<EntryStatus>,
    pub total_entries: usize,
    pub complete_entries: usize,
    pub bytes_present: u64,
    /// Bytes the cache directory takes on disk (allocated blocks, like `du`).
    pub disk_bytes: u64,
}

fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    total
}

pub fn cache_status(dir: &Path) -> std::io::Result<CacheStatus> {
    let entries_dir = dir.join("entries");
    if !entries_dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} is not an ossmount cache directory (no entries/)",
                dir.display()
            ),
        ));
    }
    let running = cache::lock_is_held(dir);
    let status_file: Option<MountStatusFile> = std::fs::read(dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let hydrating: Vec<String> = match (&status_file, running) {
        (Some(s), true) => s.hydrating.clone(),
        _ => vec![],
    };
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&entries_dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".ckpt") else {
            continue;
        };
        let Ok(c) = Checkpoint::load(&e.path()) else {
            continue;
        };
        let total = c.layout().count();
        let present = c.parts_present();
        let state = match c.verdict() {
            Verdict::Complete => "complete",
            Verdict::Unverified => "unverified",
            Verdict::Corrupt => "corrupt",
            Verdict::Partial if hydrating.iter().any(|h| h == stem) => "hydrating",
            Verdict::Partial => "partial",
        };
        let used = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        entries.push(EntryStatus {
            bytes_present: c.bytes_present(),
            scheme: crate::store::scheme_of_location(&c.store),
            bucket: c.bucket,
            key: c.key,
            size: c.size,
            parts_present: present,
            parts_total: total,
            state: state.into(),
            last_use: crate::store::time::iso8601_extended(used),
        });
    }
    entries.sort_by(|a, b| (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key)));
    Ok(CacheStatus {
        cache_dir: dir.display().to_string(),
        total_entries: entries.len(),
        complete_entries: entries
            .iter()
            .filter(|e| e.state == "complete" || e.state == "unverified")
            .count(),
        bytes_present: entries.iter().map(|e| e.bytes_present).sum(),
        disk_bytes: disk_usage(dir),
        mounted: status_file.clone().filter(|_| running),
        last_mount: status_file.filter(|_| !running),
        entries,
    })
}

/// Every cache directory under the default base, for `status` without `--cache-dir`.
pub fn default_cache_dirs() -> Vec<PathBuf> {
    let base = cache::cache_base_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("entries").is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The human-readable report.
pub fn render(s: &CacheStatus) -> String {
    use crate::size::human_bytes;
    let mut out = format!("cache {}", s.cache_dir);
    match (&s.mounted, &s.last_mount) {
        (Some(m), _) => out.push_str(&format!(
            " — in use by pid {}{} ({} at {}); {} of {} capacity used; memory {} (target {})\n",
            m.pid,
            match m.holder_pid {
                Some(h) => format!(
                    " (holder pid {h}; {} restart(s), {} upgrade(s))",
                    m.restarts, m.upgrades
                ),
                None => String::new(),
            },
            m.url,
            m.mountpoint,
            human_bytes(m.used_bytes),
            human_bytes(m.capacity_bytes),
            human_bytes(m.rss_bytes),
            m.memory_limit.map_or("none".to_string(), human_bytes),
        )),
        (None, Some(m)) => out.push_str(&format!(
            " — not mounted (last: {} at {}, capacity {})\n",
            m.url,
            m.mountpoint,
            human_bytes(m.capacity_bytes)
        )),
        _ => out.push_str(" — not mounted\n"),
    }
    out.push_str(&format!(
        "{} entries ({} complete), {} present, {} on disk\n",
        s.total_entries,
        s.complete_entries,
        human_bytes(s.bytes_present),
        human_bytes(s.disk_bytes)
    ));
    if !s.entries.is_empty() {
        out.push_str(&format!(
            "{:<10} {:>11} {:>11} {:<24} OBJECT\n",
            "STATE", "PARTS", "BYTES", "LAST USE"
        ));
    }
    for e in &s.entries {
        out.push_str(&format!(
            "{:<10} {:>11} {:>11} {:<24} {}://{}/{}\n",
            e.state,
            format!("{}/{}", e.parts_present, e.parts_total),
            human_bytes(e.bytes_present),
            e.last_use,
            e.scheme,
            e.bucket,
            e.key
        ));
    }
    if let Some(m) = s.mounted.as_ref().or(s.last_mount.as_ref()) {
        let c = &m.counters;
        out.push_str(&format!(
            "counters: {} part requests ({} retries), {} fetched, {} served ({} hits, {} misses), {} evictions, {} read errors\n",
            c.part_requests,
            c.part_retries,
            human_bytes(c.bytes_fetched),
            human_bytes(c.bytes_served),
            c.cache_hits,
            c.cache_misses,
            c.evictions,
            c.read_errors
        ));
    }
    out
}
