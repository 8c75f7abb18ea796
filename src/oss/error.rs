//! The client's error type. A service error carries what OSS said (status, Code, Message,
//! RequestId, HostId, EC) and prints the way the OSS SDK samples do; transport and protocol
//! errors say which endpoint and what went wrong. No variant ever holds a credential.

use std::fmt;

/// What the OSS service answered with a non-success status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub host_id: String,
    pub ec: String,
    /// The server's StringToSign on SignatureDoesNotMatch (safe: it holds no secret).
    pub string_to_sign: Option<String>,
    /// `code` was made up from the status (a bodiless answer, such as HEAD's, without an
    /// `x-oss-err` header): the service's own reason is unknown.
    pub code_guessed: bool,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Failed with error code: {}; Error info: {}. RequestID: {} HostID: {} (HTTP {}",
            self.code, self.message, self.request_id, self.host_id, self.status
        )?;
        if !self.ec.is_empty() {
            write!(f, ", EC {}", self.ec)?;
        }
        write!(f, ")")?;
        if let Some(hint) = self.hint() {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl ServiceError {
    fn hint(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            "SignatureDoesNotMatch" => {
                "check OSS_ACCESS_KEY_SECRET (or --access-key-secret) and --region; \
                 the secret does not match the access key id"
            }
            "InvalidAccessKeyId" => "check OSS_ACCESS_KEY_ID (or --access-key-id)",
            "NoSuchBucket" => "check the bucket name in the oss:// URL and the --endpoint region",
            "NoSuchKey" => "the object was not found: check the key (it is case-sensitive)",
            "RequestTimeTooSkewed" => "this machine's clock is more than 15 minutes off",
            "AccessDenied" => "the credentials lack permission, or the endpoint/region is wrong",
            "SecurityTokenExpired" => "the STS token in OSS_SESSION_TOKEN has expired",
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OssError {
    #[error("{0}")]
    Service(Box<ServiceError>),
    #[error("network error talking to {endpoint}: {detail}")]
    Transport { endpoint: String, detail: String },
    #[error("unexpected answer from {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("304 Not Modified")]
    NotModified,
    #[error("{0}")]
    Config(String),
}

impl OssError {
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            OssError::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        self.service().map(|s| s.code.as_str())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.code(), Some("NoSuchKey") | Some("NoSuchBucket"))
            || self.service().is_some_and(|s| s.status == 404)
    }

    /// The object changed since its ETag was pinned (If-Match failed).
    pub fn is_precondition_failed(&self) -> bool {
        self.service().is_some_and(|s| s.status == 412)
    }

    /// The service refused the keys themselves (unknown, expired, or not matching their
    /// token or secret): keys read from rotating files may have been replaced since.
    pub fn is_refused_keys(&self) -> bool {
        // A HEAD 403 without its reason may be refused keys too: worth asking the
        // credentials whether they changed (they answer yes only then, so a genuine denial
        // still comes through).
        let guessed_403 = self
            .service()
            .is_some_and(|s| s.status == 403 && s.code_guessed);
        guessed_403
            || matches!(
                self.code(),
                Some(
                    "InvalidAccessKeyId"
                        | "SecurityTokenExpired"
                        | "InvalidSecurityToken"
                        | "SignatureDoesNotMatch"
                )
            )
    }

    /// Worth another attempt: 5xx, 408, 429 and transport failures. Never auth, not-found,
    /// precondition or range errors: those will not change by asking again.
    pub fn is_retryable(&self) -> bool {
        match self {
            OssError::Service(s) => s.status >= 500 || s.status == 408 || s.status == 429,
            OssError::Transport { .. } => true,
            OssError::Protocol { .. } => true,
            OssError::NotModified | OssError::Config(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_the_sdk_samples() {
        let e = ServiceError {
            status: 404,
            code: "NoSuchKey".into(),
            message: "The specified key does not exist.".into(),
            request_id: "0123456789ABCDEF01234567".into(),
            host_id: "b.oss".into(),
            ..Default::default()
        };
        let s = e.to_string();
        assert!(s.starts_with("Failed with error code: NoSuchKey; Error info: The specified key does not exist.. RequestID: 0123456789ABCDEF01234567 HostID: b.oss"), "{s}");
        assert!(s.contains("hint: the object was not found"));
    }

    #[test]
    fn a_head_403_without_its_reason_may_be_refused_keys() {
        let guessed = ServiceError {
            status: 403,
            code: "AccessDenied".into(),
            code_guessed: true,
            ..Default::default()
        };
        assert!(OssError::Service(Box::new(guessed.clone())).is_refused_keys());
        let said = ServiceError {
            code_guessed: false,
            ..guessed
        };
        assert!(!OssError::Service(Box::new(said)).is_refused_keys());
    }
}
