//! `ossmount mount` through the real kernel FUSE (root and /dev/fuse required). Every mount is
//! owned by a guard that unmounts and kills the process even when an assertion fails, and
//! every filesystem operation runs under a timeout, so a hang fails the test instead of
//! hanging it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use common::*;

const PART: u64 = 8 * MIB;
const BIG: u64 = 256 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_ls_and_stat_through_the_kernel() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("big/large.bin", 256, BIG);
    for i in 0..1500 {
        s.put(
            &format!("many/f{i:04}.txt"),
            format!("file {i}\n").repeat(i % 7).as_bytes(),
        );
    }
    s.put("odd/with space+plus=eq~.txt", b"odd");
    let (mnt, cache) = dirs(&s, "cp");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--threads", "4"]);

    // stat and ls come from listings: no object data is fetched.
    let big = m.path("big/large.bin");
    let md = fs_op(Duration::from_secs(10), move || {
        std::fs::metadata(big).unwrap()
    })
    .await;
    assert_eq!(md.len(), BIG);
    assert_eq!(md.permissions().mode_bits(), 0o444);
    let c = s.emu.object_counters(BUCKET, "big/large.bin");
    assert_eq!(
        (c.get_requests, c.body_bytes),
        (0, 0),
        "stat fetched data: {c:?}"
    );

    let many = m.path("many");
    let listing = fs_op(Duration::from_secs(20), move || {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(many)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    })
    .await;
    let want: Vec<(String, u64)> = (0..1500)
        .map(|i| {
            (
                format!("f{i:04}.txt"),
                (format!("file {i}\n").len() * (i % 7)) as u64,
            )
        })
        .collect();
    assert_eq!(listing, want);
    let odd = m.path("odd/with space+plus=eq~.txt");
    assert_eq!(
        fs_op(Duration::from_secs(10), move || std::fs::read(odd).unwrap()).await,
        b"odd"
    );

    // `ls -l` itself, as a user runs it.
    let out = fs_op(Duration::from_secs(20), {
        let p = m.path("many");
        move || {
            Command::new("ls")
                .arg("-l")
                .arg(p)
                .output_within(Duration::from_secs(20), "ls -l")
                .unwrap()
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.lines().filter(|l| l.starts_with("-r--r--r--")).count(),
        1500
    );
    assert_eq!(
        s.emu.totals().get_requests,
        1,
        "only odd.txt was read so far"
    );

    // cp of the 256 MiB object is byte-exact.
    let dest = mnt.parent().unwrap().join("copy.bin");
    let (src, d) = (m.path("big/large.bin"), dest.clone());
    let st = fs_op(Duration::from_secs(120), move || {
        Command::new("cp")
            .arg(src)
            .arg(d)
            .status_within(Duration::from_secs(120), "cp")
            .unwrap()
    })
    .await;
    assert!(st.success());
    assert_eq!(
        sha256_file(&dest),
        sha256_file(&s.object_path("big/large.bin"))
    );
    let c = s.emu.object_counters(BUCKET, "big/large.bin");
    assert_eq!(c.body_bytes, BIG, "each byte fetched once");

    // Writes are refused.
    let p = m.path("new.txt");
    let err = fs_op(Duration::from_secs(5), move || {
        std::fs::write(p, b"x").unwrap_err()
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let p = m.path("many/f0001.txt");
    let err = fs_op(Duration::from_secs(5), move || {
        std::fs::remove_file(p).unwrap_err()
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // umount ends the process cleanly.
    let mut m = m;
    let status = tokio::task::spawn_blocking(move || m.unmount())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}
impl ModeBits for std::fs::Permissions {
    fn mode_bits(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        self.mode() & 0o7777
    }
}

/// Byte offsets of the GETs (206) for `key` since `from`, in arrival order, as part indexes.
fn part_order(s: &Server, from: usize, key: &str) -> Vec<u64> {
    s.emu.request_log()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.key == key && r.status == 206)
        .filter_map(|r| r.range.map(|(a, _)| a / PART))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_near_the_end_of_a_cold_file_is_fetched_first() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("cold.bin", 7, BIG);
    // 16 MiB/s per connection: one 8 MiB part takes about 0.5 s; the whole file over 3
    // connections over 5 s.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 16 * MIB);
    let (mnt, cache) = dirs(&s, "cold");
    for mode in ["open", "read"] {
        let _ = std::fs::remove_dir_all(&cache);
        let m = Mount::start(
            &s,
            &url(),
            &mnt,
            &cache,
            &["--threads", "3", "--hydrate", mode, "--readahead", "8MiB"],
        );
        let from = s.emu.request_log().len();
        let before = s.emu.object_counters(BUCKET, "cold.bin").body_bytes;
        let path = m.path("cold.bin");
        let offset = 200 * MIB + 123;
        let (elapsed, got) = fs_op(Duration::from_secs(30), move || {
            let f = std::fs::File::open(path).unwrap();
            let start = Instant::now();
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, offset).unwrap();
            (start.elapsed(), buf)
        })
        .await;
        let served = s.emu.object_counters(BUCKET, "cold.bin").body_bytes - before;
        let mut want = vec![0u8; 4096];
        ossmount::sample::fill(7, offset, &mut want);
        assert_eq!(got, want, "{mode}");
        let target = offset / PART;
        let order = part_order(&s, from, "cold.bin");
        let pos = order
            .iter()
            .position(|&p| p == target)
            .expect("the part was requested");
        // Only parts the background had already started (0..threads) came before it.
        assert!(
            order[..pos].iter().all(|&p| p < 3),
            "{mode}: order {order:?}"
        );
        // About one part's fetch time (0.5 s here), far from the whole file's 5 s.
        assert!(
            elapsed < Duration::from_millis(2500),
            "{mode}: read took {elapsed:?}"
        );
        if mode == "read" {
            assert!(
                order[..pos].is_empty(),
                "read mode fetches nothing unasked: {order:?}"
            );
            assert!(
                served <= PART + 8 * MIB,
                "read mode served {served} bytes before the read returned"
            );
        }
        eprintln!(
            "{mode}: 4 KiB at 200 MiB in {elapsed:?}, {served} bytes served, order {order:?}"
        );
        drop(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_object_does_not_stall_ls_or_other_reads() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("slow.bin", 1, 16 * MIB);
    s.put_sample("cached.bin", 2, 4 * MIB);
    let (mnt, cache) = dirs(&s, "stall");
    let m = Mount::start(&s, &url(), &mnt, &cache, &[]);
    let cached = m.path("cached.bin");
    let c2 = cached.clone();
    fs_op(Duration::from_secs(20), move || std::fs::read(c2).unwrap()).await;
    s.emu
        .update_faults(|f| f.stalled = vec![format!("{BUCKET}/slow.bin")]);
    let slow = m.path("slow.bin");
    let stuck = tokio::task::spawn_blocking(move || std::fs::read(slow).map(|v| v.len()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stuck.is_finished(),
        "the stalled read should still be waiting"
    );
    // The stalled read waits until the stall is cleared, so `ls` and the cached read ending
    // while it still waits shows they do not wait behind it; how fast they end is not the
    // claim (the bound is for a loaded machine).
    let root = m.path("");
    let names = fs_op(Duration::from_secs(30), move || {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    })
    .await;
    assert_eq!(names, vec!["cached.bin", "slow.bin"]);
    let data = fs_op(Duration::from_secs(30), move || {
        std::fs::read(cached).unwrap()
    })
    .await;
    assert_eq!(data, ossmount::sample::bytes(2, (4 * MIB) as usize));
    assert!(
        !stuck.is_finished(),
        "the stalled read ended before the stall was cleared"
    );
    s.emu.update_faults(|f| f.stalled.clear());
    let n = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n as u64, 16 * MIB);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_cp_then_remount_resumes_from_the_cache() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("resume.bin", 9, BIG);
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 12 * MIB);
    let (mnt, cache) = dirs(&s, "kill");
    let threads = 3;
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &["--threads", "3"]);
    let dest = mnt.parent().unwrap().join("out.bin");
    let mut cp = Command::new("cp")
        .arg(m.path("resume.bin"))
        .arg(&dest)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let total_parts = (BIG / PART) as usize;
    let reached = wait_until(Duration::from_secs(60), || {
        entry_checkpoints(&cache)
            .iter()
            .any(|c| c.parts_present() * 10 >= total_parts * 4)
    });
    m.kill9();
    let _ = cp.kill();
    let _ = cp.wait();
    assert!(reached, "cp never reached 40%: {}", m.log_text());
    let ckpt = entry_checkpoints(&cache)
        .pop()
        .expect("the entry's checkpoint survives SIGKILL");
    let present = ckpt.bytes_present();
    assert!(present >= BIG * 4 / 10);

    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    let before = s.emu.object_counters(BUCKET, "resume.bin").body_bytes;
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--threads", "3"]);
    let (src, d) = (m.path("resume.bin"), dest.clone());
    let st = fs_op(Duration::from_secs(120), move || {
        Command::new("cp")
            .arg(src)
            .arg(d)
            .status_within(Duration::from_secs(120), "cp")
            .unwrap()
    })
    .await;
    assert!(st.success());
    assert_eq!(
        sha256_file(&dest),
        sha256_file(&s.object_path("resume.bin"))
    );
    let second_round = s.emu.object_counters(BUCKET, "resume.bin").body_bytes - before;
    assert!(
        second_round <= (BIG - present) + threads * PART,
        "second round served {second_round}, missing was {}",
        BIG - present
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_server_gone_cached_files_read_and_others_fail_fast() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("cached.bin", 3, 6 * MIB);
    s.put_sample("never.bin", 4, 6 * MIB);
    let (mnt, cache) = dirs(&s, "down");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--metadata-ttl", "1s"]);
    let cached = m.path("cached.bin");
    let c2 = cached.clone();
    let first = fs_op(Duration::from_secs(20), move || std::fs::read(c2).unwrap()).await;
    assert_eq!(first, ossmount::sample::bytes(3, (6 * MIB) as usize));
    // Every byte read does not yet mean the entry is complete (its last record may still be
    // on its way), and only a complete entry is opened without the server: wait for it.
    let c3 = cached.clone();
    let complete = fs_op(Duration::from_secs(40), move || {
        wait_until(Duration::from_secs(30), || {
            getxattr(&c3, "user.ossmount.cached").as_deref() == Some("complete")
        })
    })
    .await;
    assert!(
        complete,
        "the entry never became complete: {}",
        m.log_text()
    );
    // The scratch directory (mountpoint, cache) stays in `s` until the mount is gone.
    let Server { emu, dir: _dir, .. } = s;
    emu.shutdown().await;
    // Past the TTL, and past twice the TTL plus a namespace sweep (1 s), which forgets the
    // last answer about the name: lookups, listings and HEADs fail, the cache still answers.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = fs_op(Duration::from_secs(20), move || std::fs::read(cached))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the cached file failed with the server gone: {e}\n{}",
                m.log_text()
            )
        });
    assert_eq!(again, first);
    let never = m.path("never.bin");
    let start = Instant::now();
    let err = fs_op(Duration::from_secs(20), move || {
        std::fs::read(never).unwrap_err()
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "EIO took {:?}",
        start.elapsed()
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_object_reads_new_content_after_the_ttl() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("v.bin", 1, 3 * MIB);
    let (mnt, cache) = dirs(&s, "replace");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--metadata-ttl", "1s", "--part-size", "1MiB"],
    );
    let p = m.path("v.bin");
    let p2 = p.clone();
    let v1 = fs_op(Duration::from_secs(20), move || std::fs::read(p2).unwrap()).await;
    assert_eq!(v1, ossmount::sample::bytes(1, (3 * MIB) as usize));
    let v2_data = ossmount::sample::bytes(2, (3 * MIB + 5) as usize);
    s.put("v.bin", &v2_data);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v2 = fs_op(Duration::from_secs(20), move || std::fs::read(p).unwrap()).await;
    assert!(
        v2 == v2_data,
        "after the TTL the new version is served, whole"
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_refuses_bad_input_before_mounting() {
    require_fuse();
    let s = Server::start().await;
    s.put("a", b"a");
    let (mnt, cache) = dirs(&s, "bad");
    std::fs::create_dir_all(&mnt).unwrap();
    /// Runs `ossmount mount URL MNT --cache-dir CACHE --foreground`; expects it to fail and
    /// returns its stderr.
    async fn refused(
        url: String,
        mnt: &Path,
        cache: &Path,
        env: Vec<(&'static str, String)>,
    ) -> String {
        let (mnt, cache) = (mnt.to_path_buf(), cache.to_path_buf());
        let out = tokio::task::spawn_blocking(move || {
            refused_mount(
                Command::new(bin())
                    .args(["mount", &url])
                    .arg(&mnt)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .arg("--foreground")
                    .envs(env),
                &mnt,
            )
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    let mut env = s.env();
    env.retain(|(k, _)| *k != "OSS_ACCESS_KEY_SECRET");
    env.push(("OSS_ACCESS_KEY_SECRET", "wrong-secret-xyz".into()));
    let text = refused(url(), &mnt, &cache, env).await;
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(!text.contains("wrong-secret-xyz"));
    assert!(!is_mounted(&mnt));

    let missing = mnt.parent().unwrap().join("nope");
    let text = refused(url(), &missing, &cache, s.env()).await;
    assert!(text.contains("does not exist: create it first"), "{text}");

    let text = refused("oss://no-such-bucket/".into(), &mnt, &cache, s.env()).await;
    assert!(text.contains("NoSuchBucket"), "{text}");

    // A second mount on the same cache directory joins the node serving it: tests/node.rs.
}

/// Without --foreground the command returns once the mount is up, the daemon logs into the
/// cache directory, and `umount` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detached_mount_returns_when_mounted_and_ends_on_umount() {
    require_fuse();
    let s = Server::start().await;
    s.put("hello.txt", b"hello from a daemon");
    let (mnt, cache) = dirs(&s, "daemon");
    std::fs::create_dir_all(&mnt).unwrap();
    /// Unmounts and kills the daemon (found by the pid in its cache lock) if the test fails.
    struct DaemonGuard {
        mnt: std::path::PathBuf,
        cache: std::path::PathBuf,
    }
    impl Drop for DaemonGuard {
        fn drop(&mut self) {
            if is_mounted(&self.mnt) {
                force_unmount(&self.mnt);
            }
            if let Ok(pid) = std::fs::read_to_string(self.cache.join("lock")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: signalling a process by pid; harmless if it is gone.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
    let _guard = DaemonGuard {
        mnt: mnt.clone(),
        cache: cache.clone(),
    };
    let out = tokio::task::spawn_blocking({
        let env = s.env();
        let (m, c) = (mnt.clone(), cache.clone());
        move || {
            Command::new(bin())
                .args(["mount", &url()])
                .arg(&m)
                .arg("--cache-dir")
                .arg(&c)
                .envs(env)
                .output_within(Duration::from_secs(60), "ossmount mount (detaching)")
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt), "mounted by the time the command returned");
    let p = mnt.join("hello.txt");
    let got = fs_op(Duration::from_secs(10), move || std::fs::read(p).unwrap()).await;
    assert_eq!(got, b"hello from a daemon");
    let pid: i32 = std::fs::read_to_string(cache.join("lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Command::new("umount")
        .arg(&mnt)
        .status_within(Duration::from_secs(60), "umount")
        .unwrap()
        .success());
    // SAFETY: kill(pid, 0) only checks whether the process exists.
    let gone = wait_until(
        Duration::from_secs(60),
        || unsafe { libc::kill(pid, 0) } != 0,
    );
    assert!(gone, "the daemon did not exit after umount");
    let log = std::fs::read_to_string(cache.join("ossmount.log")).unwrap();
    assert!(
        log.contains("mounted oss://test-bucket/") && log.contains("unmounted"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ownership_modes_and_allow_other_are_applied() {
    require_fuse();
    let s = Server::start().await;
    s.put("d/f.txt", b"x");
    let (mnt, cache) = dirs(&s, "modes");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &[
            "--allow-other",
            "--uid",
            "1234",
            "--gid",
            "5678",
            "--file-mode",
            "0440",
            "--dir-mode",
            "0750",
        ],
    );
    let (f, d) = (m.path("d/f.txt"), m.path("d"));
    let (fm, dm) = fs_op(Duration::from_secs(10), move || {
        (std::fs::metadata(f).unwrap(), std::fs::metadata(d).unwrap())
    })
    .await;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (fm.uid(), fm.gid(), fm.mode() & 0o7777),
        (1234, 5678, 0o440)
    );
    assert_eq!(
        (dm.uid(), dm.gid(), dm.mode() & 0o7777),
        (1234, 5678, 0o750)
    );
    assert!(fm.is_file() && dm.is_dir());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .expect("mount listed");
    assert!(
        line.contains("allow_other") && line.contains("ro,"),
        "{line}"
    );
    assert!(line.starts_with("ossmount:test-bucket "), "{line}");
    // What supervisors check for readiness: the type names the filesystem.
    assert_eq!(line.split(' ').nth(2), Some("fuse.ossmount"), "{line}");
    drop(m);
}

/// Complete files are handed to the kernel (FUSE passthrough): concurrent opens share one
/// backing file, an open partial file keeps later opens on the daemon path (the kernel cannot
/// mix the two on one inode), and --no-passthrough serves every read itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_files_are_read_through_kernel_passthrough() {
    require_fuse();
    let s = Server::start().await;
    let data = ossmount::sample::bytes(77, (6 * MIB) as usize);
    s.put("p.bin", &data);
    let (mnt, cache) = dirs(&s, "passthrough");
    for passthrough in [true, false] {
        let _ = std::fs::remove_dir_all(&cache);
        let extra: &[&str] = if passthrough {
            &[]
        } else {
            &["--no-passthrough"]
        };
        let mut m = Mount::start(&s, &url(), &mnt, &cache, extra);
        let p = m.path("p.bin");
        let expect = data.clone();
        fs_op(Duration::from_secs(90), move || {
            // Partial at open: the daemon serves it. While it stays open, the file completes
            // and a second open must still work (on the daemon path).
            let held = std::fs::File::open(&p).unwrap();
            let mut first = vec![0u8; 4096];
            held.read_exact_at(&mut first, 0).unwrap();
            assert_eq!(&first[..], &expect[..4096]);
            assert!(wait_until(Duration::from_secs(30), || std::fs::read(&p)
                .unwrap()
                == expect));
            drop(held);
            // Every byte read is not yet complete: the last record may still be on its way.
            assert!(wait_until(Duration::from_secs(30), || getxattr(
                &p,
                "user.ossmount.cached"
            )
            .as_deref()
                == Some("complete")));
            // Complete and nothing open: two concurrent opens share one backing file.
            let a = std::fs::File::open(&p).unwrap();
            let b = std::fs::read(&p).unwrap();
            let mut whole = vec![0u8; expect.len()];
            a.read_exact_at(&mut whole, 0).unwrap();
            assert!(b == expect && whole == expect);
        })
        .await;
        let log = tokio::task::spawn_blocking(move || {
            assert!(m.unmount().success());
            m.log_text()
        })
        .await
        .unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("unmounted"))
            .unwrap_or_default()
            .to_string();
        if passthrough {
            assert!(log.contains("FUSE passthrough on"), "{log}");
            assert!(line.contains("(2 passthrough)"), "{line}");
        } else {
            assert!(line.contains("(0 passthrough)"), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_inside_a_part_gets_its_bytes_before_the_part_completes() {
    require_fuse();
    let s = Server::start().await;
    let size = 32 * MIB;
    s.put_sample("streaming.bin", 21, size);
    s.put_sample("cold.bin", 22, size);
    let (mnt, cache) = dirs(&s, "first-byte");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--part-size", "8MiB", "--hydrate", "read"],
    );
    for name in ["streaming.bin", "cold.bin"] {
        let p = m.path(name);
        fs_op(Duration::from_secs(20), move || {
            std::fs::metadata(p).unwrap()
        })
        .await;
    }
    // 1 MiB/s per connection: an 8 MiB part takes 8 s to arrive.
    s.emu.update_faults(|f| f.bandwidth_per_connection = MIB);
    let parts_present =
        |p: std::path::PathBuf| getxattr(&p, "user.ossmount.hydration").unwrap_or_default();

    // Part 0 streams from its start (a read at offset 0); a read 1 MiB into it returns once
    // the stream has passed it, while the part is still arriving.
    // A read 6 MiB in, seconds ahead of that stream, gets a GET of its own from its page.
    let far = 6 * MIB + 321;
    let p = m.path("streaming.bin");
    let (first, inside, ahead, parts_then) = fs_op(Duration::from_secs(30), move || {
        let f = std::fs::File::open(&p).unwrap();
        let mut a = vec![0u8; 4096];
        f.read_exact_at(&mut a, 0).unwrap();
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, MIB + 123).unwrap();
        let mut c = vec![0u8; 4096];
        f.read_exact_at(&mut c, far).unwrap();
        (a, b, c, parts_present(p))
    })
    .await;
    let want = ossmount::sample::bytes(21, size as usize);
    assert!(first == want[..4096]);
    assert!(inside == want[(MIB + 123) as usize..(MIB + 123 + 4096) as usize]);
    assert!(ahead == want[far as usize..far as usize + 4096]);
    assert_eq!(
        parts_then, "0/4 parts",
        "the reads returned before their part completed"
    );
    let part0_gets: Vec<(u64, u64)> = s
        .get_ranges("streaming.bin", 0)
        .into_iter()
        .filter(|(start, _)| *start < 8 * MIB)
        .collect();
    assert_eq!(
        part0_gets,
        vec![(0, 8 * MIB), (6 * MIB, 8 * MIB)],
        "the far read split part 0's stream at its page"
    );

    // A cold part read in its middle is fetched from the reader's offset first.
    let at = 8 * MIB + 5 * MIB + 77;
    let p = m.path("cold.bin");
    let (got, parts_then) = fs_op(Duration::from_secs(30), move || {
        let f = std::fs::File::open(&p).unwrap();
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, at).unwrap();
        (b, parts_present(p))
    })
    .await;
    let want = ossmount::sample::bytes(22, (at + 4096) as usize);
    assert!(got == want[at as usize..]);
    assert_eq!(
        parts_then, "0/4 parts",
        "the read returned before its part completed"
    );
    let from_reader = s
        .emu
        .request_log()
        .iter()
        .any(|r| r.key == "cold.bin" && r.range.is_some_and(|(start, _)| start == 13 * MIB));
    assert!(
        from_reader,
        "a GET of part 1 starts at the reader's 4 KiB page"
    );
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    // Both objects whole: the split part and the part fetched from its middle combine their
    // segments' CRC-64s into the part's, and the whole-object check passes.
    for (name, seed) in [("streaming.bin", 21), ("cold.bin", 22)] {
        let p = m.path(name);
        let got = fs_op(Duration::from_secs(60), move || std::fs::read(p).unwrap()).await;
        assert!(
            got == ossmount::sample::bytes(seed, size as usize),
            "{name}"
        );
    }
    let p = m.path("streaming.bin");
    let state = fs_op(Duration::from_secs(30), move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = parts_present(p.clone());
            if v.starts_with("4/4") || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    assert!(state.starts_with("4/4"), "{state}");
    drop(m);
}
