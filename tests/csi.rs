//! The CSI node plugin driven as kubelet drives it: the real `ossmount csi` binary on a
//! unix socket, a tonic gRPC client, the emulator (and s3s-fs for an S3 volume), and the real
//! kernel FUSE (root and /dev/fuse required). Every mount, the plugin and the node server it started are taken
//! down by a guard, also when the test fails; every wait is bounded.

mod common;
#[path = "common/s3.rs"]
mod s3_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use common::*;
use ossmount::csi::proto::identity_client::IdentityClient;
use ossmount::csi::proto::node_client::NodeClient;
use ossmount::csi::proto::{self, volume_capability};
use tonic::transport::Channel;

const NODE_ID: &str = "node-7";
const WRONG_SECRET: &str = "wrong-secret-NEVER-LOGGED-5c4b3a";

/// The plugin process, the targets it may have mounted and the cache its node serves:
/// dropping it unmounts every target, ends the plugin, and ends the node server.
struct Plugin {
    child: Option<Child>,
    socket: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    targets: Vec<PathBuf>,
}

impl Plugin {
    fn start(socket: &Path, cache: &Path, log: &Path) -> Plugin {
        let mut p = Plugin {
            child: None,
            socket: socket.to_path_buf(),
            cache: cache.to_path_buf(),
            log: log.to_path_buf(),
            targets: Vec::new(),
        };
        p.spawn();
        p
    }

    /// Starts `ossmount csi` (appending to its log) and waits until its socket answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node-id", NODE_ID, "--log-level", "info", "--cache-dir"])
            .arg(&self.cache)
            // No credentials in the plugin's environment: volumes bring them as secrets.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.socket.clone();
        let up = wait_until(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(up, "the plugin did not listen: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM to the plugin: it must end with exit 0 and remove its socket.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("a running plugin");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let status = wait_within(
            &mut c,
            Duration::from_secs(15),
            "ossmount csi after SIGTERM",
        );
        assert!(status.success(), "{status}: {}", self.log_text());
        assert!(!self.socket.exists(), "the socket stays after SIGTERM");
    }

