//! The node's memory target (`--memory-limit`) and how it is shared out: where the default
//! comes from (a share of the cgroup's `memory.max`), what each consumer that can shrink or
//! wait is given of it (the direct readers' windows, cached directory listings), and the
//! process's resident set as `/proc` reports it. A leaf: it reads `/proc` and
//! `/sys/fs/cgroup` and computes figures; it must not hold or free memory of anyone else's
//! (the consumers apply their shares themselves).

use std::path::Path;

/// Bytes of the node's resident set one listed directory entry holds, measured: a listing
/// of 200,000 keys in one directory raised the node's RSS by 45.6 MB (about 228 bytes per
/// key: the namespace node with its name, the name index, the listing's entry), rounded up.
pub const BYTES_PER_LISTED_ENTRY: u64 = 256;

/// What memory the node aims to stay under, and where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTarget {
    /// `None`: no target (no flag, no cgroup limit): the built-in defaults apply.
    pub limit: Option<u64>,
    pub source: TargetSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    /// `--memory-limit`.
    Flag,
    /// Half of the cgroup's `memory.max` (the value it had then).
    Cgroup {
        memory_max: u64,
    },
    None,
}

impl MemoryTarget {
    /// `--memory-limit` when given, else half of this process's cgroup memory limit
    /// (`cgroup_memory_max`), else none. Half, because the cgroup charges more than the node's own memory: the page
    /// cache of every cache file the node writes (dirty until each part's fdatasync, so not
    /// reclaimable at once) and the kernel's memory for the FUSE connection count against
    /// the same `memory.max`, and an OOM kill takes the whole node with every mount.
    pub fn resolve(flag: Option<u64>) -> MemoryTarget {
        if let Some(limit) = flag {
            return MemoryTarget {
                limit: Some(limit),
                source: TargetSource::Flag,
            };
        }
        match cgroup_memory_max(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup")) {
            Some(max) => MemoryTarget {
                limit: Some(max / 2),
                source: TargetSource::Cgroup { memory_max: max },
            },
            None => MemoryTarget {
                limit: None,
                source: TargetSource::None,
            },
        }
    }

    /// The most bytes the direct readers' windows may hold together: a quarter of the
    /// target, and never more than `default` (what a node without a target allows).
    pub fn direct_memory(&self, default: u64) -> u64 {
        match self.limit {
            Some(limit) => (limit / 4).min(default),
            None => default,
        }
    }

    /// The most directory entries cached listings may show together before the oldest
    /// listing is dropped (`None`: listings expire by age only): a quarter of the target,
    /// at `BYTES_PER_LISTED_ENTRY` each.
    pub fn listed_entries_max(&self) -> Option<u64> {
        self.limit.map(|l| (l / 4 / BYTES_PER_LISTED_ENTRY).max(1))
    }

    /// In words, for the log.
    pub fn describe(&self) -> String {
        let size = |b: u64| crate::size::human_bytes(b);
        match (self.limit, self.source) {
            (Some(l), TargetSource::Flag) => format!("memory target {} (--memory-limit)", size(l)),
            (Some(l), TargetSource::Cgroup { memory_max }) => format!(
                "memory target {} (half of the cgroup's memory.max, {})",
                size(l),
                size(memory_max)
            ),
            _ => "no memory target (no --memory-limit, no cgroup memory.max)".to_string(),
        }
    }
}

