//! `ossmount serve` serves the buckets in its root and nothing else: requests whose bucket or
//! key is spelled to climb out (`..`, `%2E%2E`, encoded slashes, `.`, an empty bucket, NUL,
//! backslashes, symlinks in the bucket) are refused with the service's error XML, and listings
//! never show a file outside the bucket. Every request is signed with the server's own key,
//! over a raw socket so nothing normalises the path on the way, and signed for the bucket and
//! key the server will see: a refusal is the path check's, never a signature mismatch.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AK, BUCKET, SK};
use ossmount::emulator::{Emulator, EmulatorConfig};
use ossmount::oss::{sign, time};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"TOP-SECRET-beside-the-root";
const STRAY: &[u8] = b"STRAY-in-the-root-in-no-bucket";
const OUTSIDE: &[u8] = b"OUTSIDE-through-a-symlinked-dir";

/// A server on `<top>/root`, with files beside the root, in the root outside any bucket, and
/// symlinks in the bucket pointing both inside and out.
struct Layout {
    _top: tempfile::TempDir,
    emu: Emulator,
}

async fn start() -> Layout {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    let bucket = root.join(BUCKET);
    std::fs::create_dir_all(bucket.join("sub")).unwrap();
    std::fs::create_dir_all(top.path().join("outside")).unwrap();
    std::fs::write(top.path().join("secret"), SECRET).unwrap();
    std::fs::write(top.path().join("outside/secret"), OUTSIDE).unwrap();
    std::fs::write(root.join("stray"), STRAY).unwrap();
    std::fs::write(bucket.join("ok.txt"), b"fine").unwrap();
    std::fs::write(bucket.join("sub/inner.txt"), b"also fine").unwrap();
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, bucket.join(name)).unwrap();
    };
    link(&bucket.join("sub/inner.txt"), "alias");
    link(&top.path().join("secret"), "leak");
    link(&top.path().join("outside"), "up");
    let emu = Emulator::start(EmulatorConfig::new(&root, AK, SK), "127.0.0.1:0")
        .await
        .unwrap();
    Layout { _top: top, emu }
}

/// Sends `GET raw_target` (path and query exactly as given) with `Host: host`, signed (V4)
/// for `bucket` and `key` as the server parses them. Returns the status and the body.
async fn signed_get(
    emu: &Emulator,
    host: &str,
    raw_target: &str,
    bucket: Option<&str>,
    key: Option<&str>,
) -> (u16, Vec<u8>) {
    let query: Vec<(String, String)> = raw_target
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        sign::percent_decode(k).unwrap(),
                        sign::percent_decode(v).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let signed = sign::sign_v4(
        AK,
        SK,
        None,
        &sign::V4Request {
            method: "GET",
            bucket,
            key,
            query: &query,
            headers: &[],
            additional_headers_requested: &[],
            region: emu.region(),
            product: "oss",
            time: time::unix_now(),
        },
    );
    let mut request = format!(
        "GET {raw_target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: {}\r\n",
        signed.authorization
    );
    for (k, v) in &signed.added_headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answers within 10 s");
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let status_line = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    (status, answer[head_end + 4..].to_vec())
}

/// The bucket and key the server makes of a path-style target: decoded, then split at the
/// first `/` after the leading one.
fn path_style(raw_target: &str) -> (String, String) {
    let path = raw_target.split('?').next().unwrap();
    let decoded = sign::percent_decode(path).unwrap();
    let rest = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
    (b.to_string(), k.to_string())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn listed_keys(xml: &[u8]) -> Vec<String> {
    let xml = String::from_utf8_lossy(xml);
    xml.split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reads_a_file_outside_its_bucket() {
    let l = start().await;
    let host = l.emu.addr().to_string();

    // The signing is right: the same helper reads an object of the bucket, and through a
    // symlink that stays inside it.
    for (target, want) in [
        (format!("/{BUCKET}/ok.txt"), &b"fine"[..]),
        (format!("/{BUCKET}/alias"), &b"also fine"[..]),
    ] {
        let (b, k) = path_style(&target);
        let (status, body) = signed_get(&l.emu, &host, &target, Some(&b), Some(&k)).await;
        assert_eq!((status, body.as_slice()), (200, want), "{target}");
    }

    let climbing = [
        "/../secret".to_string(),
        "/%2E%2E/secret".into(),
        "/%2e%2e/secret".into(),
        "/./stray".into(),
        "//stray".into(),
        "/%2Fstray".into(),
        format!("/{BUCKET}/../../secret"),
        format!("/{BUCKET}/..%2F..%2Fsecret"),
        format!("/{BUCKET}/%2E%2E/%2E%2E/secret"),
        format!("/{BUCKET}/..%5C..%5Csecret"),
        format!("/{BUCKET}/ok.txt%00"),
        format!("/{BUCKET}/%00/../../secret"),
        format!("/{BUCKET}/leak"),
        format!("/{BUCKET}/up/secret"),
    ];
    for target in &climbing {
        let (b, k) = path_style(target);
        let (status, body) = signed_get(&l.emu, &host, target, Some(&b), Some(&k)).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !contains(&body, SECRET) && !contains(&body, STRAY) && !contains(&body, OUTSIDE),
            "{target} served a file outside the bucket: {status} {text}"
        );
        assert!(
            matches!(status, 400 | 404) && text.contains("<Error>"),
            "{target}: want the service's 400/404 error XML, got {status} {text}"
        );
        assert!(
            !text.contains("SignatureDoesNotMatch"),
            "{target}: the test signed it wrong: {text}"
        );
    }

    // Virtual-hosted with an empty first label would make the root itself the bucket.
    let (status, body) =
        signed_get(&l.emu, ".emulator.test", "/stray", Some(""), Some("stray")).await;
    assert!(
        !contains(&body, STRAY),
        "an empty virtual-hosted bucket served the root: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_only_the_bucket() {
    let l = start().await;
    let host = l.emu.addr().to_string();
    let list = |target: String| {
        let emu = &l.emu;
        let host = host.clone();
        async move {
            let (b, _) = path_style(&target);
            let (status, body) = signed_get(emu, &host, &target, Some(&b), Some("")).await;
            (target, status, body)
        }
    };

    let (_, status, body) = list(format!("/{BUCKET}/?list-type=2")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        listed_keys(&body),
        ["ok.txt", "sub/inner.txt"],
        "only the bucket's own files (listings never follow symlinks)"
    );

    for target in [
        format!("/{BUCKET}/?list-type=2&prefix=..%2F"),
        format!("/{BUCKET}/?list-type=2&prefix=..%2F..%2F"),
        format!("/{BUCKET}/?list-type=2&prefix=sub%2F..%2F..%2F"),
        format!("/{BUCKET}/?list-type=2&prefix=up%2F"),
        "/../?list-type=2".to_string(),
        "/%2E%2E/?list-type=2&prefix=".to_string(),
        "/./?list-type=2".to_string(),
    ] {
        let (target, status, body) = list(target).await;
        let text = String::from_utf8_lossy(&body);
        let keys = listed_keys(&body);
        assert!(
            keys.is_empty(),
            "{target} listed files outside the bucket: {keys:?}"
        );
        assert!(
            !text.contains("secret") && !text.contains("stray"),
            "{target}: {status} {text}"
        );
        assert!(
            !text.contains("SignatureDoesNotMatch"),
            "{target}: the test signed it wrong: {text}"
        );
    }
}
