//! Many mounts, one cache: `ossmount mount` on a cache directory a node already serves joins
//! that node, through the real kernel FUSE (root and /dev/fuse required). Every mount is
//! owned by a guard that unmounts it and ends its command; every wait is bounded.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

/// GET body bytes the server sent for `key` so far.
fn body_bytes(s: &Server, key: &str) -> u64 {
    s.emu.object_counters(BUCKET, key).body_bytes
}

async fn read(path: std::path::PathBuf) -> Vec<u8> {
    fs_op(Duration::from_secs(60), move || std::fs::read(&path))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"))
}

/// The mounts `ossmount status --json` lists for the cache.
fn status_mounts(cache: &Path) -> Vec<String> {
    status_json(cache)["mounted"]["mounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["mountpoint"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_mounts_share_one_node_one_cache_and_each_unmounts_on_its_own() {
    require_fuse();
    let s = Server::start().await;
    let small = ossmount::sample::bytes(11, 300_000);
    s.put("pre/small.bin", &small);
    const BIG: u64 = 48 * MIB;
    s.put_sample("pre/big.bin", 12, BIG);
    let want_big = ossmount::sample::bytes(12, BIG as usize);
    let (a_mnt, cache) = dirs(&s, "a");
    let b_mnt = a_mnt.parent().unwrap().join("b");
    let c_mnt = a_mnt.parent().unwrap().join("c");
    let mut a = Mount::start(&s, &url(), &a_mnt, &cache, &[]);
    // A node-wide setting unlike the node's: said, not silently dropped.
    let b = Mount::start(&s, &url(), &b_mnt, &cache, &["--part-size", "4MiB"]);
    // The command prints it once it hears the answer, a moment after the kernel has the mount.
    let noted = wait_until(Duration::from_secs(20), || {
        b.log_text()
            .contains("note: --part-size 4194304 was asked for, but the node serving this cache directory uses 8388608")
    });
    assert!(noted, "{}", b.log_text());
    let c = Mount::start(&s, &format!("oss://{BUCKET}/pre/"), &c_mnt, &cache, &[]);

    // One node serves the three: the cache's lock holder, with three mounts in its status.
    let node = a.node_pid().expect("a node holds the cache");
    assert_eq!((b.node_pid(), c.node_pid()), (Some(node), Some(node)));
    assert!(
        wait_until(Duration::from_secs(10), || status_mounts(&cache).len() == 3),
        "{}",
        status_json(&cache)
    );
    for cmd in [&a, &b, &c] {
        let pid = cmd.child.as_ref().unwrap().id() as i32;
        assert_ne!(pid, node, "a mount's command is not the node");
    }

    // Read through one mount, then through the others: not one more byte from the server.
    assert!(read(a.path("pre/small.bin")).await == small);
    let fetched = body_bytes(&s, "pre/small.bin");
    assert_eq!(fetched, small.len() as u64);
    assert!(read(b.path("pre/small.bin")).await == small);
    assert!(read(c.path("small.bin")).await == small);
    assert_eq!(
        body_bytes(&s, "pre/small.bin"),
        fetched,
        "served from the one cache"
    );

    // Two cold readers through two mounts at once: each byte fetched once.
    let (x, y) = tokio::join!(read(b.path("pre/big.bin")), read(c.path("big.bin")));
    assert!(
        x == want_big && y == want_big,
        "both read the object's bytes"
    );
    assert_eq!(
        body_bytes(&s, "pre/big.bin"),
        BIG,
        "one hydration served both mounts"
    );

    // Unmounting one ends its command with exit 0; the others keep serving.
    let status = a.unmount();
    assert!(status.success(), "{}", a.log_text());
    assert!(!is_mounted(&a_mnt));
    assert!(read(b.path("pre/small.bin")).await == small);
    assert!(read(c.path("big.bin")).await == want_big);
    assert_eq!(b.node_pid(), Some(node), "the node goes on");
    assert!(
        wait_until(Duration::from_secs(10), || status_mounts(&cache).len() == 2),
        "{}",
        status_json(&cache)
    );
    assert_eq!(body_bytes(&s, "pre/big.bin"), BIG);
    drop((b, c));
    // The last mount gone, the node ends and lets go of the cache.
    let gone = wait_until(Duration::from_secs(20), || {
        !Path::new(&format!("/proc/{node}")).exists()
            || std::fs::read_to_string(format!("/proc/{node}/status"))
                .is_ok_and(|s| s.contains("State:\tZ"))
    });
    assert!(gone, "the node ended after its last mount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_whose_credentials_are_refused_gets_eacces_for_what_another_mount_cached() {
    require_fuse();
    const LIMITED_AK: &str = "limited-ak";
    const LIMITED_SK: &str = "limited-secret-9f8e";
    let s = Server::start_with(|cfg| {
        cfg.restricted.push(ossmount::emulator::RestrictedKey {
            access_key_id: LIMITED_AK.into(),
            access_key_secret: LIMITED_SK.into(),
            denied_prefixes: vec!["secret/".into()],
        })
    })
    .await;
    let data = ossmount::sample::bytes(21, 200_000);
    s.put("secret/plan.bin", &data);
    s.put("open/readme.txt", b"for everyone");
    let (full_mnt, cache) = dirs(&s, "full");
    let limited_mnt = full_mnt.parent().unwrap().join("limited");
    let full = Mount::start(&s, &url(), &full_mnt, &cache, &[]);
    assert!(read(full.path("secret/plan.bin")).await == data);

    let mut env = s.env();
    env.retain(|(k, _)| !k.starts_with("OSS_ACCESS_KEY"));
    env.push(("OSS_ACCESS_KEY_ID", LIMITED_AK.into()));
    env.push(("OSS_ACCESS_KEY_SECRET", LIMITED_SK.into()));
    let limited = Mount::start_with_env(&url(), &limited_mnt, &cache, &[], env);
    assert_eq!(limited.node_pid(), full.node_pid(), "one node, one cache");
    let plan = limited.path("secret/plan.bin");
    let err = fs_op(Duration::from_secs(30), move || std::fs::read(plan))
        .await
        .expect_err("the cached object is not served to a mount its server refuses");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert!(read(limited.path("open/readme.txt")).await == b"for everyone");
    // The mount that may read it still does, from the cache.
    let before = body_bytes(&s, "secret/plan.bin");
    assert!(read(full.path("secret/plan.bin")).await == data);
    assert_eq!(body_bytes(&s, "secret/plan.bin"), before);
    let log = full.log_text();
    assert!(!log.contains(LIMITED_SK), "a secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_that_cannot_start_exits_non_zero_naming_the_cause_and_mounts_nothing() {
    require_fuse();
    let s = Server::start().await;
    s.put("a", b"a");
    let (mnt, cache) = dirs(&s, "refused");
    std::fs::create_dir_all(&mnt).unwrap();
    let first = Mount::start(&s, &url(), &mnt, &cache, &[]);
    // Joining the running node: a missing bucket is refused by name, nothing is mounted.
    let other = mnt.parent().unwrap().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let out = fs_op(Duration::from_secs(60), {
        let (other, cache, env) = (other.clone(), cache.clone(), s.env());
        move || {
            Command::new(bin())
                .args(["mount", "oss://no-such-bucket/"])
                .arg(&other)
                .arg("--cache-dir")
                .arg(&cache)
                .arg("--foreground")
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("NoSuchBucket"), "{text}");
    assert!(!is_mounted(&other));
    // The node and its first mount are untouched.
    assert!(read(first.path("a")).await == b"a");
    drop(first);

    // With no node running: the same, and no node is left behind holding the cache.
    let cache2 = cache.parent().unwrap().join("cache2");
    let out = fs_op(Duration::from_secs(60), {
        let (other, cache2, env) = (other.clone(), cache2.clone(), s.env());
        move || {
            Command::new(bin())
                .args(["mount", "oss://no-such-bucket/"])
                .arg(&other)
                .arg("--cache-dir")
                .arg(&cache2)
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("NoSuchBucket"), "{text}");
    assert!(!is_mounted(&other));
    let released = wait_until(Duration::from_secs(20), || {
        !ossmount::cache::lock_is_held(&cache2)
    });
    assert!(released, "the node that took no mount ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_mount_at_a_mount_point_the_node_serves_is_refused_not_stacked() {
    require_fuse();
    let s = Server::start().await;
    s.put("a", b"a");
    let (mnt, cache) = dirs(&s, "stacked");
    std::fs::create_dir_all(&mnt).unwrap();
    let first = Mount::start(&s, &url(), &mnt, &cache, &[]);
    // A retried request (a CSI publish whose first try timed out) asks for the same place.
    let out = fs_op(Duration::from_secs(60), {
        let (mnt, cache, env) = (mnt.clone(), cache.clone(), s.env());
        move || {
            Command::new(bin())
                .args(["mount", &url()])
                .arg(&mnt)
                .arg("--cache-dir")
                .arg(&cache)
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("already serves a mount at"), "{text}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = format!(" {} ", mnt.display());
    assert_eq!(
        mountinfo.lines().filter(|l| l.contains(&here)).count(),
        1,
        "one mount at {}",
        mnt.display()
    );
    assert!(read(first.path("a")).await == b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relative_paths_mean_what_they_mean_to_the_command_not_to_the_node() {
    require_fuse();
    let s = Server::start().await;
    s.put("r.txt", b"relative");
    let (first_mnt, cache) = dirs(&s, "rel");
    let first = Mount::start(&s, &url(), &first_mnt, &cache, &[]);
    // The node's working directory is the first command's; this one runs elsewhere and
    // names its mount point and cache relative to its own.
    let elsewhere = first_mnt.parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("m")).unwrap();
    let rel_cache = pathdiff(&cache, &elsewhere);
    let mut child = Command::new(bin())
        .current_dir(&elsewhere)
        .args(["mount", &url(), "m", "--cache-dir"])
        .arg(&rel_cache)
        .arg("--foreground")
        .envs(s.env())
        .stderr(std::fs::File::create(elsewhere.join("log")).unwrap())
        .spawn()
        .unwrap();
    let target = elsewhere.join("m");
    let up = wait_until(Duration::from_secs(30), || {
        is_mounted(&target) || child.try_wait().unwrap().is_some()
    });
    let log = std::fs::read_to_string(elsewhere.join("log")).unwrap_or_default();
    let guard = Mount {
        child: Some(child),
        mnt: target.clone(),
        log: elsewhere.join("log"),
        cache: cache.clone(),
    };
    assert!(up && is_mounted(&target), "{log}");
    assert_eq!(guard.node_pid(), first.node_pid(), "joined the same node");
    assert!(read(target.join("r.txt")).await == b"relative");
    drop(guard);
    drop(first);
}

/// `to` relative to `from` (both absolute, `to` under `from`'s parent).
fn pathdiff(to: &Path, from: &Path) -> std::path::PathBuf {
    let rel = to.strip_prefix(from.parent().unwrap()).unwrap();
    Path::new("..").join(rel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_a_busy_mount_says_so_and_a_second_one_detaches_it() {
    require_fuse();
    let s = Server::start().await;
    let data = ossmount::sample::bytes(31, 100_000);
    s.put("held.bin", &data);
    let (mnt, cache) = dirs(&s, "busy");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &[]);
    // A file held open keeps the mount busy.
    let held = fs_op(Duration::from_secs(30), {
        let p = m.path("held.bin");
        move || std::fs::File::open(p).unwrap()
    })
    .await;
    let pid = m.child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let told = wait_until(Duration::from_secs(20), || m.log_text().contains("is busy"));
    assert!(
        told,
        "the command says why it has not ended: {}",
        m.log_text()
    );
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running: the mount is still there"
    );
    assert!(is_mounted(&mnt));
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let mut child = m.child.take().unwrap();
    let ended = wait_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(
        ended && status.success(),
        "exit {status:?}: {}",
        m.log_text()
    );
    assert!(!is_mounted(&mnt), "detached from the namespace");
    // The open file still reads: the node serves it until it is closed.
    let got = fs_op(Duration::from_secs(30), move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; data.len()];
        held.read_exact_at(&mut buf, 0).unwrap();
        (buf == data, held)
    })
    .await;
    assert!(got.0, "the held file reads its bytes after the detach");
    drop(got.1);
    m.wait_node_done();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unmount_never_takes_down_another_filesystem_mounted_in_its_place() {
    require_fuse();
    let s = Server::start().await;
    s.put("held.bin", b"held open");
    let (mnt, cache) = dirs(&s, "replaced");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &[]);
    // Held open, the mount lives on after a lazy umount; then a tmpfs takes its place.
    let held = fs_op(Duration::from_secs(30), {
        let p = m.path("held.bin");
        move || std::fs::File::open(p).unwrap()
    })
    .await;
    let lazy = Command::new("umount").arg("-l").arg(&mnt).status().unwrap();
    assert!(lazy.success());
    let tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(tmpfs.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(mnt.clone());
    std::fs::write(mnt.join("mine"), b"tmpfs").unwrap();
    // The command's SIGTERM (twice: the first unmount, then the detach) leaves it alone.
    let pid = m.child.as_ref().unwrap().id() as i32;
    for _ in 0..2 {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ended = wait_until(Duration::from_secs(20), || {
        m.child.as_mut().unwrap().try_wait().unwrap().is_some()
    });
    assert!(ended, "{}", m.log_text());
    m.child = None;
    assert_eq!(
        std::fs::read(mnt.join("mine")).unwrap(),
        b"tmpfs",
        "the tmpfs mounted in its place is still there"
    );
    drop(held);
}

/// A node serves the mount namespace it runs in: a command from another one (another pod
/// or container sharing the cache directory by a hostPath) is refused with a message naming
/// the cache directory, starts no second node (the cache lock stays the first node's),
/// mounts nothing, and the node's own mount goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_in_another_mount_namespace_is_refused_and_the_node_goes_on() {
    require_fuse();
    let s = Server::start().await;
    s.put("ns/a.txt", b"served in the node's namespace");
    let (mnt, cache) = dirs(&s, "ns");
    let first = Mount::start(&s, &url(), &mnt, &cache, &[]);
    let node_pid = first.node_pid().expect("the node's pid");
    let other = mnt.with_file_name("other-mnt");
    std::fs::create_dir_all(&other).unwrap();
    let out = refused_mount(
        Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(bin())
            .args(["mount", &url()])
            .arg(&other)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--foreground")
            .envs(s.env()),
        &other,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another mount namespace") && err.contains(cache.to_str().unwrap()),
        "{err}"
    );
    assert!(!is_mounted(&other), "mounted anyway");
    assert_eq!(
        first.node_pid(),
        Some(node_pid),
        "a second node took the cache"
    );
    assert_eq!(status_mounts(&cache), [mnt.display().to_string()]);
    assert_eq!(
        read(mnt.join("ns/a.txt")).await,
        b"served in the node's namespace"
    );
}