/// The memory limit of the cgroup this process is in: cgroup v2's `memory.max`, else
/// cgroup v1's `memory.limit_in_bytes` (nodes of older Kubernetes clusters); `None` when
/// there is none (`max`, v1's "unlimited" of about 2^63, or no cgroup filesystem).
/// `proc_cgroup` is `/proc/self/cgroup`, `cgroup_root` `/sys/fs/cgroup`. A container without
/// a cgroup namespace sees its host's path in `/proc/self/cgroup` but its own group mounted
/// at the root, so the root is looked at when the path is not there.
pub fn cgroup_memory_max(proc_cgroup: &Path, cgroup_root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_cgroup).ok()?;
    let read_in = |base: &Path, path: &str, file: &str| {
        [
            base.join(path.trim().trim_start_matches('/')),
            base.to_path_buf(),
        ]
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
    };
    // v2: the line `0::/path`.
    if let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) {
        if let Some(max) = read_in(cgroup_root, path, "memory.max") {
            return max.trim().parse().ok(); // "max": none
        }
    }
    // v1: a line `N:memory:/path` (or `N:memory,other:/path`).
    let path = text.lines().find_map(|l| {
        let mut fields = l.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let limit: u64 = read_in(&cgroup_root.join("memory"), path, "memory.limit_in_bytes")?
        .trim()
        .parse()
        .ok()?;
    (limit < 1 << 60).then_some(limit)
}

/// This process's resident set in bytes (`VmRSS`), 0 if `/proc` cannot tell.
pub fn resident_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// This process's peak resident set in bytes (`VmHWM`), 0 if `/proc` cannot tell.
pub fn peak_resident_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Gives the allocator's free memory back to the kernel (glibc keeps freed memory in its
/// arenas, so dropped listings would not lower the resident set otherwise). Costs a walk
/// over the arenas' free lists: call it after large frees, not per request.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cgroup_memory_max` of a process whose `/proc/self/cgroup` says `line`, in a cgroup
    /// tree where the file `file` (relative to the cgroup root) says `value`.
    fn cgroup_fixture(line: &str, file: &str, value: Option<&str>) -> Option<u64> {
        let d = tempfile::tempdir().unwrap();
        let proc_cgroup = d.path().join("cgroup");
        std::fs::write(&proc_cgroup, line).unwrap();
        let root = d.path().join("fs");
        let file = root.join(file);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        if let Some(v) = value {
            std::fs::write(file, v).unwrap();
        }
        cgroup_memory_max(&proc_cgroup, &root)
    }

    #[test]
    fn the_cgroup_limit_is_read_and_max_means_none() {
        const V2: &str = "0::/system.slice/ossmount.service\n";
        const V2_FILE: &str = "system.slice/ossmount.service/memory.max";
        let got = cgroup_fixture(V2, V2_FILE, Some("536870912\n"));
        assert_eq!(got, Some(512 << 20));
        assert_eq!(cgroup_fixture(V2, V2_FILE, Some("max\n")), None);
        assert_eq!(
            cgroup_fixture(V2, V2_FILE, None),
            None,
            "no memory controller"
        );
        // In a container without a cgroup namespace: its own group is the root.
        assert_eq!(
            cgroup_fixture(V2, "memory.max", Some("1073741824")),
            Some(1 << 30)
        );
        // cgroup v1 (the memory controller's own hierarchy; a hybrid host has `0::/` too).
        const V1: &str = "4:memory:/kubepods/pod1/c1\n0::/\n";
        const V1_FILE: &str = "memory/kubepods/pod1/c1/memory.limit_in_bytes";
        assert_eq!(
            cgroup_fixture(V1, V1_FILE, Some("268435456\n")),
            Some(256 << 20)
        );
        assert_eq!(
            cgroup_fixture(V1, V1_FILE, Some("9223372036854771712\n")),
            None,
            "v1's unlimited"
        );
        let got = cgroup_fixture(
            "5:cpuacct,memory:/kubepods/pod1/c1\n",
            "memory/memory.limit_in_bytes",
            Some("268435456"),
        );
        assert_eq!(got, Some(256 << 20), "a container's own group at the root");
        assert_eq!(
            cgroup_fixture("4:cpu:/x\n", "memory/memory.limit_in_bytes", Some("1")),
            None
        );
    }

    #[test]
    fn the_target_is_shared_out() {
        let t = MemoryTarget::resolve(Some(128 << 20));
        assert_eq!(t.source, TargetSource::Flag);
        assert_eq!(t.direct_memory(256 << 20), 32 << 20);
        assert_eq!(
            t.listed_entries_max(),
            Some((32 << 20) / BYTES_PER_LISTED_ENTRY)
        );
        // A generous target never raises the windows' default.
        assert_eq!(
            MemoryTarget::resolve(Some(64 << 30)).direct_memory(256 << 20),
            256 << 20
        );
        let none = MemoryTarget {
            limit: None,
            source: TargetSource::None,
        };
        assert_eq!(none.direct_memory(256 << 20), 256 << 20);
        assert_eq!(none.listed_entries_max(), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let rss = resident_bytes();
        assert!(rss > 0 && peak_resident_bytes() >= rss);
    }
}
