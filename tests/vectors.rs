//! Reproduces every signing vector generated with the official Alibaba Cloud SDKs, and every
//! CRC-64 vector, byte for byte. The JSON files are copies of ../shared/spec.

use ossmount::crc64;
use ossmount::oss::sign::{self, V4Canonical, V4Request};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
        _ => vec![],
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("field {k}"))
}

#[test]
fn v4_header_vectors_reproduce_every_step() {
    let doc = load("oss-sign-vectors.json");
    let vectors = doc["v4"].as_array().unwrap();
    assert_eq!(vectors.len(), 18);
    for v in vectors {
        let (id, input, exp) = (s(v, "id"), &v["input"], &v["expected"]);
        let query = pairs(&input["query_params"]);
        let headers = pairs(&input["headers_before_signing"]);
        let requested = strings(&input["additional_headers_requested"]);
        let signed = sign::sign_v4(
            s(input, "access_key_id"),
            s(input, "access_key_secret"),
            input["security_token"].as_str(),
            &V4Request {
                method: s(input, "method"),
                bucket: input["bucket"].as_str(),
                key: input["key"].as_str(),
                query: &query,
                headers: &headers,
                additional_headers_requested: &requested,
                region: s(input, "region"),
                product: s(input, "product"),
                time: input["signing_time_unix"].as_i64().unwrap(),
            },
        );
        assert_eq!(
            sign::v4_canonical_uri(input["bucket"].as_str(), input["key"].as_str()),
            s(exp, "canonical_uri"),
            "{id}"
        );
        assert_eq!(
            sign::v4_canonical_query(&query),
            s(exp, "canonical_query"),
            "{id}"
        );
        assert_eq!(
            sign::wire_query(&query),
            s(exp, "raw_query_as_sent"),
            "{id}"
        );
        assert_eq!(
            signed.canonical_request,
            s(exp, "canonical_request"),
            "{id}"
        );
        assert_eq!(signed.string_to_sign, s(exp, "string_to_sign"), "{id}");
        assert_eq!(signed.signature, s(exp, "signature"), "{id}");
        assert_eq!(signed.authorization, s(exp, "authorization"), "{id}");
        let date8 = &s(exp, "x_oss_date")[..8];
        assert_eq!(
            hex::encode(sign::v4_signing_key(
                s(input, "access_key_secret"),
                date8,
                s(input, "region"),
                s(input, "product")
            )),
            s(exp, "signing_key_hex"),
            "{id}"
        );
        for (k, val) in pairs(&exp["headers_added_by_signer"]) {
            if k == "Date" {
                let t = input["signing_time_unix"].as_i64().unwrap();
                assert_eq!(ossmount::oss::time::http_date(t), val, "{id}");
            } else {
                assert!(
                    signed.added_headers.contains(&(k.clone(), val.clone())),
                    "{id}: {k}"
                );
            }
        }
        // Both spellings of the header parse to the same thing (the emulator accepts either).
        assert_eq!(
            sign::parse_authorization(s(exp, "authorization")),
            sign::parse_authorization(s(exp, "authorization_oss2_style")),
            "{id}"
        );
        // The request URL the client would build.
        let ep = ossmount::oss::Endpoint::parse(s(input, "endpoint")).unwrap();
        let style = match s(input, "url_style") {
            "cname" => ossmount::oss::Addressing::Cname,
            _ => ossmount::oss::Addressing::Auto,
        };
        let mut url = ossmount::oss::endpoint::request_url(
            &ep,
            style,
            input["bucket"].as_str(),
            input["key"].as_str(),
        );
        if !query.is_empty() {
            url = format!("{url}?{}", sign::wire_query(&query));
        }
        assert_eq!(url, s(exp, "request_url"), "{id}");
    }
}

#[test]
fn v1_vectors_reproduce_string_to_sign_and_signature() {
    let doc = load("oss-sign-vectors.json");
    let vectors = doc["v1"].as_array().unwrap();
    assert_eq!(vectors.len(), 8);
    for v in vectors {
        let (id, input, exp) = (s(v, "id"), &v["input"], &v["expected"]);
        let query = pairs(&input["query_params"]);
        let headers = pairs(&input["headers_at_signing"]);
        let sts = sign::v1_string_to_sign(
            s(input, "method"),
            &headers,
            input["bucket"].as_str(),
            input["key"].as_str(),
            &query,
        );
        assert_eq!(
            sign::v1_canonical_resource(input["bucket"].as_str(), input["key"].as_str(), &query),
            s(exp, "canonicalized_resource"),
            "{id}"
        );
        assert_eq!(sts, s(exp, "string_to_sign"), "{id}");
        let sig = sign::v1_signature(s(input, "access_key_secret"), &sts);
        assert_eq!(sig, s(exp, "signature"), "{id}");
        assert_eq!(
            sign::v1_authorization(s(input, "access_key_id"), &sig),
            s(exp, "authorization"),
            "{id}"
        );
    }
}