    fn node_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.cache.join("lock"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    async fn clients(&self) -> (IdentityClient<Channel>, NodeClient<Channel>) {
        let socket = self.socket.clone();
        let channel = within(
            Duration::from_secs(10),
            "a gRPC connection to the plugin",
            tonic::transport::Endpoint::from_static("http://[::]:50051").connect_with_connector(
                tower::service_fn(move |_: tonic::transport::Uri| {
                    let socket = socket.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }),
            ),
        )
        .await
        .unwrap();
        (
            IdentityClient::new(channel.clone()),
            NodeClient::new(channel),
        )
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        for t in &self.targets {
            while is_mounted(t) {
                force_unmount(t);
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The node ends after its last mount; one still holding the cache is ended.
        let ended = wait_until(Duration::from_secs(10), || {
            !ossmount::cache::lock_is_held(&self.cache)
        });
        if !ended {
            if let Some(pid) = self.node_pid() {
                // SAFETY: signalling a process by pid.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn volume(
    s: &Server,
    path: &str,
    secret: &str,
) -> (HashMap<String, String>, HashMap<String, String>) {
    let context = HashMap::from([
        ("bucket".to_string(), BUCKET.to_string()),
        ("path".to_string(), path.to_string()),
        ("url".to_string(), s.emu.endpoint()),
        ("region".to_string(), "cn-hangzhou".to_string()),
        (
            "otherOpts".to_string(),
            "-o allow_other -o umask=022 -o max_stat_cache_size=0".to_string(),
        ),
        (
            "csi.storage.k8s.io/pod.name".to_string(),
            "web-0".to_string(),
        ),
    ]);
    let secrets = HashMap::from([
        ("akId".to_string(), AK.to_string()),
        ("akSecret".to_string(), secret.to_string()),
    ]);
    (context, secrets)
}

fn publish_request(
    id: &str,
    target: &Path,
    (context, secrets): (HashMap<String, String>, HashMap<String, String>),
) -> proto::NodePublishVolumeRequest {
    proto::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(proto::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::MultiNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        secrets,
        ..Default::default()
    }
}

fn unpublish_request(id: &str, target: &Path) -> proto::NodeUnpublishVolumeRequest {
    proto::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

/// Publishes within a bound; returns the answer and how long it took.
async fn publish(
    node: &mut NodeClient<Channel>,
    req: proto::NodePublishVolumeRequest,
) -> (Result<(), tonic::Status>, Duration) {
    let started = Instant::now();
    let answer = within(
        Duration::from_secs(60),
        "NodePublishVolume",
        node.node_publish_volume(req),
    )
    .await;
    (answer.map(|_| ()), started.elapsed())
}

async fn unpublish(node: &mut NodeClient<Channel>, id: &str, target: &Path) {
    within(
        Duration::from_secs(30),
        "NodeUnpublishVolume",
        node.node_unpublish_volume(unpublish_request(id, target)),
    )
    .await
    .unwrap_or_else(|e| panic!("unpublish {}: {e}", target.display()));
}

fn ossmount_mounts_at(target: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|l| l.split(' ').nth(4) == target.to_str() && l.contains(" - fuse.ossmount "))
        .count()
}

async fn read(path: PathBuf) -> Vec<u8> {
    fs_op(Duration::from_secs(60), move || std::fs::read(&path))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_publishes_and_unpublishes_volumes_through_one_node_server() {
    require_fuse();
    let s = Server::start().await;
    const SIZE: u64 = 3 * MIB + 12_345;
    s.put_sample("pre/data.bin", 31, SIZE);
    let want = ossmount::sample::bytes(31, SIZE as usize);
    let scratch = s.scratch.path();
    let cache = scratch.join("cache");
    let pods = scratch.join("kubelet/pods");
    let target = |pod: &str| pods.join(pod).join("volumes/kubernetes.io~csi/pv/mount");
    let (a, b, c) = (target("a"), target("b"), target("c"));
    let mut plugin = Plugin::start(
        &scratch.join("plugin/csi.sock"),
        &cache,
        &scratch.join("plugin.log"),
    );
    plugin.targets = vec![a.clone(), b.clone(), c.clone()];
    let extra: Vec<PathBuf> = (0..3).map(|i| target(&format!("extra-{i}"))).collect();
    plugin.targets.extend(extra.iter().cloned());
    let (mut identity, mut node) = plugin.clients().await;

    // Identity and NodeGetInfo, as the registrar and kubelet ask.
    let info = identity
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "ossmount.csi.alibabacloud.com");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = identity.probe(proto::ProbeRequest {}).await.unwrap();
    assert_eq!(probe.into_inner().ready, Some(true));
    let caps = identity
        .get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.is_empty(), "node-only: {caps:?}");
    let got = node
        .node_get_info(proto::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.node_id, NODE_ID);
    let staged = node
        .node_stage_volume(proto::NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(staged.code(), tonic::Code::Unimplemented);

    // A `path: /pre/` volume, read through its target byte-exact (the target is created).
    let (res, first_publish) = publish(
        &mut node,
        publish_request("vol-a", &a, volume(&s, "/pre/", SK)),
    )
    .await;
    res.unwrap_or_else(|e| panic!("publish a: {e}\n{}", plugin.log_text()));
    assert_eq!(ossmount_mounts_at(&a), 1);
    assert!(
        read(a.join("data.bin")).await == want,
        "bytes differ through the prefix volume"
    );
    let fetched = s.emu.object_counters(BUCKET, "pre/data.bin").body_bytes;
    assert!(fetched >= SIZE, "fetched {fetched}");

    // A second volume of the same bucket (the whole bucket) on another target: the same
    // node server and cache, so the object read through it costs no GET byte.
    let node_pid = plugin.node_pid().expect("a node server holds the cache");
    let (res, second_publish) =
        publish(&mut node, publish_request("vol-b", &b, volume(&s, "/", SK))).await;
    res.unwrap_or_else(|e| panic!("publish b: {e}"));
    assert_eq!(
        plugin.node_pid(),
        Some(node_pid),
        "one node server per node"
    );
    assert!(read(b.join("pre/data.bin")).await == want);
    assert_eq!(
        s.emu.object_counters(BUCKET, "pre/data.bin").body_bytes,
        fetched,
        "the second volume fetched bytes the first had cached"
    );

    // Publishing again is idempotent: OK, still one mount.
    let (res, _) = publish(
        &mut node,
        publish_request("vol-a", &a, volume(&s, "/pre/", SK)),
    )
    .await;
    res.unwrap();
    assert_eq!(ossmount_mounts_at(&a), 1, "a second publish mounted again");
    // Another volume at a target that serves one: ALREADY_EXISTS.
    let (res, _) = publish(&mut node, publish_request("vol-b", &a, volume(&s, "/", SK))).await;
    assert_eq!(res.unwrap_err().code(), tonic::Code::AlreadyExists);

    // A volume without bucket: INVALID_ARGUMENT naming it; nothing mounted.
    let (mut ctx, secrets) = volume(&s, "/pre/", SK);
    ctx.remove("bucket");
    let (res, _) = publish(&mut node, publish_request("vol-c", &c, (ctx, secrets))).await;
    let e = res.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("bucket"), "{e}");
    // An ossfs option with no ossmount meaning: refused by name.
    let (mut ctx, secrets) = volume(&s, "/pre/", SK);
    ctx.insert(
        "otherOpts".into(),
        "-o allow_other -o use_cache=/tmp/x".into(),
    );
    let (res, _) = publish(&mut node, publish_request("vol-c", &c, (ctx, secrets))).await;
    let e = res.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("\"use_cache\""), "{e}");
    // A wrong secret: the service's error code, and nothing mounted.
    let (res, _) = publish(
        &mut node,
        publish_request("vol-c", &c, volume(&s, "/pre/", WRONG_SECRET)),
    )
    .await;
    let e = res.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
        ),
        "{e}"
    );
    assert!(e.message().contains("SignatureDoesNotMatch"), "{e}");
    assert!(!e.message().contains(WRONG_SECRET), "{e}");
    assert_eq!(ossmount_mounts_at(&c), 0);

    // Publish times: joining the running node server, a few times.
    let mut joins = vec![second_publish];
    for (i, t) in extra.iter().enumerate() {
        let (res, took) = publish(
            &mut node,
            publish_request(&format!("vol-x{i}"), t, volume(&s, "/pre/", SK)),
        )
        .await;
        res.unwrap();
        joins.push(took);
    }
    for (i, t) in extra.iter().enumerate() {
        unpublish(&mut node, &format!("vol-x{i}"), t).await;
    }
    eprintln!(
        "publish timings: first (starts the node server) {} ms; joining it, median of {} {} ms",
        first_publish.as_millis(),
        joins.len(),
        median(joins).as_millis()
    );

    // The plugin restarts (SIGTERM: exit 0, socket removed): the mounts stay, served by the
    // node server, and the new plugin unpublishes them.
    plugin.stop();
    assert!(
        read(a.join("data.bin")).await == want,
        "a mount went down with the plugin"
    );
    plugin.spawn();
    let (_, mut node) = plugin.clients().await;

    // Unpublish twice: both OK; the target is unmounted and removed.
    unpublish(&mut node, "vol-a", &a).await;
    assert_eq!(ossmount_mounts_at(&a), 0);
    assert!(!a.exists(), "kubelet expects the target removed");
    unpublish(&mut node, "vol-a", &a).await;
    // The other volume keeps serving.
    assert!(read(b.join("pre/data.bin")).await == want);
    assert_eq!(plugin.node_pid(), Some(node_pid));
    unpublish(&mut node, "vol-b", &b).await;
    assert_eq!(ossmount_mounts_at(&b), 0);
    // The node server ends after its last mount.
    let ended = wait_until(Duration::from_secs(20), || {
        !ossmount::cache::lock_is_held(&cache)
    });
    assert!(ended, "the node server outlived its last mount");
    plugin.stop();

    // The secrets appear in no log and no file of the cache directory.
    let mut files = vec![plugin.log.clone()];
    files_under(&cache, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("ossmount.log")),
        "{files:?}"
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for secret in [SK, WRONG_SECRET] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a secret",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn a_non_unix_endpoint_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out) = run_cli(
        &[
            "csi",
            "--endpoint",
            "tcp://127.0.0.1:10000",
            "--node-id",
            NODE_ID,
            "--cache-dir",
            dir.path().join("cache").to_str().unwrap(),
        ],
        vec![],
    )
    .await;
    assert!(!status.success());
    assert!(out.contains("unix:///csi/csi.sock"), "{out}");
}

/// An S3 volume (`store: s3`) publishes like an OSS one, its keys from the secret's AWS
/// names: read byte-exact through its target from s3s-fs (path-style, chosen for the IP
/// endpoint). A second volume of the same bucket with a wrong secret is refused with S3's
/// error code, never quoting the secret, and nothing is mounted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_volume_is_published_from_the_aws_keys_of_its_secret() {
    require_fuse();
    let s3 = s3_server::S3Server::start().await;
    let size = 5 * MIB + 3;
    let want = ossmount::sample::bytes(41, size as usize);
    s3.put("models/w.bin", &want);
    let scratch = s3.scratch.path();
    let target = |pod: &str| {
        scratch
            .join("kubelet/pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi/pv/mount")
    };
    let (a, b) = (target("a"), target("b"));
    let mut plugin = Plugin::start(
        &scratch.join("plugin/csi.sock"),
        &scratch.join("cache"),
        &scratch.join("plugin.log"),
    );
    plugin.targets = vec![a.clone(), b.clone()];
    let (_, mut node) = plugin.clients().await;
    let s3_volume = |secret: &str| {
        let context = [
            ("store", "s3"),
            ("bucket", s3_server::BUCKET),
            ("path", "/models/"),
            ("url", s3.endpoint.as_str()),
            ("region", "us-east-1"),
            ("otherOpts", "-o allow_other"),
        ];
        let secrets = [
            ("AWS_ACCESS_KEY_ID", s3_server::AK),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ];
        let own = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        (own(&context), own(&secrets))
    };

    let (res, _) = publish(
        &mut node,
        publish_request("s3-a", &a, s3_volume(s3_server::SK)),
    )
    .await;
    res.unwrap_or_else(|e| panic!("publish the S3 volume: {e}\n{}", plugin.log_text()));
    assert_eq!(ossmount_mounts_at(&a), 1);
    assert!(
        read(a.join("w.bin")).await == want,
        "bytes differ through the S3 volume"
    );
    assert!(
        s3.requests_since(0)
            .iter()
            .any(|r| r.range.is_some() && r.path == format!("/{}/models/w.bin", s3_server::BUCKET)),
        "read from the S3 server, path-style"
    );

    let (res, _) = publish(
        &mut node,
        publish_request("s3-b", &b, s3_volume(WRONG_SECRET)),
    )
    .await;
    let e = res.unwrap_err();
    assert!(e.message().contains("SignatureDoesNotMatch"), "{e}");
    assert!(!e.message().contains(WRONG_SECRET), "{e}");
    assert_eq!(ossmount_mounts_at(&b), 0);
    assert!(!plugin.log_text().contains(WRONG_SECRET));

    unpublish(&mut node, "s3-a", &a).await;
    assert_eq!(ossmount_mounts_at(&a), 0);
}
