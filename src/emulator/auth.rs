//! Signature checks like the service's: V4 (OSS4-HMAC-SHA256) and V1, clock skew, the
//! service's error codes and messages. Uses `oss::sign` only, never the client.

use std::time::SystemTime;

use crate::oss::sign;
use crate::oss::sign::ParsedAuthorization;
use crate::oss::time;

use super::response::{oss_err, OssErr};
use super::State;

pub(super) fn verify_auth(
    state: &State,
    method: &str,
    bucket: Option<&str>,
    key: Option<&str>,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> Result<(), OssErr> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let Some(auth) = get("authorization") else {
        if state.cfg.allow_anonymous {
            return Ok(());
        }
        return Err(oss_err(
            403,
            "AccessDenied",
            "You have no right to access this object because of bucket acl.",
            "0003-00000001",
        ));
    };
    let parsed = sign::parse_authorization(auth).ok_or_else(|| {
        oss_err(
            400,
            "InvalidArgument",
            "Authorization header is invalid.",
            "0002-00000201",
        )
    })?;
    let cfg = &state.cfg;
    let bad_ak = || {
        oss_err(
            403,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
            "0002-00000902",
        )
    };
    let skewed = |t: i64| (t - time::unix_now()).abs() > 15 * 60;
    let too_skewed = || {
        oss_err(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            "0002-00000504",
        )
    };
    // The long-term key, or a temporary one that has not expired and comes with its token.
    let secret_for = |access_key_id: &str| -> Result<String, OssErr> {
        if access_key_id == cfg.access_key_id {
            return Ok(cfg.access_key_secret.clone());
        }
        if let Some(r) = cfg
            .restricted
            .iter()
            .find(|r| r.access_key_id == access_key_id)
        {
            return Ok(r.access_key_secret.clone());
        }
        let (secret, token, expired) = state.temporary.lookup(access_key_id).ok_or_else(bad_ak)?;
        if expired {
            return Err(oss_err(
                403,
                "SecurityTokenExpired",
                "The security token you provided has expired.",
                "0002-00000902",
            ));
        }
        if get("x-oss-security-token") != Some(token.as_str()) {
            return Err(oss_err(
                403,
                "InvalidSecurityToken",
                "The security token you provided is invalid.",
                "0002-00000903",
            ));
        }
        Ok(secret)
    };
    let (string_to_sign, expected, provided, ak) = match parsed {
        ParsedAuthorization::V4 {
            access_key_id,
            date8,
            region,
            product,
            additional,
            signature,
        } => {
            let secret = secret_for(&access_key_id)?;
            let x_oss_date = get("x-oss-date").ok_or_else(|| {
                oss_err(
                    403,
                    "AccessDenied",
                    "Missing x-oss-date header for V4 signature.",
                    "0002-00000226",
                )
            })?;
            let t = time::parse_iso8601_basic(x_oss_date).ok_or_else(|| {
                oss_err(
                    403,
                    "AccessDenied",
                    "Invalid x-oss-date header.",
                    "0002-00000227",
                )
            })?;
            if skewed(t) {
                return Err(too_skewed());
            }
            if get("x-oss-content-sha256").is_none() {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "Missing x-oss-content-sha256 header.",
                    "0002-00000228",
                ));
            }
            if region != cfg.region || product != "oss" {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "The signing region in credential is invalid.",
                    "0002-00000229",
                ));
            }
            if date8 != x_oss_date[..8] {
                return Err(oss_err(
                    403,
                    "AccessDenied",
                    "Invalid signing date in Authorization header.",
                    "0002-00000230",
                ));
            }
            if additional
                .iter()
                .any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
            {
                return Err(oss_err(
                    400,
                    "InvalidArgument",
                    "AdditionalHeaders must be lower-case names.",
                    "0002-00000209",
                ));
            }
            let cr = sign::V4Canonical {
                method,
                bucket,
                key,
                query,
                headers,
                additional: &additional,
            }
            .canonical_request();
            let scope = sign::v4_scope(&date8, &region, &product);
            let sts = sign::v4_string_to_sign(x_oss_date, &scope, &cr);
            let k = sign::v4_signing_key(&secret, &date8, &region, &product);
            (
                sts.clone(),
                sign::v4_signature(&k, &sts),
                signature,
                access_key_id,
            )
        }
        ParsedAuthorization::V1 {
            access_key_id,
            signature,
        } => {
            let secret = secret_for(&access_key_id)?;
            let date = get("x-oss-date").or_else(|| get("date")).unwrap_or("");
            let t = httpdate::parse_http_date(date)
                .map_err(|_| oss_err(403, "AccessDenied", "Invalid Date header.", "0002-00000227"))?
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if skewed(t) {
                return Err(too_skewed());
            }
            let sts = sign::v1_string_to_sign(method, headers, bucket, key, query);
            (
                sts.clone(),
                sign::v1_signature(&secret, &sts),
                signature,
                access_key_id,
            )
        }
    };
    let equal = expected.len() == provided.len()
        && expected
            .bytes()
            .zip(provided.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !equal {
        let mut e = oss_err(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.", "0002-00000040");
        e.extra.push(("OSSAccessKeyId", ak));
        e.extra.push(("SignatureProvided", provided));
        e.extra.push(("StringToSign", string_to_sign));
        return Err(e);
    }
    Ok(())
}

/// A request signed (validly) by a restricted key for an object its policy denies.
pub(super) fn denied_by_policy(
    state: &State,
    key: &str,
    headers: &[(String, String)],
) -> Result<(), OssErr> {
    let Some(auth) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str())
    else {
        return Ok(());
    };
    let id = match sign::parse_authorization(auth) {
        Some(ParsedAuthorization::V4 { access_key_id, .. }) => access_key_id,
        Some(ParsedAuthorization::V1 { access_key_id, .. }) => access_key_id,
        None => return Ok(()),
    };
    let denied = state
        .cfg
        .restricted
        .iter()
        .find(|r| r.access_key_id == id)
        .is_some_and(|r| {
            r.denied_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()))
        });
    if denied {
        return Err(oss_err(
            403,
            "AccessDenied",
            "You have no right to access this object because of bucket acl.",
            "0003-00000001",
        ));
    }
    Ok(())
}