#[test]
fn sdk_unit_test_vectors_reproduce() {
    let doc = load("oss-sign-vectors.json");
    let vectors = doc["sdk_test_vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 10);
    let mut seen = [0; 3];
    for v in vectors {
        let (kind, input, exp) = (s(v, "kind"), &v["input"], &v["expected"]);
        let query = pairs(&input["query_params"]);
        match kind {
            "v4-header" => {
                seen[0] += 1;
                let headers = pairs(&input["headers_before_signing"]);
                let signed = sign::sign_v4(
                    s(input, "access_key_id"),
                    s(input, "access_key_secret"),
                    input["security_token"].as_str(),
                    &V4Request {
                        method: s(input, "method"),
                        bucket: input["bucket"].as_str(),
                        key: input["key"].as_str(),
                        query: &query,
                        headers: &headers,
                        additional_headers_requested: &strings(
                            &input["additional_headers_requested"],
                        ),
                        region: s(input, "region"),
                        product: s(input, "product"),
                        time: input["signing_time_unix"].as_i64().unwrap(),
                    },
                );
                assert_eq!(signed.canonical_request, s(exp, "canonical_request"));
                assert_eq!(signed.string_to_sign, s(exp, "string_to_sign"));
                assert_eq!(signed.authorization, s(exp, "authorization"));
            }
            "v4-query (presigned URL)" => {
                seen[1] += 1;
                // A presigned URL signs its own credential fields as query parameters.
                let t = input["signing_time_unix"].as_i64().unwrap();
                let date = ossmount::oss::time::iso8601_basic(t);
                let scope = sign::v4_scope(&date[..8], s(input, "region"), s(input, "product"));
                let mut q = query.clone();
                q.push(("x-oss-signature-version".into(), "OSS4-HMAC-SHA256".into()));
                q.push(("x-oss-date".into(), date.clone()));
                let expires = input["expiration_unix"].as_i64().unwrap() - t;
                q.push(("x-oss-expires".into(), expires.to_string()));
                q.push((
                    "x-oss-credential".into(),
                    format!("{}/{scope}", s(input, "access_key_id")),
                ));
                if let Some(tok) = input["security_token"].as_str() {
                    q.push(("x-oss-security-token".into(), tok.into()));
                }
                let headers = pairs(&input["headers"]);
                let cr = V4Canonical {
                    method: s(input, "method"),
                    bucket: input["bucket"].as_str(),
                    key: input["key"].as_str(),
                    query: &q,
                    headers: &headers,
                    additional: &[],
                }
                .canonical_request();
                assert_eq!(cr, s(exp, "canonical_request"));
                let sts = sign::v4_string_to_sign(&date, &scope, &cr);
                assert_eq!(sts, s(exp, "string_to_sign"));
                let key = sign::v4_signing_key(
                    s(input, "access_key_secret"),
                    &date[..8],
                    s(input, "region"),
                    s(input, "product"),
                );
                let sig = sign::v4_signature(&key, &sts);
                assert_eq!(sig, s(exp, "x-oss-signature"));
                assert!(s(exp, "signed_url").ends_with(&format!("&x-oss-signature={sig}")));
            }
            "v1-header" => {
                seen[2] += 1;
                let headers = pairs(&input["headers_at_signing"]);
                let sts = sign::v1_string_to_sign(
                    s(input, "method"),
                    &headers,
                    input["bucket"].as_str(),
                    input["key"].as_str(),
                    &query,
                );
                assert_eq!(sts, s(exp, "string_to_sign"));
                let sig = sign::v1_signature(s(input, "access_key_secret"), &sts);
                assert_eq!(
                    sign::v1_authorization(s(input, "access_key_id"), &sig),
                    s(exp, "authorization")
                );
            }
            other => panic!("unknown vector kind {other}"),
        }
    }
    assert_eq!(seen, [5, 2, 3]);
}

fn mod251(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn crc_input(name: &str, len: usize) -> Vec<u8> {
    match name {
        "empty" => vec![],
        "check-123456789" => b"123456789".to_vec(),
        "a" => b"a".to_vec(),
        "fox" => b"The quick brown fox jumps over the lazy dog".to_vec(),
        "emergency" => b"This is a test of the emergency broadcast system.".to_vec(),
        "zeros-4096" => vec![0; 4096],
        "ff-1000" => vec![0xff; 1000],
        n if n.starts_with("mod251") => mod251(len),
        other => panic!("unknown CRC input {other}"),
    }
}

#[test]
fn crc64_values_and_combines_match() {
    let doc = load("crc64-vectors.json");
    for v in doc["values"].as_array().unwrap() {
        let len = v["length"].as_u64().unwrap() as usize;
        let data = crc_input(s(v, "name"), len);
        assert_eq!(data.len(), len, "{}", s(v, "name"));
        let want: u64 = s(v, "crc64_decimal").parse().unwrap();
        assert_eq!(crc64::checksum(&data), want, "{}", s(v, "name"));
        assert_eq!(want.to_string(), s(v, "x_oss_hash_crc64ecma_header"));
    }
    let combine = &doc["combine"];
    let num = |v: &Value, k: &str| s(v, k).parse::<u64>().unwrap();
    let mut checked = 0;
    for c in combine["two_part"].as_array().unwrap() {
        let got = crc64::combine(num(c, "crc1"), num(c, "crc2"), c["len2"].as_u64().unwrap());
        assert_eq!(got, num(c, "combined"), "split at {}", c["split_at"]);
        // And the split CRCs themselves are what the data gives.
        let data = mod251(1 << 20);
        let at = c["split_at"].as_u64().unwrap() as usize;
        assert_eq!(crc64::checksum(&data[..at]), num(c, "crc1"));
        checked += 1;
    }
    let mut running = 0;
    for p in combine["three_part_400000"].as_array().unwrap() {
        running = crc64::combine(running, num(p, "crc"), p["len"].as_u64().unwrap());
        assert_eq!(running, num(p, "running_combined"));
        checked += 1;
    }
    let cont = &combine["continuation"];
    let a = crc64::checksum(s(cont, "A").as_bytes());
    assert_eq!(a, num(cont, "crc_A"));
    assert_eq!(
        crc64::update(a, s(cont, "B").as_bytes()),
        num(cont, "crc_A_then_B")
    );
    assert_eq!(
        crc64::checksum(format!("{}{}", s(cont, "A"), s(cont, "B")).as_bytes()),
        num(cont, "crc_AB")
    );
    assert!(checked >= 7, "only {checked} combine vectors were checked");
}
