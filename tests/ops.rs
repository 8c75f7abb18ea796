//! Running ossmount the way OSS users run things, through the real kernel FUSE (root and
//! /dev/fuse required): Prometheus metrics that agree with what the server counted, and
//! `mount -t fuse.ossmount` / fstab through the system's mount.fuse3 helper (package fuse3).
//! Every mount is owned by a guard that unmounts even when an assertion fails.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

const T: Duration = Duration::from_secs(60);

/// `name{labels} value` lines of an OpenMetrics text, summed by `name{labels}`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((name, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                m.insert(name.to_string(), v);
            }
        }
    }
    m
}

/// The sum of every series of `name` whose labels contain `label`.
fn sum(m: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(url: &str) -> HashMap<String, f64> {
    let text = within(T, "a metrics scrape", async {
        reqwest::get(url).await.unwrap().text().await.unwrap()
    })
    .await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text: {text}"
    );
    parse_metrics(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_agree_with_what_the_server_counted() {
    require_fuse();
    let s = Server::start().await;
    s.put_sample("big.bin", 60, 48 * MIB);
    s.put("small.txt", b"small");
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 16 * MIB);
    let (mnt, cache) = dirs(&s, "metrics");
    let m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--metrics-addr", "127.0.0.1:0", "--part-size", "4MiB"],
    );
    assert!(wait_until(Duration::from_secs(30), || m
        .log_text()
        .contains("metrics at http://")));
    let log = m.log_text();
    let at = log.find("metrics at http://").unwrap() + "metrics at ".len();
    let url = log[at..].split_whitespace().next().unwrap().to_string();

    let src = m.path("big.bin");
    let dst = mnt.with_extension("copy");
    let cp = tokio::task::spawn_blocking(move || std::fs::copy(src, dst).unwrap());
    // During the copy: requests are counted and parts are in flight. Scrapes run until one
    // sees a part in flight or the copy has ended (a slow machine stretches the copy too).
    let mut saw_in_flight = false;
    while !cp.is_finished() {
        let during = scrape(&url).await;
        if during
            .get("ossmount_parts_in_flight")
            .copied()
            .unwrap_or(0.0)
            > 0.0
        {
            saw_in_flight = true;
            assert!(sum(&during, "ossmount_requests_total", "kind=\"get\"") > 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_in_flight, "no scrape saw a part in flight");
    tokio::time::timeout(T, cp).await.unwrap().unwrap();
    let p = m.path("small.txt");
    fs_op(T, move || std::fs::read(p)).await.unwrap();
    // Settled: what the mount counts agrees with what the server saw, and nothing is in
    // flight or active (bounded: the assertions below say what differs).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (after, server) = loop {
        let after = scrape(&url).await;
        let server = s.emu.totals();
        let settled = sum(&after, "ossmount_requests_total", "kind=\"get\"") as u64
            == server.get_requests
            && after["ossmount_fetched_bytes_total"] as u64 == server.body_bytes
            && after["ossmount_hydrations_active"] == 0.0
            && after["ossmount_parts_in_flight"] == 0.0
            && after.get("ossmount_hydrations_completed_total") == Some(&2.0);
        if settled || std::time::Instant::now() > deadline {
            break (after, server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sum(&after, "ossmount_requests_total", "kind=\"get\"") as u64,
        server.get_requests,
        "{after:?}"
    );
    assert_eq!(
        sum(&after, "ossmount_requests_total", "kind=\"head\"") as u64,
        server.head_requests
    );
    assert_eq!(
        sum(&after, "ossmount_requests_total", "kind=\"list\"") as u64,
        server.list_requests
    );
    assert_eq!(
        after["ossmount_fetched_bytes_total"] as u64,
        server.body_bytes
    );
    assert!(after["ossmount_served_bytes_total"] as u64 >= 48 * MIB + 5);
    assert!(after["ossmount_cache_misses_total"] > 0.0);
    assert!(after["ossmount_demand_read_wait_seconds_count"] > 0.0);
    let hydration_keys: Vec<_> = after.keys().filter(|k| k.contains("hydration")).collect();
    assert_eq!(
        after.get("ossmount_hydrations_completed_total"),
        Some(&2.0),
        "{hydration_keys:?}"
    );
    assert_eq!(after["ossmount_hydrations_active"], 0.0);
    assert_eq!(after["ossmount_parts_in_flight"], 0.0);
    assert!(after["ossmount_cache_used_bytes"] >= (48 * MIB) as f64);
    // The adaptive window: from 3, and only throttling (none here) takes it lower; a
    // window above 3 got there by steps up the metrics counted; nothing is held once
    // nothing is fetched.
    assert!(after["ossmount_connections"] >= 3.0, "{after:?}");
    assert_eq!(after["ossmount_connection_throttle_cuts_total"], 0.0);
    if after["ossmount_connections"] > 3.0 {
        assert!(
            after["ossmount_connection_steps_up_total"] >= 1.0,
            "{after:?}"
        );
    }
    assert_eq!(after["ossmount_connections_in_use"], 0.0, "{after:?}");
    let _ = std::fs::remove_file(mnt.with_extension("copy"));
}

/// Puts the binary where mount(8)'s fixed PATH finds it, for one test; removes it after.
struct Installed(&'static str);

impl Installed {
    fn new() -> Installed {
        let dst = "/usr/local/bin/ossmount";
        std::fs::copy(bin(), dst).unwrap();
        Installed(dst)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn mount_helper_available() -> bool {
    Path::new("/sbin/mount.fuse3").exists() || Path::new("/usr/sbin/mount.fuse3").exists()
}

/// mount(8) needs the fuse3 package's mount.fuse3 for `-t fuse.*`: install it when missing
/// (as root, from Debian's packages; bounded), so `cargo test` works on a fresh machine.
fn ensure_mount_helper() {
    if mount_helper_available() {
        return;
    }
    let apt = |args: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "DEBIAN_FRONTEND=noninteractive timeout 300 apt-get {args} >/dev/null 2>&1"
            ))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !apt("install -y -qq fuse3") {
        apt("update -qq");
        apt("install -y -qq fuse3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_t_fuse_ossmount_and_fstab_work_through_mount_fuse3() {
    require_fuse();
    ensure_mount_helper();
    assert!(
        mount_helper_available(),
        "mount.fuse3 is missing: install the Debian package fuse3 (.ci/run does)"
    );
    let s = Server::start().await;
    s.put("dir/hello.txt", b"hello from fstab\n");
    let _bin = Installed::new();
    let (mnt, cache) = dirs(&s, "fstab");
    std::fs::create_dir_all(&mnt).unwrap();
    let guard = Mount {
        child: None,
        mnt: mnt.clone(),
        log: mnt.with_extension("log"),
        cache: cache.clone(),
    };
    let opts = format!(
        "endpoint={},region=cn-hangzhou,cache_dir={},part_size=1MiB,metadata_ttl=5s,_netdev,nofail,noatime,rw",
        s.emu.endpoint(),
        cache.display()
    );
    let env = |c: &mut Command| {
        c.env("OSS_ACCESS_KEY_ID", AK)
            .env("OSS_ACCESS_KEY_SECRET", SK)
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true");
    };
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse.ossmount", &format!("oss://{BUCKET}/dir/")])
        .arg(&mnt)
        .args(["-o", &opts]);
    env(&mut cmd);
    let out = cmd
        .output_within(Duration::from_secs(60), "mount -t fuse.ossmount")
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.ossmount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt));
    let p = mnt.join("hello.txt");
    let got = fs_op(T, move || std::fs::read(p)).await.unwrap();
    assert_eq!(got, b"hello from fstab\n");
    // Read-only whatever `rw` said.
    let p = mnt.join("new.txt");
    assert!(fs_op(T, move || std::fs::write(p, b"x")).await.is_err());
    assert!(Command::new("umount")
        .arg(&mnt)
        .status_within(Duration::from_secs(60), "umount")
        .unwrap()
        .success());
    assert!(wait_until(Duration::from_secs(60), || !is_mounted(&mnt)));

    // The same line in an fstab, mounted by its mountpoint.
    let fstab = mnt.with_extension("fstab");
    std::fs::write(
        &fstab,
        format!(
            "oss://{BUCKET}/dir/ {} fuse.ossmount {opts} 0 0\n",
            mnt.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("mount");
    cmd.arg("-T").arg(&fstab).arg(&mnt);
    env(&mut cmd);
    let out = cmd
        .output_within(Duration::from_secs(60), "mount -t fuse.ossmount")
        .unwrap();
    assert!(
        out.status.success(),
        "mount from fstab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = mnt.join("hello.txt");
    assert_eq!(
        fs_op(T, move || std::fs::read(p)).await.unwrap(),
        b"hello from fstab\n"
    );
    assert!(Command::new("umount")
        .arg(&mnt)
        .status_within(Duration::from_secs(60), "umount")
        .unwrap()
        .success());
    assert!(wait_until(Duration::from_secs(60), || !is_mounted(&mnt)));

    // An unknown option: a clear error, a non-zero exit, nothing mounted.
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "fuse.ossmount", &format!("oss://{BUCKET}/dir/")])
        .arg(&mnt)
        .args(["-o", &format!("{opts},cache_sise=1GiB")]);
    env(&mut cmd);
    let out = cmd
        .output_within(Duration::from_secs(60), "mount -t fuse.ossmount")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("cache_sise"),
        "the error names the option: {text}"
    );
    assert!(!is_mounted(&mnt));
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_and_completions_and_man_page_are_generated() {
    let s = Server::start().await;
    s.put("a.txt", b"abc");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ossmount.log");
    let mut env = s.env();
    env.push(("RUST_LOG", "debug".into()));
    // stderr is a pipe here, not a terminal: plain text.
    let (status, text) = run_cli(&["stat", "oss://test-bucket/a.txt"], env.clone()).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("DEBUG"), "debug lines are logged: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in redirected output: {text:?}"
    );
    let log_arg = log.display().to_string();
    let (status, text) = run_cli(
        &["--log-file", &log_arg, "stat", "oss://test-bucket/a.txt"],
        env,
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(!text.contains("DEBUG"), "the log went to the file: {text}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("DEBUG") && !logged.contains('\u{1b}'),
        "{logged:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, bash) = run_cli(&["completions", "bash"], vec![]).await;
    assert!(status.success() && bash.contains("complete -F") && bash.contains("prefetch"));
    let (status, man) = run_cli(&["manpage"], vec![]).await;
    assert!(status.success() && man.contains(".TH ossmount 1") && man.contains("mount"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_against_a_live_mount_warms_it_with_zero_new_gets() {
    require_fuse();
    let s = Server::start().await;
    let keys: Vec<String> = (0..5).map(|i| format!("warm/f{i}.bin")).collect();
    for (i, k) in keys.iter().enumerate() {
        s.put_sample(k, 700 + i as u64, MIB + 333 * i as u64);
    }
    let (mnt, cache) = dirs(&s, "warm");
    let m = Mount::start(&s, &url(), &mnt, &cache, &["--part-size", "1MiB"]);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sock = std::fs::metadata(cache.join("control.sock")).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);
    // The cache is locked by the mount: prefetch asks the mount to do it.
    let (status, text) = prefetch_cli(&s, "oss://test-bucket/warm/", &cache, &[]).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("prefetched 5 objects"), "{text}");
    assert!(m
        .log_text()
        .contains("prefetch asked through the control socket"));
    let gets_before = s.emu.totals().get_requests;
    for k in &keys {
        let p = m.path(k);
        let got = fs_op(T, move || std::fs::read(p)).await.unwrap();
        assert!(got == std::fs::read(s.object_path(k)).unwrap(), "{k}");
    }
    assert_eq!(
        s.emu.totals().get_requests,
        gets_before,
        "reading prefetched files made GETs"
    );
}
