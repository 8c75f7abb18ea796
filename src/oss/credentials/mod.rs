//! Where the client's credentials come from: the default chain of the official Alibaba Cloud
//! SDKs (flags and environment, an OIDC role through STS, a CLI or ossutil profile, the ECS
//! instance's RAM role, a credentials URI), the first source that yields credentials winning,
//! and temporary credentials refreshed before they expire: a margin ahead of expiry, one
//! refresh at a time, retried; a failed refresh while the old credentials are still valid is
//! a warning, not an outage. Secrets never reach a log line or an error. Must not sign
//! requests (that is `sign`) nor know about files other than the profile files it reads.

mod sources;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use sources::{resolve_chain, ChainOptions};

use super::{Credentials, OssError};
use crate::store::BoxFut;

/// Something that hands out the credentials to sign the next request with.
pub trait ProvideCredentials: Send + Sync {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>>;
    /// Which source, for the log (never a secret).
    fn describe(&self) -> String;
}

impl fmt::Debug for dyn ProvideCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credentials from {}", self.describe())
    }
}

/// Credentials with the time they stop working (`None`: long-term keys).
#[derive(Clone, Debug)]
pub struct Expiring {
    pub credentials: Credentials,
    pub expiration: Option<SystemTime>,
}

/// Fixed credentials (flags, environment, a profile's AccessKey).
pub struct Fixed {
    credentials: Credentials,
    source: String,
}

impl Fixed {
    pub fn new(credentials: Credentials, source: impl Into<String>) -> Fixed {
        Fixed {
            credentials,
            source: source.into(),
        }
    }
}

impl ProvideCredentials for Fixed {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>> {
        let c = self.credentials.clone();
        Box::pin(async move { Ok(c) })
    }

    fn describe(&self) -> String {
        self.source.clone()
    }
}

/// Fetches a fresh set of temporary credentials (from STS, the metadata service, a URI).
pub trait Fetch: Send + Sync {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, OssError>>;
    fn describe(&self) -> String;
}

/// Temporary credentials kept fresh: refreshed once less than the margin (a third of their
/// lifetime, at most three minutes) is left, by one caller at a time, with retries.
pub struct Refreshing<F: Fetch> {
    fetch: F,
    current: Mutex<Option<(Expiring, SystemTime)>>,
    refresh: tokio::sync::Mutex<()>,
    attempts: u32,
    retry_delay: Duration,
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetch: F) -> Refreshing<F> {
        Refreshing {
            fetch,
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            attempts: 3,
            retry_delay: Duration::from_millis(300),
        }
    }

    /// The current credentials when they do not need a refresh yet.
    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        let cur = self.current.lock().unwrap();
        let (e, fetched) = cur.as_ref()?;
        let Some(exp) = e.expiration else {
            return Some(e.credentials.clone());
        };
        let lifetime = exp.duration_since(*fetched).unwrap_or_default();
        let margin = (lifetime / 3).min(Duration::from_secs(180));
        (exp.duration_since(now).unwrap_or_default() > margin).then(|| e.credentials.clone())
    }

    /// The current credentials while they have not expired.
    fn still_valid(&self, now: SystemTime) -> Option<Credentials> {
        let cur = self.current.lock().unwrap();
        let (e, _) = cur.as_ref()?;
        match e.expiration {
            Some(exp) if exp <= now => None,
            _ => Some(e.credentials.clone()),
        }
    }

    async fn fetch_with_retries(&self) -> Result<Expiring, OssError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch.fetch().await {
                Ok(e) => return Ok(e),
                Err(e) if attempt >= self.attempts => return Err(e),
                Err(e) => {
                    tracing::debug!(source = %self.fetch.describe(), attempt, "fetching credentials failed, retrying: {e}");
                    tokio::time::sleep(self.retry_delay * attempt).await;
                }
            }
        }
    }
}

impl<F: Fetch> ProvideCredentials for Refreshing<F> {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>> {
        Box::pin(async move {
            if let Some(c) = self.fresh(SystemTime::now()) {
                return Ok(c);
            }
            let _single_flight = self.refresh.lock().await;
            if let Some(c) = self.fresh(SystemTime::now()) {
                return Ok(c); // another caller refreshed while this one waited
            }
            match self.fetch_with_retries().await {
                Ok(e) => {
                    tracing::info!(
                        source = %self.fetch.describe(),
                        access_key_id = %e.credentials.access_key_id,
                        expires = ?e.expiration.map(super::time::iso8601_extended),
                        "fetched temporary credentials"
                    );
                    let c = e.credentials.clone();
                    *self.current.lock().unwrap() = Some((e, SystemTime::now()));
                    Ok(c)
                }
                Err(err) => match self.still_valid(SystemTime::now()) {
                    Some(c) => {
                        tracing::warn!(source = %self.fetch.describe(), "refreshing credentials failed; the current ones stay in use until they expire: {err}");
                        Ok(c)
                    }
                    None => Err(err),
                },
            }
        })
    }

    fn describe(&self) -> String {
        self.fetch.describe()
    }
}

/// A provider shared by clients.
pub type SharedProvider = Arc<dyn ProvideCredentials>;
