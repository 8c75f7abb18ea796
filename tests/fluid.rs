//! `ossmount fluid` as Fluid's ThinRuntime runs it in a fuse container: a config written the
//! way Fluid's thin engine writes it (secret options as paths of files under a directory
//! standing in for /etc/fluid/secrets), the emulator as the endpoint. One mount goes at
//! targetPath itself, as type fuse.ossmount in mountinfo (what Fluid's check_mount.sh greps
//! for); several go under targetPath/<name>. Reads are byte-exact, SIGTERM ends the command
//! with exit 0 and nothing mounted, and no secret reaches the output. A Secret kubelet
//! updates (its `..data` link swapped, the old STS keys revoked) reaches the running mount.
//! An `s3://` Dataset mounts from s3s-fs with its keys from the same kind of Secret files.

mod common;
#[path = "common/s3.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::mount::*;
use common::*;

/// The fstype mountinfo gives `target` (field after the ` - ` separator), if mounted.
fn mountinfo_fstype(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&target.to_str().unwrap())).then(|| fields[dash + 1].to_string())
    })
}

/// Secret files as Fluid mounts them: `<dir>/<secret>/<key>`, kubelet-style (each key a
/// symlink into `..data`).
fn fluid_secret(dir: &Path, secret: &str, keys: &[(&str, &str)]) -> PathBuf {
    let base = dir.join(secret);
    let data = base.join("..2026_12_04_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    for (k, v) in keys {
        std::fs::write(data.join(k), v).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), base.join("..data")).unwrap();
    for (k, _) in keys {
        std::os::unix::fs::symlink(Path::new("..data").join(k), base.join(k)).unwrap();
    }
    base
}

/// Kubelet's update of a mounted Secret: the new keys in a new timestamped directory, then
/// `..data` swapped to it in one step (a new link renamed over the old).
fn kubelet_update(base: &Path, stamp: &str, keys: &[(&str, &str)]) {
    let data = base.join(format!("..{stamp}"));
    std::fs::create_dir_all(&data).unwrap();
    for (k, v) in keys {
        std::fs::write(data.join(k), v).unwrap();
    }
    let tmp = base.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, base.join("..data")).unwrap();
}

/// The running `ossmount fluid`; dropping it SIGTERMs, kills and detaches what is left.
struct Fluid {
    child: Option<Child>,
    targets: Vec<PathBuf>,
    cache: PathBuf,
    log: PathBuf,
}

impl Fluid {
    fn start(config: &Path, cache: &Path, targets: Vec<PathBuf>) -> Fluid {
        let log = config.with_extension("log");
        let child = Command::new(bin())
            .args(["fluid", "--config"])
            .arg(config)
            // The environment of a fuse container: no keys of its own.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut f = Fluid {
            child: Some(child),
            targets,
            cache: cache.to_path_buf(),
            log,
        };
        let child = f.child.as_mut().unwrap();
        let targets = f.targets.clone();
        let up = wait_until(Duration::from_secs(60), || {
            targets.iter().all(|t| is_mounted(t)) || child.try_wait().unwrap().is_some()
        });
        assert!(
            up && f.targets.iter().all(|t| is_mounted(t)),
            "ossmount fluid did not mount {:?}: {}",
            f.targets,
            f.log_text()
        );
        f
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.cache.join("ossmount.log")).unwrap_or_default()
    }

    /// SIGTERM, as kubelet stops the fuse container: the exit status, within a bound.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        wait_within(
            &mut child,
            Duration::from_secs(60),
            "ossmount fluid after SIGTERM",
        )
    }
}

