//! A FUSE descriptor handed in, the contract of the Kubernetes CSI drivers: the test plays
//! the privileged helper (it opens `/dev/fuse` and calls mount(2) with `fd=N` itself), and
//! `ossmount mount ... /dev/fd/N` only serves the descriptor it inherited. Root and
//! /dev/fuse required; every mount is owned by a guard that unmounts it and kills the
//! process, and every wait is bounded.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mount::*;
use common::*;

/// Opens `/dev/fuse` (close-on-exec: only the child it is handed to inherits it) and mounts
/// it on `target` as an orchestrator does.
fn open_and_mount(target: &Path) -> OwnedFd {
    let dev = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("open /dev/fuse");
    let fd = OwnedFd::from(dev);
    let src = CString::new(format!("ossmount:{BUCKET}")).unwrap();
    let dst = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let fstype = CString::new("fuse.ossmount").unwrap();
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fd.as_raw_fd()
    ))
    .unwrap();
    // SAFETY: valid C strings; mount(2) reads them only.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr() as *const libc::c_void,
        )
    };
    assert_eq!(rc, 0, "mount(2): {}", std::io::Error::last_os_error());
    fd
}

/// The type the kernel shows for `target` in /proc/self/mountinfo (after the " - ").
fn mountinfo_type(target: &Path) -> Option<String> {
    let target = target.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_string)
}

/// Mounts a fresh `/dev/fuse` on `target` and starts `ossmount mount URL /dev/fd/N` with
/// only that descriptor handed down; the guard owns the mount and the process from here.
fn serve_handed_in(s: &Server, target: &Path, cache: &Path) -> Mount {
    let fd = open_and_mount(target);
    let n = fd.as_raw_fd();
    let log = target.with_extension("log");
    let mut cmd = Command::new(bin());
    cmd.args(["mount", &url(), &format!("/dev/fd/{n}")])
        .arg("--cache-dir")
        .arg(cache)
        .args(["--foreground", "--log-level", "info", "--allow-other"])
        .envs(s.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe: the child keeps
    // the descriptor (its number unchanged), no other child of this test process does.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(n, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let spawned = cmd.spawn();
    let mut m = Mount {
        child: None,
        mnt: target.to_path_buf(),
        log,
        cache: cache.to_path_buf(),
    };
    // The process holds the connection now; this one lets go of its copy, as a helper does.
    drop(fd);
    m.child = Some(spawned.unwrap());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handed_in_dev_fuse_descriptor_is_served_and_ends_on_umount_or_sigterm() {
    require_fuse();
    let s = Server::start().await;
    let data = ossmount::sample::bytes(7, (3 << 20) + 11);
    s.put("dir/file.bin", &data);
    let (target, cache) = dirs(&s, "fd");
    std::fs::create_dir_all(&target).unwrap();
    let mut m = serve_handed_in(&s, &target, &cache);
    assert_eq!(mountinfo_type(&target).as_deref(), Some("fuse.ossmount"));

    let file = target.join("dir/file.bin");
    let got = fs_op(Duration::from_secs(30), move || std::fs::read(file)).await;
    let got =
        got.unwrap_or_else(|e| panic!("read through the handed-in fd: {e}\n{}", m.log_text()));
    assert!(got == data, "the bytes read are the object's");
    let names = fs_op(Duration::from_secs(10), {
        let dir = target.join("dir");
        move || {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect::<Vec<_>>()
        }
    })
    .await;
    assert_eq!(names, vec!["file.bin"]);

    // The orchestrator unmounts; the process ends by itself, with exit 0.
    let status = m.unmount();
    assert!(status.success(), "exit {status:?}: {}", m.log_text());
    assert!(!is_mounted(&target));

    // SIGTERM ends the process with exit 0 too (the orchestrator then unmounts).
    let mut m = serve_handed_in(&s, &target, &cache);
    let file = target.join("dir/file.bin");
    let got = fs_op(Duration::from_secs(30), move || std::fs::read(file)).await;
    assert!(got.unwrap() == data, "served again, from the cache");
    let mut child = m.child.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
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
    drop(m);
    assert!(!is_mounted(&target), "the guard unmounted it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_descriptor_that_is_not_dev_fuse_is_refused_before_serving() {
    let s = Server::start().await;
    let (_, cache) = dirs(&s, "notfuse");
    // Descriptor 0 is /dev/null here (stdin), not /dev/fuse; 999 is not open at all.
    for (fd, want) in [
        ("0", "is not a /dev/fuse descriptor"),
        ("999", "is not an open descriptor"),
    ] {
        let out = fs_op(Duration::from_secs(30), {
            let (cache, env) = (cache.clone(), s.env());
            move || {
                Command::new(bin())
                    .args(["mount", &url(), &format!("/dev/fd/{fd}")])
                    .arg("--cache-dir")
                    .arg(&cache)
                    .arg("--foreground")
                    .envs(env)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "fd {fd} was accepted: {text}");
        assert!(text.contains(want), "fd {fd}: {text}");
        assert!(text.contains("mount(2) -o fd=N"), "says what to do: {text}");
    }
}
