//! Where a request's bucket and key live on disk, and nowhere else: a bucket is a directory
//! directly in the root whose name the service would accept, and an object is a file below
//! that directory reached by normal path segments only. Symlinks are followed only while they
//! stay inside the same bucket, so no request (however its path is spelled or encoded) reads
//! or lists a file outside the root. Must not decide what to answer (that is the router's).

use std::path::{Path, PathBuf};

/// Whether `name` is a bucket name the service accepts: 3 to 63 of `a-z 0-9 -`, starting and
/// ending with a letter or digit. Anything else (`..`, `.`, an empty name, a name with `/`,
/// `\` or NUL) can never name a directory here.
pub(super) fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && b.iter().all(|&c| edge(c) || c == b'-')
        && edge(b[0])
        && edge(b[b.len() - 1])
}

/// The bucket's directory with symlinks resolved, when `bucket` is a valid name and resolves
/// to a directory that is still inside the root.
pub(super) fn bucket_dir(root: &Path, bucket: &str) -> Option<PathBuf> {
    if !valid_bucket_name(bucket) {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let dir = root.join(bucket).canonicalize().ok()?;
    (dir.starts_with(&root) && dir != root && dir.is_dir()).then_some(dir)
}

/// Whether `segment` may be one step of a key's path: not empty (`a//b`), not `.` or `..`,
/// no NUL, and not one of our own files (`.ossmount-*`).
fn normal_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && !segment.contains('\0')
        && !segment.starts_with(".ossmount-")
}

/// Where `key` of `bucket` would be written, by its spelling alone (nothing is resolved): every
/// segment must be a normal one, so the path can only name something below the bucket.
pub(super) fn object_path(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    if !valid_bucket_name(bucket) || key.is_empty() || key.ends_with('/') {
        return None;
    }
    let mut p = root.join(bucket);
    for segment in key.split('/') {
        if !normal_segment(segment) {
            return None;
        }
        p.push(segment);
    }
    Some(p)
}

/// The file that serves `key` of `bucket`, symlinks resolved: `None` when the key is not
/// spelled as a path below the bucket, or when it resolves to anything outside the bucket's
/// directory (a symlink pointing out of it). The caller opens the returned path, never the
/// spelled one, so the check and the open see the same file (short of someone swapping files
/// in the root itself, which only the server's operator can do).
pub(super) fn resolve_object(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    let dir = bucket_dir(root, bucket)?;
    let spelled = object_path(root, bucket, key)?;
    let resolved = spelled.canonicalize().ok()?;
    resolved.starts_with(&dir).then_some(resolved)
}

/// The directory a listing of `prefix` walks: the bucket directory joined with the
/// directories `prefix` names completely (`a/b/c` walks `a/b/`). `None` when the prefix has a
/// segment that is not a normal one, or resolves outside the bucket or to nothing: either
/// lists nothing.
pub(super) fn listing_dir(root: &Path, bucket: &str, dir_part: &str) -> Option<PathBuf> {
    let dir = bucket_dir(root, bucket)?;
    let mut walk_root = dir.clone();
    for segment in dir_part.split('/').filter(|s| !s.is_empty()) {
        if !normal_segment(segment) {
            return None;
        }
        walk_root.push(segment);
    }
    // Resolved, so the walk starts where the check looked; not there lists nothing.
    let resolved = walk_root.canonicalize().ok()?;
    resolved.starts_with(&dir).then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_service_accepts_are_buckets() {
        for good in ["bucket", "test-bucket", "a1b", "0-9", &"b".repeat(63)] {
            assert!(valid_bucket_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "ab",
            "-ab",
            "ab-",
            "Bucket",
            "a.b.c",
            "a_b",
            "a/b",
            "..\\x",
            "ab\0c",
            &"b".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_spelled_below_the_bucket_only() {
        let root = Path::new("/srv");
        assert_eq!(
            object_path(root, "bkt", "a/b.txt"),
            Some(PathBuf::from("/srv/bkt/a/b.txt"))
        );
        for bad in [
            "../x",
            "a/../../x",
            "./x",
            "a//b",
            "dir/",
            "",
            "/abs",
            "a\0b",
            ".ossmount-x",
        ] {
            assert_eq!(object_path(root, "bkt", bad), None, "{bad:?}");
        }
        assert_eq!(object_path(root, "..", "x"), None);
        assert_eq!(object_path(root, ".", "x"), None);
    }

    #[test]
    fn symlinks_out_of_the_bucket_are_not_followed() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        let bucket = root.join("bkt");
        std::fs::create_dir_all(bucket.join("inner")).unwrap();
        std::fs::write(top.path().join("secret"), b"outside").unwrap();
        std::fs::write(root.join("stray"), b"in the root, in no bucket").unwrap();
        std::fs::write(bucket.join("inner/real"), b"inside").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, bucket.join(name)).unwrap()
        };
        link(&top.path().join("secret"), "leak");
        link(&root.join("stray"), "stray-link");
        link(top.path(), "up");
        link(&bucket.join("inner/real"), "alias");

        assert!(resolve_object(&root, "bkt", "inner/real").is_some());
        assert!(resolve_object(&root, "bkt", "alias").is_some());
        assert_eq!(resolve_object(&root, "bkt", "leak"), None);
        assert_eq!(resolve_object(&root, "bkt", "stray-link"), None);
        assert_eq!(resolve_object(&root, "bkt", "up/secret"), None);
        assert_eq!(listing_dir(&root, "bkt", "up/"), None);
        assert_eq!(listing_dir(&root, "bkt", "../"), None);
        assert!(listing_dir(&root, "bkt", "inner/").is_some());

        // A bucket that is a symlink out of the root is no bucket.
        std::os::unix::fs::symlink(top.path(), root.join("escape")).unwrap();
        assert_eq!(bucket_dir(&root, "escape"), None);
        assert_eq!(resolve_object(&root, "escape", "secret"), None);
    }
}