impl Drop for Fluid {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in &self.targets {
            if is_mounted(t) {
                force_unmount(t);
            }
        }
        // No node left behind once its mounts are gone.
        let done = wait_until(Duration::from_secs(10), || {
            !ossmount::cache::lock_is_held(&self.cache)
        });
        if !done {
            if let Some(pid) = std::fs::read_to_string(self.cache.join("lock"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: signalling a process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Every regular file under `dir` (recursively) that holds one of `secrets`.
fn files_holding(dir: &Path, secrets: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                todo.push(e.path());
            } else if kind.is_file() {
                seen += 1;
                let bytes = std::fs::read(e.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                if secrets.iter().any(|s| text.contains(s)) {
                    found.push(e.path());
                }
            }
        }
    }
    assert!(seen > 0, "no files under {} to look at", dir.display());
    found
}

fn read_all(path: PathBuf) -> impl std::future::Future<Output = Vec<u8>> {
    fs_op(Duration::from_secs(60), move || {
        std::fs::read(path).unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluid_mounts_its_dataset_at_target_path_as_fuse_ossmount_and_ends_on_sigterm() {
    require_fuse();
    let s = Server::start().await;
    let data = ossmount::sample::bytes(7, 3 << 20);
    s.put("train/a.bin", &data);
    s.put("train/sub/b.txt", b"hello from fluid");
    s.put("other/c.txt", b"not in the dataset");
    let base = s.scratch.path();
    let secrets = fluid_secret(
        &base.join("secrets"),
        "oss-keys",
        &[
            ("akId", &format!("{AK}\n")),
            ("akSecret", &format!("{SK}\n")),
        ],
    );
    // Fluid's own layout: <mount root>/<namespace>/<runtime>/thin-fuse, its parent made by
    // Fluid; the mount point itself is the fuse program's to create.
    let target = base.join("runtime-mnt/thin/default/train/thin-fuse");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let cache = base.join("cache");
    let config = serde_json::json!({
        "mounts": [{
            "mountPoint": format!("oss://{BUCKET}/train/"),
            "name": "train",
            "options": {
                "url": s.emu.endpoint(),
                "region": "cn-hangzhou",
                "akId": secrets.join("akId"),
                "akSecret": secrets.join("akSecret"),
            },
        }],
        "targetPath": target,
        "runtimeOptions": {"cache-dir": cache, "metadata-ttl": "5s"},
        "accessModes": ["ReadOnlyMany"],
    });
    let config_path = base.join("config.json");
    // One line, as Fluid writes it.
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    let mut fluid = Fluid::start(&config_path, &cache, vec![target.clone()]);
    assert_eq!(
        mountinfo_fstype(&target).as_deref(),
        Some("fuse.ossmount"),
        "Fluid's check_mount.sh greps mountinfo for this type"
    );
    assert!(
        read_all(target.join("a.bin")).await == data,
        "a.bin differs"
    );
    assert_eq!(
        read_all(target.join("sub/b.txt")).await,
        b"hello from fluid"
    );
    let listed = fs_op(Duration::from_secs(30), {
        let target = target.clone();
        move || {
            let mut names: Vec<String> = std::fs::read_dir(target)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    })
    .await;
    assert_eq!(listed, ["a.bin", "sub"], "the prefix, and only it");

    let status = fluid.terminate();
    assert!(status.success(), "exit {status:?}: {}", fluid.log_text());
    assert!(!is_mounted(&target), "still mounted after SIGTERM");
    let log = fluid.log_text();
    assert!(!log.contains(SK), "the secret reached the log: {log}");
    let holding = files_holding(&cache, &[SK]);
    assert!(holding.is_empty(), "the secret in cache files: {holding:?}");
    assert!(
        log.contains("the credential files") && log.contains("akId"),
        "the log names where the keys came from: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluid_mounts_several_prefixes_under_target_path_by_name() {
    require_fuse();
    let s = Server::start().await;
    s.put("a/one.txt", b"first prefix");
    s.put("b/two.txt", b"second prefix");
    let base = s.scratch.path();
    // Fluid's secret config storage: the values themselves (never printed).
    let target = base.join("thin-fuse");
    let cache = base.join("cache");
    let mount = |name: &str, prefix: &str| {
        serde_json::json!({
            "mountPoint": format!("oss://{BUCKET}/{prefix}"),
            "name": name,
            "options": {"url": s.emu.endpoint(), "region": "cn-hangzhou", "akId": AK, "akSecret": SK},
        })
    };
    let config = serde_json::json!({
        "mounts": [mount("alpha", "a/"), mount("beta", "b")],
        "targetPath": target,
        "runtimeOptions": {"cache-dir": cache},
    });
    let config_path = base.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    // --dry-run says what it would do, and mounts nothing.
    let (st, out) = run_cli(
        &[
            "fluid",
            "--dry-run",
            "--config",
            config_path.to_str().unwrap(),
        ],
        vec![],
    )
    .await;
    assert!(st.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{} oss://{BUCKET}/b/",
            target.join("beta").display()
        )),
        "{out}"
    );
    assert!(
        !out.contains(SK) && !is_mounted(&target.join("alpha")),
        "{out}"
    );

    let (alpha, beta) = (target.join("alpha"), target.join("beta"));
    let mut fluid = Fluid::start(&config_path, &cache, vec![alpha.clone(), beta.clone()]);
    for t in [&alpha, &beta] {
        assert_eq!(mountinfo_fstype(t).as_deref(), Some("fuse.ossmount"));
    }
    assert_eq!(read_all(alpha.join("one.txt")).await, b"first prefix");
    assert_eq!(read_all(beta.join("two.txt")).await, b"second prefix");
    // One node serves both (one cache per fuse pod).
    let status = status_json(&cache);
    assert_eq!(
        status["mounted"]["mounts"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    let st = fluid.terminate();
    assert!(st.success(), "exit {st:?}: {}", fluid.log_text());
    assert!(!is_mounted(&alpha) && !is_mounted(&beta));
    assert!(!fluid.log_text().contains(SK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_fluid_config_is_refused_by_name_and_mounts_nothing() {
    let s = Server::start().await;
    let base = s.scratch.path();
    let target = base.join("thin-fuse");
    let config = serde_json::json!({
        "mounts": [{"mountPoint": format!("oss://{BUCKET}/"), "name": "x",
                    "options": {"url": s.emu.endpoint(), "cache-sise": "1GiB"}}],
        "targetPath": target,
    });
    let config_path = base.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let (st, out) = run_cli(
        &["fluid", "--config", config_path.to_str().unwrap()],
        vec![],
    )
    .await;
    assert!(!st.success());
    assert!(out.contains("unknown option \"cache-sise\""), "{out}");
    assert!(!target.exists(), "nothing made: {out}");
    let (st, out) = run_cli(&["fluid", "--config", "/nonexistent/config.json"], vec![]).await;
    assert!(
        !st.success() && out.contains("cannot read the Fluid config"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_kubelet_rotates_reaches_the_running_fluid_mount() {
    require_fuse();
    let s = Server::start().await;
    s.put("train/early.txt", b"read with the first keys");
    let base = s.scratch.path();
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    let keys = s.emu.temporary_keys();
    keys.issue(
        "STS.first",
        "first-secret-DO-NOT-PRINT",
        "first-token-DO-NOT-PRINT",
        expires,
    );
    let secrets = fluid_secret(
        &base.join("secrets"),
        "oss-sts",
        &[
            ("akId", "STS.first"),
            ("akSecret", "first-secret-DO-NOT-PRINT"),
            ("stsToken", "first-token-DO-NOT-PRINT"),
        ],
    );
    let target = base.join("thin-fuse");
    let cache = base.join("cache");
    let config = serde_json::json!({
        "mounts": [{
            "mountPoint": format!("oss://{BUCKET}/train/"),
            "name": "train",
            "options": {
                "url": s.emu.endpoint(), "region": "cn-hangzhou",
                "akId": secrets.join("akId"), "akSecret": secrets.join("akSecret"),
                "stsToken": secrets.join("stsToken"),
            },
        }],
        "targetPath": target,
        "runtimeOptions": {"cache-dir": cache, "metadata-ttl": "1s"},
    });
    let config_path = base.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut fluid = Fluid::start(&config_path, &cache, vec![target.clone()]);
    assert_eq!(
        read_all(target.join("early.txt")).await,
        b"read with the first keys"
    );

    // The Secret is updated: kubelet swaps the files, the old keys are revoked at once.
    keys.issue(
        "STS.second",
        "second-secret-DO-NOT-PRINT",
        "second-token-DO-NOT-PRINT",
        expires,
    );
    kubelet_update(
        &secrets,
        "2026_12_04_01_00_00.000000002",
        &[
            ("akId", "STS.second"),
            ("akSecret", "second-secret-DO-NOT-PRINT"),
            ("stsToken", "second-token-DO-NOT-PRINT"),
        ],
    );
    assert!(keys.revoke("STS.first"));
    s.put("train/late.txt", b"read with the second keys");
    // Past the metadata TTL: the listing that finds the new file is signed anew.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = fs_op(Duration::from_secs(60), {
        let p = target.join("late.txt");
        move || std::fs::read(p)
    })
    .await
    .unwrap_or_else(|e| panic!("read after the rotation failed: {e}: {}", fluid.log_text()));
    assert_eq!(late, b"read with the second keys");

    let st = fluid.terminate();
    assert!(st.success(), "exit {st:?}: {}", fluid.log_text());
    let log = fluid.log_text();
    assert!(
        log.contains("credential files changed")
            && log.contains("STS.***")
            && !log.contains("STS.second")
            && !log.contains("STS.first"),
        "{log}"
    );
    for secret in [
        "first-secret",
        "first-token",
        "second-secret",
        "second-token",
    ] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
    // Nor any file the node wrote in the cache directory (its log, status, principals,
    // entries, checkpoints).
    let holding = files_holding(
        &cache,
        &[
            "first-secret",
            "first-token",
            "second-secret",
            "second-token",
        ],
    );
    assert!(holding.is_empty(), "secrets in cache files: {holding:?}");
}

/// Kubelet sends one SIGTERM and, after the grace period, SIGKILL: a mount an application
/// still holds a file of must not wait for a second signal. It is detached after a short
/// wait, the command exits 0, mountinfo no longer lists it, and the open file still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_detaches_a_busy_fluid_mount_and_exits_0_with_the_open_file_still_reading() {
    require_fuse();
    let s = Server::start().await;
    let data = ossmount::sample::bytes(11, 1 << 20);
    s.put("busy/held.bin", &data);
    let base = s.scratch.path();
    let target = base.join("thin-fuse");
    let cache = base.join("cache");
    let config = serde_json::json!({
        "mounts": [{
            "mountPoint": format!("oss://{BUCKET}/busy/"),
            "name": "busy",
            "options": {"url": s.emu.endpoint(), "region": "cn-hangzhou", "akId": AK, "akSecret": SK},
        }],
        "targetPath": target,
        "runtimeOptions": {"cache-dir": cache},
    });
    let config_path = base.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut fluid = Fluid::start(&config_path, &cache, vec![target.clone()]);
    let held = fs_op(Duration::from_secs(30), {
        let p = target.join("held.bin");
        move || std::fs::File::open(p).unwrap()
    })
    .await;

    let started = std::time::Instant::now();
    let status = fluid.terminate();
    let took = started.elapsed();
    assert!(status.success(), "exit {status:?}: {}", fluid.log_text());
    assert!(
        took < Duration::from_secs(15),
        "SIGTERM took {took:?} to end a busy mount"
    );
    assert_eq!(
        mountinfo_fstype(&target),
        None,
        "the busy mount is still in mountinfo: {}",
        fluid.log_text()
    );
    let read = fs_op(Duration::from_secs(30), move || {
        use std::io::Read;
        let mut held = held;
        let mut got = Vec::new();
        held.read_to_end(&mut got).map(|_| got)
    })
    .await
    .unwrap_or_else(|e| panic!("the open file of a detached mount failed: {e}"));
    assert!(read == data, "the open file read other bytes");
}

/// Fluid writes `mounts: []` for a Dataset mounted dynamically: the fuse container must
/// stay up (not crash-loop), mount nothing, and end with exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_no_mounts_waits_for_sigterm_and_exits_0() {
    let s = Server::start().await;
    let base = s.scratch.path();
    let target = base.join("thin-fuse");
    let config_path = base.join("config.json");
    let config = serde_json::json!({"mounts": [], "targetPath": target});
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let log = base.join("fluid.log");
    let mut child = Command::new(bin())
        .args(["fluid", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let waiting = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("no mounts")
    });
    let early = child.try_wait().unwrap();
    if early.is_some() || !waiting {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        early.is_none(),
        "it ended without SIGTERM: {early:?}: {text}"
    );
    assert!(waiting, "it never said it waits: {text}");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_within(
        &mut child,
        Duration::from_secs(20),
        "ossmount fluid, no mounts",
    );
    assert!(status.success(), "exit {status:?}");
    assert!(!target.exists(), "nothing mounted or made");
}

/// An S3 Dataset (`s3://` mountPoint) mounts like an OSS one, its keys from Secret files
/// Fluid mounted (used as AWS keys, re-read when kubelet rotates them): reads byte-exact from
/// s3s-fs, SIGTERM ends it with exit 0, and the secret reaches neither the log nor the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_dataset_mounts_with_keys_from_its_secret_files() {
    require_fuse();
    let s3 = s3_server::S3Server::start().await;
    let data = ossmount::sample::bytes(8, (2 << 20) + 17);
    s3.put("ds/a.bin", &data);
    let base = s3.scratch.path();
    let secrets = fluid_secret(
        &base.join("secrets"),
        "s3-keys",
        &[
            ("akId", &format!("{}\n", s3_server::AK)),
            ("akSecret", &format!("{}\n", s3_server::SK)),
        ],
    );
    let target = base.join("runtime-mnt/thin/default/ds/thin-fuse");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let cache = base.join("cache");
    let config = serde_json::json!({
        "mounts": [{
            "mountPoint": format!("s3://{}/ds", s3_server::BUCKET),
            "name": "ds",
            "options": {
                "url": s3.endpoint,
                "region": "us-east-1",
                "akId": secrets.join("akId"),
                "akSecret": secrets.join("akSecret"),
            },
        }],
        "targetPath": target,
        "runtimeOptions": {"cache-dir": cache},
        "accessModes": ["ReadOnlyMany"],
    });
    let config_path = base.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    let mut fluid = Fluid::start(&config_path, &cache, vec![target.clone()]);
    assert!(
        read_all(target.join("a.bin")).await == data,
        "a.bin differs"
    );
    let status = fluid.terminate();
    assert!(status.success(), "exit {status:?}: {}", fluid.log_text());
    assert!(!is_mounted(&target));
    let log = fluid.log_text();
    assert!(
        !log.contains(s3_server::SK),
        "the secret reached the log: {log}"
    );
    assert!(files_holding(&cache, &[s3_server::SK]).is_empty());
}
