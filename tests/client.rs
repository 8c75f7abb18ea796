//! The OSS client against the project's emulator over real HTTP (signatures checked by the
//! server), plus single-request edge cases against wiremock.

mod common;

use common::*;
use ossmount::emulator::Faults;
use ossmount::oss::{ListRequest, OssClient, OssError, SignatureVersion};

async fn read_all(
    client: &OssClient,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, OssError> {
    let mut r = client.get_object(BUCKET, key, range, None);
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_get_and_ranges_return_the_right_bytes() {
    let s = Server::start().await;
    let data = ossmount::sample::bytes(1, 100_000);
    s.put("dir/obj.bin", &data);
    let c = s.client();

    let meta = c.head_object(BUCKET, "dir/obj.bin").await.unwrap();
    assert_eq!(meta.size, 100_000);
    assert_eq!(meta.crc64, Some(ossmount::crc64::checksum(&data)));
    assert!(
        meta.etag.starts_with('"') && meta.etag.len() == 34,
        "{}",
        meta.etag
    );
    assert_eq!(meta.request_id.len(), 24);

    assert_eq!(read_all(&c, "dir/obj.bin", None).await.unwrap(), data);
    assert_eq!(
        read_all(&c, "dir/obj.bin", Some(1000..1010)).await.unwrap(),
        &data[1000..1010]
    );
    assert_eq!(
        read_all(&c, "dir/obj.bin", Some(99_999..100_000))
            .await
            .unwrap(),
        &data[99_999..]
    );

    let past_end = read_all(&c, "dir/obj.bin", Some(100_000..100_010))
        .await
        .unwrap_err();
    assert_eq!(past_end.code(), Some("InvalidRange"), "{past_end}");

    let mut pinned = c.get_object(BUCKET, "dir/obj.bin", Some(0..10), Some("\"0000\"".into()));
    let err = pinned.next_chunk().await.unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    assert_eq!(err.code(), Some("PreconditionFailed"));

    // The right ETag passes, quoted or not (the SDKs send it unquoted).
    let bare = meta.etag.trim_matches('"').to_string();
    let mut ok = c.get_object(BUCKET, "dir/obj.bin", Some(0..10), Some(bare));
    assert_eq!(
        ok.next_chunk().await.unwrap().unwrap().as_ref(),
        &data[..10]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_signatures_are_accepted_too() {
    let s = Server::start().await;
    s.put("a.txt", b"hello v1");
    let mut cfg = s.client_config();
    cfg.signature_version = SignatureVersion::V1;
    let c = OssClient::new(cfg).unwrap();
    assert_eq!(c.head_object(BUCKET, "a.txt").await.unwrap().size, 8);
    assert_eq!(read_all(&c, "a.txt", Some(6..8)).await.unwrap(), b"v1");
    let page = c.list_all(BUCKET, "", Some("/")).await.unwrap();
    assert_eq!(page.objects.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_never_retried_when_final() {
    let s = Server::start().await;
    s.put("k", b"x");
    let c = s.client();

    let missing = c.head_object(BUCKET, "nope").await.unwrap_err();
    assert_eq!(missing.code(), Some("NoSuchKey"));
    assert!(missing.is_not_found());
    let no_bucket = c.head_object("no-such-bucket", "k").await.unwrap_err();
    assert_eq!(no_bucket.code(), Some("NoSuchBucket"), "{no_bucket}");

    let mut cfg = s.client_config();
    cfg.credentials.as_mut().unwrap().access_key_secret = ossmount::oss::Secret::new("wrong");
    let before = s.emu.totals().requests;
    let log_before = s.emu.request_log().len();
    let err = OssClient::new(cfg)
        .unwrap()
        .head_object(BUCKET, "k")
        .await
        .unwrap_err();
    let svc = err.service().unwrap();
    assert_eq!(svc.code, "SignatureDoesNotMatch");
    assert_eq!(svc.status, 403);
    assert_eq!(svc.request_id.len(), 24);
    // One request, no retries: asking again cannot fix a bad secret.
    assert_eq!(s.emu.request_log().len(), log_before + 1);
    assert_eq!(s.emu.totals().requests, before);

    let mut cfg = s.client_config();
    cfg.credentials.as_mut().unwrap().access_key_id = "unknown".into();
    let err = OssClient::new(cfg)
        .unwrap()
        .head_object(BUCKET, "k")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidAccessKeyId"));

    let mut cfg = s.client_config();
    cfg.region = Some("cn-beijing".into());
    let err = OssClient::new(cfg)
        .unwrap()
        .list_all(BUCKET, "", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
    assert!(err.to_string().contains("signing region"), "{err}");

    let mut cfg = s.client_config();
    cfg.credentials = None;
    let err = OssClient::new(cfg)
        .unwrap()
        .list_all(BUCKET, "", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_over_1500_keys_and_odd_names() {
    let s = Server::start().await;
    for i in 0..1500 {
        s.put(&format!("many/f{i:05}"), b"");
    }
    let odd = [
        "odd/with space.txt",
        "odd/unicode-文件-é.txt",
        "odd/plus+sign",
        "odd/percent%41%2F",
        "odd/equals=sign&amp",
        "odd/tilde~name",
        "odd/sub dir/nested+1.txt",
    ];
    for (i, k) in odd.iter().enumerate() {
        s.put(k, format!("content {i}").as_bytes());
    }
    let c = s.client();

    // Paging: 1000 + 500, continuation tokens round-trip.
    let first = c
        .list_objects_v2(
            BUCKET,
            &ListRequest {
                prefix: "many/".into(),
                max_keys: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.objects.len(), 1000);
    assert!(first.is_truncated);
    let all = c.list_all(BUCKET, "many/", None).await.unwrap();
    let keys: Vec<String> = all.objects.iter().map(|o| o.key.clone()).collect();
    let want: Vec<String> = (0..1500).map(|i| format!("many/f{i:05}")).collect();
    assert_eq!(keys, want);
    let requests_before = s.emu.totals().list_requests;
    let small_pages = {
        let mut token = None;
        let mut n = 0;
        let mut pages = 0;
        loop {
            let p = c
                .list_objects_v2(
                    BUCKET,
                    &ListRequest {
                        prefix: "many/".into(),
                        max_keys: Some(7),
                        continuation_token: token.take(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            n += p.objects.len();
            pages += 1;
            if !p.is_truncated {
                break (n, pages);
            }
            // A continuation that never ends would loop for ever: 215 pages are expected.
            assert!(pages < 1000, "listing with max-keys 7 never ended");
            token = p.next_continuation_token;
        }
    };
    assert_eq!(small_pages, (1500, 215));
    assert_eq!(s.emu.totals().list_requests - requests_before, 215);

    // Delimiter: prefixes roll up, and the continuation never repeats a prefix.
    let top = c.list_all(BUCKET, "", Some("/")).await.unwrap();
    assert_eq!(top.common_prefixes, vec!["many/", "odd/"]);
    let odd_level = c.list_all(BUCKET, "odd/", Some("/")).await.unwrap();
    assert_eq!(odd_level.common_prefixes, vec!["odd/sub dir/"]);
    let mut names: Vec<&str> = odd_level.objects.iter().map(|o| o.key.as_str()).collect();
    names.sort();
    let mut expect: Vec<&str> = odd
        .iter()
        .copied()
        .filter(|k| !k.contains("sub dir"))
        .collect();
    expect.sort();
    assert_eq!(names, expect);
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let p = c
            .list_objects_v2(
                BUCKET,
                &ListRequest {
                    prefix: "".into(),
                    delimiter: Some("/".into()),
                    max_keys: Some(1),
                    continuation_token: token.take(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        seen.extend(p.common_prefixes);
        if !p.is_truncated {
            break;
        }
        // Two prefixes are expected: a continuation that repeats one would loop for ever.
        assert!(seen.len() < 100, "listing by prefix never ended: {seen:?}");
        token = p.next_continuation_token;
    }
    assert_eq!(seen, vec!["many/", "odd/"]);

    // Every odd key heads and reads back through its literal name.
    for (i, k) in odd.iter().enumerate() {
        assert_eq!(
            read_all(&c, k, None).await.unwrap(),
            format!("content {i}").as_bytes(),
            "{k}"
        );
    }
    // start-after skips up to and including the key.
    let after = c
        .list_objects_v2(
            BUCKET,
            &ListRequest {
                prefix: "many/".into(),
                start_after: Some("many/f01497".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        vec!["many/f01498", "many/f01499"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_ranged_get_survives_503s_and_resets() {
    let s = Server::start().await;
    let len: u64 = 64 << 20;
    s.put_sample("big.bin", 64, len);
    s.emu.set_faults(Faults {
        error_rate: 0.2,
        reset_rate: 0.2,
        truncate_rate: 0.1,
        fail_nth: vec![1],
        ..Faults::default()
    });
    let c = s.client();
    let mut retries = 0;
    for (i, range) in [1_000_000..len - 3, 0..len, 5..len / 2, len / 3..len]
        .into_iter()
        .enumerate()
    {
        let mut r = c.get_object(BUCKET, "big.bin", Some(range.clone()), None);
        let mut expect = vec![0u8; (range.end - range.start) as usize];
        ossmount::sample::fill(64, range.start, &mut expect);
        let mut got = Vec::with_capacity(expect.len());
        while let Some(chunk) = r.next_chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), expect.len(), "read {i}");
        assert!(got == expect, "read {i}: bytes differ");
        retries += r.retries();
    }
    let t = s.emu.totals();
    assert!(t.injected_errors >= 1, "no 503 was injected: {t:?}");
    assert!(t.injected_cuts >= 1, "no body was cut: {t:?}");
    assert!(
        retries >= t.injected_cuts as u32,
        "every cut body was resumed: {retries} < {t:?}"
    );
}

/// The CLI on a bad secret: non-zero exit, the service's code and request id, and the secret
/// nowhere in the output even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_bad_secret_and_missing_key_without_leaking() {
    let s = Server::start().await;
    s.put("dir/a.txt", b"abc");
    let wrong_secret = "wrong-secret-SHOULD-NOT-APPEAR-123";
    let mut env = s.env();
    env.retain(|(k, _)| *k != "OSS_ACCESS_KEY_SECRET");
    env.push(("OSS_ACCESS_KEY_SECRET", wrong_secret.into()));
    env.push(("RUST_LOG", "trace".into()));
    let (status, text) = run_cli(&["ls", "oss://test-bucket/dir/"], env).await;
    assert!(!status.success());
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(
        text.contains("RequestID: ") && text.contains("HostID: "),
        "{text}"
    );
    assert!(!text.contains(wrong_secret), "secret leaked: {text}");
    assert!(!text.contains(SK), "secret leaked: {text}");

    let (status, text) = run_cli(
        &[
            "--log-level",
            "trace",
            "stat",
            "oss://test-bucket/dir/missing.txt",
        ],
        s.env(),
    )
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        text.contains("NoSuchKey") && text.contains("not found"),
        "{text}"
    );
    assert!(!text.contains(SK), "secret leaked: {text}");

    // A download's error is printed once (it was printed twice: the store error was the
    // download error's message and its source as well).
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("a.txt");
    let mut env = s.env();
    env.retain(|(k, _)| *k != "OSS_ACCESS_KEY_SECRET");
    env.push(("OSS_ACCESS_KEY_SECRET", wrong_secret.into()));
    let (status, text) = run_cli(
        &[
            "download",
            "oss://test-bucket/dir/a.txt",
            target.to_str().unwrap(),
        ],
        env,
    )
    .await;
    assert!(!status.success());
    assert_eq!(text.matches("SignatureDoesNotMatch").count(), 1, "{text}");
    assert!(!target.exists());

    let (status, listing) = run_cli(&["ls", "-l", "oss://test-bucket/dir/"], s.env()).await;
    assert!(status.success());
    assert!(
        listing.contains("3  ") && listing.trim_end().ends_with("dir/a.txt"),
        "{listing}"
    );
}

mod wire_edge_cases {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client_for(server: &MockServer) -> OssClient {
        let mut cfg = ossmount::oss::ClientConfig::new(
            ossmount::oss::Endpoint::parse(&server.uri()).unwrap(),
        );
        cfg.region = Some("cn-hangzhou".into());
        cfg.credentials = Some(ossmount::oss::Credentials {
            access_key_id: AK.into(),
            access_key_secret: ossmount::oss::Secret::new(SK),
            security_token: None,
        });
        cfg.retry.base_delay = std::time::Duration::from_millis(1);
        OssClient::new(cfg).unwrap()
    }

    #[tokio::test]
    async fn head_error_comes_from_x_oss_err() {
        use base64::Engine;
        let server = MockServer::start().await;
        let xml = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><RequestId>5C3D9175B6FC201293AD4890</RequestId><HostId>b.oss</HostId><EC>0026-00000001</EC></Error>";
        Mock::given(method("HEAD"))
            .respond_with(
                ResponseTemplate::new(404)
                    .insert_header("x-oss-request-id", "5C3D9175B6FC201293AD4890")
                    .insert_header(
                        "x-oss-err",
                        base64::engine::general_purpose::STANDARD.encode(xml),
                    ),
            )
            .mount(&server)
            .await;
        let err = client_for(&server)
            .head_object("bkt", "k")
            .await
            .unwrap_err();
        let svc = err.service().unwrap();
        assert_eq!(
            (svc.code.as_str(), svc.request_id.as_str(), svc.ec.as_str()),
            ("NoSuchKey", "5C3D9175B6FC201293AD4890", "0026-00000001")
        );
    }

    #[tokio::test]
    async fn head_error_without_body_maps_status_and_request_id() {
        let server = MockServer::start().await;
        Mock::given(method("HEAD"))
            .respond_with(
                ResponseTemplate::new(403)
                    .insert_header("x-oss-request-id", "AAAABBBBCCCCDDDDEEEEFFFF"),
            )
            .mount(&server)
            .await;
        let err = client_for(&server)
            .head_object("bkt", "k")
            .await
            .unwrap_err();
        let svc = err.service().unwrap();
        assert_eq!(
            (svc.status, svc.code.as_str(), svc.request_id.as_str()),
            (403, "AccessDenied", "AAAABBBBCCCCDDDDEEEEFFFF")
        );
    }

    #[tokio::test]
    async fn a_200_to_a_range_request_is_trimmed_to_the_range() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/bkt/k"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("ETag", "\"E1\"")
                    .set_body_bytes(b"0123456789".to_vec()),
            )
            .mount(&server)
            .await;
        let c = client_for(&server);
        let mut r = c.get_object("bkt", "k", Some(3..6), None);
        let mut got = Vec::new();
        while let Some(ch) = r.next_chunk().await.unwrap() {
            got.extend_from_slice(&ch);
        }
        assert_eq!(got, b"345");
    }

    #[tokio::test]
    async fn a_500_is_retried_and_a_404_is_not() {
        let server = MockServer::start().await;
        Mock::given(method("HEAD"))
            .and(path("/bkt/flaky"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(2)
            .mount(&server)
            .await;
        Mock::given(method("HEAD"))
            .and(path("/bkt/flaky"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("ETag", "\"E\"")
                    .insert_header("Content-Length", "0"),
            )
            .mount(&server)
            .await;
        Mock::given(method("HEAD"))
            .and(path("/bkt/gone"))
            .respond_with(ResponseTemplate::new(404))
            .expect(1)
            .mount(&server)
            .await;
        let c = client_for(&server);
        assert!(c.head_object("bkt", "flaky").await.is_ok());
        assert!(c
            .head_object("bkt", "gone")
            .await
            .unwrap_err()
            .is_not_found());
        let flaky = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/bkt/flaky")
            .count();
        assert_eq!(flaky, 3);
    }

    #[tokio::test]
    async fn an_answer_for_another_version_than_if_match_asked_is_refused() {
        // A server (or proxy) that ignores If-Match: its first answer names another ETag.
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/bkt/k"))
            .respond_with(
                ResponseTemplate::new(206)
                    .insert_header("ETag", "\"NEW\"")
                    .insert_header("Content-Range", "bytes 3-5/10")
                    .set_body_bytes(b"345".to_vec()),
            )
            .mount(&server)
            .await;
        let c = client_for(&server);
        let mut r = c.get_object("bkt", "k", Some(3..6), Some("\"OLD\"".into()));
        let err = r.next_chunk().await.unwrap_err();
        assert_eq!(err.service().map(|s| s.status), Some(412), "{err}");
    }

    #[tokio::test]
    async fn a_200_without_content_length_is_an_error_not_an_empty_object() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Chunked: no Content-Length, so the object's size is unknown.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nETag: \"E1\"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                    )
                    .await;
            }
        });
        let mut cfg = ossmount::oss::ClientConfig::new(
            ossmount::oss::Endpoint::parse(&format!("http://{addr}")).unwrap(),
        );
        cfg.region = Some("cn-hangzhou".into());
        cfg.credentials = Some(ossmount::oss::Credentials {
            access_key_id: AK.into(),
            access_key_secret: ossmount::oss::Secret::new(SK),
            security_token: None,
        });
        cfg.retry.max_attempts = 1;
        let c = OssClient::new(cfg).unwrap();
        let mut r = c.get_object("bkt", "k", None, None);
        let err = r.next_chunk().await.unwrap_err().to_string();
        assert!(err.contains("Content-Length"), "{err}");
        serve.abort();
    }
}
