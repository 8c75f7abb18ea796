//! What `/proc/self/mountinfo` says is mounted at a path: the top mount's filesystem type
//! and source, so a publish can tell "already mounted here" (idempotent) from "something
//! else is here", and an unpublish touches only ossmount's own mounts. Reads only.

use std::path::Path;

/// The top mount at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountAt {
    pub fs_type: String,
    pub source: String,
}

/// The top (last listed) mount whose mount point is `target`, in `mountinfo` text.
pub fn top_mount_in(mountinfo: &str, target: &Path) -> Option<MountAt> {
    let want = target.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || unescape(fields[4]) != want {
            return None;
        }
        // After the optional fields, a lone `-`, then type and source.
        let dash = fields.iter().position(|f| *f == "-")?;
        Some(MountAt {
            fs_type: unescape(fields.get(dash + 1)?),
            source: unescape(fields.get(dash + 2)?),
        })
    })
}

/// The top mount at `target` in this process's mount namespace now.
pub fn top_mount(target: &Path) -> Option<MountAt> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    top_mount_in(&text, target)
}

/// How many mounts are stacked at `target` (for tests and logs: a publish must add one).
pub fn mounts_at(mountinfo: &str, target: &Path) -> usize {
    let Some(want) = target.to_str() else {
        return 0;
    };
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(want))
        .count()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_mount_at_a_target() {
        let text = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                    90 30 0:50 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv\\040a/mount ro,nosuid,nodev shared:60 - fuse.ossmount ossmount:bkt ro,user_id=0\n\
                    91 30 0:51 / /mnt/other rw master:1 - tmpfs tmpfs rw\n";
        let target = Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv a/mount");
        assert_eq!(
            top_mount_in(text, target),
            Some(MountAt {
                fs_type: "fuse.ossmount".into(),
                source: "ossmount:bkt".into()
            })
        );
        assert_eq!(mounts_at(text, target), 1);
        assert_eq!(top_mount_in(text, Path::new("/mnt/none")), None);
        assert_eq!(
            top_mount_in(text, Path::new("/mnt/other")).unwrap().fs_type,
            "tmpfs"
        );
    }
}
