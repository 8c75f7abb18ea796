//! The resumable download engine and `ossmount download`: real processes killed with SIGKILL
//! and resumed, changed objects, corrupt checkpoints, faults and a server that goes away.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ossmount::emulator::{Emulator, EmulatorConfig, Faults};
use ossmount::hydrate::download::{resumable_download, DownloadError, DownloadRequest, OnChange};
use ossmount::hydrate::{Checkpoint, HydrateError};
use ossmount::store::ObjectStore;

const MIB: u64 = 1 << 20;

fn spawn_download(s: &Server, key: &str, local: &Path, part_size: &str, threads: &str) -> Child {
    Command::new(bin())
        .args([
            "--max-attempts",
            "2",
            "download",
            &format!("oss://{BUCKET}/{key}"),
        ])
        .arg(local)
        .args(["--part-size", part_size, "--threads", threads])
        .envs(s.env())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Any library download here ends well within this, pass or fail; a hung one fails its test.
const DL: Duration = Duration::from_secs(120);

fn finish(child: Child) -> (bool, String) {
    let out = output_within(child, Duration::from_secs(300), "ossmount download");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn dcp(local: &Path) -> PathBuf {
    PathBuf::from(format!("{}.dcp", local.display()))
}

fn tmp(local: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp", local.display()))
}

fn parts_present(local: &Path) -> usize {
    Checkpoint::load(&dcp(local))
        .map(|c| c.parts_present())
        .unwrap_or(0)
}

/// Every part the checkpoint calls present holds exactly the object's bytes in the temp file:
/// nothing is recorded before it is durable.
fn assert_recorded_parts_are_right(local: &Path, seed: u64) -> Checkpoint {
    let c = Checkpoint::load(&dcp(local)).expect("a valid checkpoint after the kill");
    let data = std::fs::read(tmp(local)).unwrap();
    let layout = c.layout();
    for p in 0..layout.count() {
        if c.is_present(p) {
            let r = layout.range(p);
            let mut want = vec![0u8; (r.end - r.start) as usize];
            ossmount::sample::fill(seed, r.start, &mut want);
            assert!(
                data[r.start as usize..r.end as usize] == want[..],
                "part {p} recorded but wrong"
            );
            assert_eq!(
                c.part_crc64[p],
                ossmount::crc64::checksum(&want),
                "part {p} CRC"
            );
        }
    }
    c
}

/// GETs in the request log since `from`, as part indexes for `part_size`.
fn parts_requested(emu: &Emulator, from: usize, key: &str, part_size: u64) -> Vec<usize> {
    emu.request_log()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.key == key && r.status == 206)
        .filter_map(|r| r.range.map(|(s, _)| (s / part_size) as usize))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_then_resume_refetches_only_missing_parts() {
    let s = Server::start().await;
    let size = 40 * MIB + 12345;
    let seed = 40;
    s.put_sample("big.bin", seed, size);
    let expected_sha = sha256_file(&s.object_path("big.bin"));
    // 4 MiB/s per connection: three threads take a few seconds, room to kill mid-way.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 4 * MIB);
    let out = s.root().join("out");
    std::fs::create_dir(&out).unwrap();
    let local = out.join("big.bin");
    let threads = 3;
    let total_parts = size.div_ceil(MIB) as usize;
    let mut previous: Option<Checkpoint> = None;
    for kill_at in [3, total_parts * 2 / 5, total_parts * 4 / 5] {
        let log_from = s.emu.request_log().len();
        let mut child = spawn_download(&s, "big.bin", &local, "1MiB", &threads.to_string());
        let reached = wait_until(Duration::from_secs(60), || parts_present(&local) >= kill_at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(reached, "download never reached {kill_at} parts");
        let c = assert_recorded_parts_are_right(&local, seed);
        // Parts recorded by the previous run were not requested again by this one.
        let requested = parts_requested(&s.emu, log_from, "big.bin", MIB);
        if let Some(prev) = &previous {
            let refetched: Vec<_> = requested.iter().filter(|&&p| prev.is_present(p)).collect();
            assert!(
                refetched.is_empty(),
                "recorded parts fetched again: {refetched:?}"
            );
            assert!(c.parts_present() > prev.parts_present());
        }
        previous = Some(c);
        assert!(!local.exists(), "the target appears only when complete");
    }
    // Resume to the end: only the missing parts are fetched.
    let before = Checkpoint::load(&dcp(&local)).unwrap();
    let log_from = s.emu.request_log().len();
    let bytes_before = s.emu.object_counters(BUCKET, "big.bin").body_bytes;
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    let (ok, text) = tokio::task::spawn_blocking({
        let child = spawn_download(&s, "big.bin", &local, "1MiB", &threads.to_string());
        move || finish(child)
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert_eq!(sha256_file(&local), expected_sha);
    assert!(!dcp(&local).exists(), "checkpoint deleted after success");
    assert!(!tmp(&local).exists());
    let requested = parts_requested(&s.emu, log_from, "big.bin", MIB);
    for p in &requested {
        assert!(
            !before.is_present(*p),
            "part {p} was present but fetched again"
        );
    }
    assert_eq!(requested.len(), total_parts - before.parts_present());
    let served = s.emu.object_counters(BUCKET, "big.bin").body_bytes - bytes_before;
    assert_eq!(served, size - before.bytes_present());
    // Over all runs, at most `threads` parts per kill were transferred twice.
    let total_served = s.emu.object_counters(BUCKET, "big.bin").body_bytes;
    assert!(
        total_served <= size + 3 * threads as u64 * MIB,
        "served {total_served} for {size}"
    );
    assert!(text.contains("resuming from"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_between_runs_gives_the_new_content_only() {
    let s = Server::start().await;
    s.put_sample("obj.bin", 1, 12 * MIB);
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 2 * MIB);
    let local = s.root().join("obj.bin");
    let mut child = spawn_download(&s, "obj.bin", &local, "1MiB", "2");
    let reached = wait_until(Duration::from_secs(30), || parts_present(&local) >= 3);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reached);
    s.put_sample("obj.bin", 2, 12 * MIB + 7);
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    let (ok, text) = tokio::task::spawn_blocking({
        let child = spawn_download(&s, "obj.bin", &local, "1MiB", "2");
        move || finish(child)
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("discarding checkpoint") && text.contains("changed"),
        "{text}"
    );
    assert_eq!(sha256_file(&local), sha256_file(&s.object_path("obj.bin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_replaced_mid_download_restarts_or_fails_as_asked() {
    let s = Server::start().await;
    s.put_sample("m.bin", 1, 8 * MIB);
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 2 * MIB);
    let store: Arc<dyn ObjectStore> = Arc::new(s.client());
    for on_change in [OnChange::Restart, OnChange::Fail] {
        s.put_sample("m.bin", 10, 8 * MIB);
        let local = s.root().join(format!("m-{on_change:?}.bin"));
        let mut req = DownloadRequest::new(BUCKET, "m.bin", &local);
        req.part_size = MIB;
        req.threads = 2;
        req.on_change = on_change;
        let replaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let root = s.root().to_path_buf();
        let flag = replaced.clone();
        let download = resumable_download(store.clone(), &req, move |p| {
            if p.parts_present >= 2 && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                ossmount::emulator::put_object_file(
                    &root,
                    BUCKET,
                    "m.bin",
                    &ossmount::sample::bytes(11, (8 * MIB) as usize),
                )
                .unwrap();
            }
        });
        let result = within(DL, "the download of a replaced object", download).await;
        assert!(replaced.load(std::sync::atomic::Ordering::SeqCst));
        match on_change {
            OnChange::Restart => {
                let r = result.unwrap();
                assert_eq!(r.restarts, 1);
                assert_eq!(
                    std::fs::read(&local).unwrap(),
                    ossmount::sample::bytes(11, (8 * MIB) as usize)
                );
            }
            OnChange::Fail => {
                let e = result.unwrap_err();
                assert!(
                    matches!(&e, DownloadError::Hydrate(h) if matches!(**h, HydrateError::ObjectChanged { .. })),
                    "{e}"
                );
                assert!(e.to_string().contains("changed on the server"), "{e}");
                assert!(!local.exists() && !tmp(&local).exists() && !dcp(&local).exists());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_checkpoints_are_discarded_safely() {
    let s = Server::start().await;
    s.put_sample("c.bin", 5, 5 * MIB + 1);
    s.put_sample("other.bin", 6, 5 * MIB + 1);
    let store: Arc<dyn ObjectStore> = Arc::new(s.client());
    // A real, partial checkpoint of another object, to plant as a foreign one.
    let other_local = s.root().join("other.out");
    let mut req = DownloadRequest::new(BUCKET, "other.bin", &other_local);
    req.part_size = MIB;
    let meta = s.client().head_object(BUCKET, "other.bin").await.unwrap();
    let other_id = ossmount::hydrate::ObjectIdentity::from_meta(BUCKET, "other.bin", &meta);
    let local = s.root().join("c.out");
    let mut foreign = Checkpoint::new(&store.location(), &other_id, MIB, &tmp(&local));
    foreign.present.insert_range(..);
    let valid = Checkpoint::new(
        &store.location(),
        &ossmount::hydrate::ObjectIdentity::from_meta(
            BUCKET,
            "c.bin",
            &s.client().head_object(BUCKET, "c.bin").await.unwrap(),
        ),
        MIB,
        &tmp(&local),
    );
    let mut wrong_sum = String::from_utf8(valid.to_json()).unwrap();
    wrong_sum = wrong_sum.replace("\"000000\"", "\"111111\"");
    let full = valid.to_json();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x01 not json at all".to_vec()),
        ("truncated", full[..full.len() / 2].to_vec()),
        ("wrong checksum", wrong_sum.into_bytes()),
        ("another object's", foreign.to_json()),
    ];
    for (name, bytes) in cases {
        // A temp file full of wrong bytes: if the checkpoint were trusted, they would survive.
        std::fs::write(tmp(&local), vec![0xAA; (5 * MIB + 1) as usize]).unwrap();
        std::fs::write(dcp(&local), &bytes).unwrap();
        let mut req = DownloadRequest::new(BUCKET, "c.bin", &local);
        req.part_size = MIB;
        let r = within(
            DL,
            "a download",
            resumable_download(store.clone(), &req, |_| {}),
        )
        .await
        .unwrap();
        assert_eq!(r.bytes_resumed, 0, "{name}: nothing may be resumed");
        assert_eq!(
            sha256_file(&local),
            sha256_file(&s.object_path("c.bin")),
            "{name}"
        );
        assert!(!dcp(&local).exists(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_byte_exact_under_injected_faults() {
    let s = Server::start().await;
    s.put_sample("f.bin", 9, 20 * MIB + 3);
    s.emu.set_faults(Faults {
        error_rate: 0.2,
        reset_rate: 0.15,
        truncate_rate: 0.15,
        ..Faults::default()
    });
    let local = s.root().join("f.out");
    let mut req = DownloadRequest::new(BUCKET, "f.bin", &local);
    req.part_size = MIB;
    req.threads = 4;
    let r = within(
        DL,
        "a download",
        resumable_download(Arc::new(s.client()), &req, |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(r.size, 20 * MIB + 3);
    assert_eq!(sha256_file(&local), sha256_file(&s.object_path("f.bin")));
    let t = s.emu.totals();
    assert!(t.injected_errors > 0 && t.injected_cuts > 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_fails_clearly_and_a_later_run_resumes() {
    let s = Server::start().await;
    let size = 16 * MIB;
    s.put_sample("d.bin", 3, size);
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 2 * MIB);
    let local = s.root().join("d.out");
    let child = spawn_download(&s, "d.bin", &local, "1MiB", "2");
    assert!(wait_until(Duration::from_secs(30), || parts_present(
        &local
    ) >= 4));
    let addr = s.emu.addr();
    let root = s.root().to_path_buf();
    let Server { emu, dir, scratch } = s;
    emu.shutdown().await;
    let (ok, text) = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    assert!(!ok, "the download cannot succeed with the server gone");
    assert!(
        text.contains("network error") || text.contains("failed after"),
        "{text}"
    );
    assert!(
        text.contains(&addr.to_string()),
        "names the endpoint: {text}"
    );
    let kept = Checkpoint::load(&dcp(&local)).expect("checkpoint kept for the next run");
    assert!(kept.parts_present() >= 4);

    // Same address, same data: the next run fetches only what is missing.
    let emu = Emulator::start(EmulatorConfig::new(&root, AK, SK), &addr.to_string())
        .await
        .unwrap();
    let s = Server { emu, dir, scratch };
    let (ok, text) = tokio::task::spawn_blocking({
        let child = spawn_download(&s, "d.bin", &local, "1MiB", "2");
        move || finish(child)
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert_eq!(sha256_file(&local), sha256_file(&s.object_path("d.bin")));
    assert_eq!(
        s.emu.object_counters(BUCKET, "d.bin").body_bytes,
        size - kept.bytes_present()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_before_any_request() {
    let s = Server::start().await;
    s.put("x", b"x");
    let dir = s.root().to_path_buf();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--part-size".into(), "0".into()],
            "part size 0 is out of range",
        ),
        (vec!["--part-size".into(), "6GiB".into()], "out of range"),
        (vec!["--threads".into(), "0".into()], "thread count 0"),
        (
            vec!["--threads".into(), "lots".into()],
            "a number (e.g. 3) or auto",
        ),
        (
            vec![
                "--threads".into(),
                "auto".into(),
                "--max-connections".into(),
                "2".into(),
            ],
            "--max-connections 2 is below --threads 3",
        ),
        (
            vec!["--part-size".into(), "8 parsecs".into()],
            "unknown unit",
        ),
    ];
    let target = dir.join("x.out").display().to_string();
    let before = s.emu.request_log().len();
    for (args, want) in cases {
        let out = Command::new(bin())
            .args(["download", "oss://test-bucket/x", &target])
            .args(&args)
            .envs(s.env())
            .output_within(Duration::from_secs(60), "ossmount download (refused)")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(text.contains(want), "{args:?}: {text}");
    }
    for (target, want) in [
        (
            dir.join("missing-dir/x.out").display().to_string(),
            "does not exist: create it first",
        ),
        (dir.display().to_string(), "is a directory"),
    ] {
        let out = Command::new(bin())
            .args(["download", "oss://test-bucket/x", &target])
            .envs(s.env())
            .output_within(Duration::from_secs(60), "ossmount download (refused)")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(text.contains(want), "{text}");
    }
    assert_eq!(s.emu.request_log().len(), before, "no request was sent");
}

/// A store that flips one byte of every body: the combined CRC-64 must catch it.
struct Corrupting(ossmount::oss::OssClient);

impl ObjectStore for Corrupting {
    fn head<'a>(
        &'a self,
        b: &'a str,
        k: &'a str,
    ) -> ossmount::store::BoxFut<'a, Result<ossmount::store::ObjectMeta, ossmount::store::StoreError>>
    {
        self.0.head(b, k)
    }
    fn get_range(
        &self,
        b: &str,
        k: &str,
        r: std::ops::Range<u64>,
        m: Option<String>,
    ) -> ossmount::store::ByteStream {
        use futures_util::StreamExt;
        let mut first = true;
        Box::pin(self.0.get_range(b, k, r, m).map(move |c| {
            c.map(|bytes| {
                if std::mem::take(&mut first) && !bytes.is_empty() {
                    let mut v = bytes.to_vec();
                    v[0] ^= 0xFF;
                    bytes::Bytes::from(v)
                } else {
                    bytes
                }
            })
        }))
    }
    fn list_page<'a>(
        &'a self,
        b: &'a str,
        r: ossmount::store::ListRequest,
    ) -> ossmount::store::BoxFut<'a, Result<ossmount::store::ListPage, ossmount::store::StoreError>>
    {
        self.0.list_page(b, r)
    }
    fn location(&self) -> String {
        self.0.location()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crc_mismatch_keeps_the_target_untouched() {
    let s = Server::start().await;
    s.put_sample("crc.bin", 4, 3 * MIB);
    let local = s.root().join("crc.out");
    std::fs::write(&local, b"previous content").unwrap();
    let mut req = DownloadRequest::new(BUCKET, "crc.bin", &local);
    req.part_size = MIB;
    let e = within(
        DL,
        "a download",
        resumable_download(Arc::new(Corrupting(s.client())), &req, |_| {}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("CRC-64 mismatch"), "{e}");
    assert_eq!(std::fs::read(&local).unwrap(), b"previous content");
    assert!(!tmp(&local).exists() && !dcp(&local).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_checkpoint_nothing_is_left_behind_and_empty_objects_work() {
    let s = Server::start().await;
    s.put("empty", b"");
    s.put("small", b"tiny object");
    let store: Arc<dyn ObjectStore> = Arc::new(s.client());
    for key in ["empty", "small"] {
        let local = s.root().join(format!("{key}.out"));
        let mut req = DownloadRequest::new(BUCKET, key, &local);
        req.checkpoint = None;
        let r = within(
            DL,
            "a download",
            resumable_download(store.clone(), &req, |_| {}),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(&local).unwrap(),
            std::fs::read(s.object_path(key)).unwrap()
        );
        assert_eq!(r.bytes_resumed, 0);
        assert!(!tmp(&local).exists() && !dcp(&local).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_auto_adds_connections_while_throughput_rises() {
    let s = Server::start().await;
    let size = 40 * MIB;
    s.put_sample("auto.bin", 31, size);
    // 4 MiB/s per connection: three parts in flight cannot fill the link, more can.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 4 * MIB);
    let mut peaks = Vec::new();
    for threads in ["3", "auto"] {
        s.emu.reset_counters();
        let local = s.root().join(format!("auto-{threads}.out"));
        let (ok, out) = finish(spawn_download(&s, "auto.bin", &local, "1MiB", threads));
        assert!(ok, "{threads}: {out}");
        assert!(
            std::fs::read(&local).unwrap() == ossmount::sample::bytes(31, size as usize),
            "{threads}: byte-exact"
        );
        assert!(
            !dcp(&local).exists(),
            "the checkpoint is gone after success"
        );
        peaks.push(
            s.emu
                .object_counters(BUCKET, "auto.bin")
                .peak_concurrent_bodies,
        );
    }
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    eprintln!(
        "GETs at once: --threads 3 {}, --threads auto {}",
        peaks[0], peaks[1]
    );
    // Fixed: never more than ParallelThreadCount. Auto: grew past it (the first step is
    // taken on the first tick with parts waiting for a connection).
    assert!(peaks[0] <= 3, "--threads 3 had {} GETs at once", peaks[0]);
    assert!(
        peaks[1] >= 4,
        "--threads auto stayed at {} GETs at once",
        peaks[1]
    );
}
