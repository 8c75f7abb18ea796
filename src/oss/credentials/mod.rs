//! Where the client's credentials come from: the default chain of the official Alibaba Cloud
//! SDKs (flags and environment, an OIDC role through STS, a CLI or ossutil profile, the ECS
//! instance's RAM role, a credentials URI), the first source that yields credentials winning,
//! and temporary credentials refreshed before they expire: a margin ahead of expiry, one
//! refresh at a time in the background while the old credentials still serve, retried and
//! then backed off; a failed refresh while the old credentials are still valid is a warning,
//! not an outage; keys read from files that rotate (`files`) looked at again cheaply and
//! when the service refuses them. Secrets never reach a log line or an error. Must not sign
//! requests (that is `sign`) nor know about files other than the profile and credential
//! files it reads.

pub mod files;
mod sources;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

pub use files::{CredentialFiles, RotatingFiles};
pub use sources::{chain_environment, resolve_chain, ChainOptions};

use super::{Credentials, OssError};
use crate::store::BoxFut;

/// Something that hands out the credentials to sign the next request with.
pub trait ProvideCredentials: Send + Sync {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>>;
    /// Which source, for the log (never a secret).
    fn describe(&self) -> String;
    /// Who signs: the same for every set this source hands out (a key id, a role), so a
    /// cache can tell mounts of different principals apart. Never a secret.
    fn principal(&self) -> String {
        self.describe()
    }
    /// The service refused `rejected` (InvalidAccessKeyId, SecurityTokenExpired, ...): a
    /// source that can look for newer keys does so now. `true` when it now hands out other
    /// keys, so the refused request is worth sending again with them.
    fn refused<'a>(&'a self, rejected: &'a Credentials) -> BoxFut<'a, bool> {
        let _ = rejected;
        Box::pin(async { false })
    }
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

    fn principal(&self) -> String {
        format!("key {}", self.credentials.access_key_id)
    }
}

/// Fetches a fresh set of temporary credentials (from STS, the metadata service, a URI).
pub trait Fetch: Send + Sync {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, OssError>>;
    fn describe(&self) -> String;
}

/// Temporary credentials kept fresh. Once less than the margin (a third of their lifetime, at
/// most three minutes) is left, the first caller starts one refresh in the background and
/// every caller goes on with the current keys: a slow or failing source must not stall reads
/// while the keys still work. Only when there are no keys yet or they have expired do callers
/// wait, all on that one refresh, and all get its outcome. A failed refresh (its retries
/// included) is remembered: the next one waits out a backoff, and meanwhile callers without
/// valid keys get the remembered error at once instead of queueing for their own retries.
pub struct Refreshing<F: Fetch + 'static> {
    shared: Arc<Shared<F>>,
}

/// The first wait after a failed refresh; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between refreshes (while valid keys remain, also at most a quarter of the
/// margin, so that several refreshes are tried before the keys expire).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest margin: keys are refreshed three minutes before they expire at the latest.
const MAX_MARGIN: Duration = Duration::from_secs(180);

struct Shared<F> {
    fetch: F,
    state: Mutex<State>,
    attempts: u32,
    retry_delay: Duration,
    /// Bounds one fetch whatever the source does (the HTTP ones have shorter timeouts).
    attempt_timeout: Duration,
}

/// A refresh's outcome, once, for every caller waiting on it.
type Outcome = Result<Credentials, Arc<OssError>>;

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// The refresh under way; its outcome appears here when it ends.
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
    /// The last refresh failed: when the next may start, and what to tell callers until then.
    failure: Option<Failure>,
}

struct Held {
    credentials: Credentials,
    /// `None`: long-term keys, never refreshed.
    expiration: Option<SystemTime>,
    margin: Duration,
}

impl Held {
    fn new(e: Expiring, fetched: SystemTime) -> Held {
        let lifetime = e
            .expiration
            .and_then(|exp| exp.duration_since(fetched).ok())
            .unwrap_or_default();
        Held {
            credentials: e.credentials,
            expiration: e.expiration,
            margin: (lifetime / 3).min(MAX_MARGIN),
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|exp| exp <= now)
    }

    fn due_for_refresh(&self, now: SystemTime) -> bool {
        self.expiration
            .is_some_and(|exp| exp.duration_since(now).unwrap_or_default() <= self.margin)
    }
}

struct Failure {
    error: Arc<OssError>,
    retry_after: Instant,
    in_a_row: u32,
}

/// What a caller does next, decided under the state's lock.
enum Next {
    Use(Credentials),
    Fail(OssError),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl<F: Fetch + 'static> Refreshing<F> {
    pub fn new(fetch: F) -> Refreshing<F> {
        Refreshing {
            shared: Arc::new(Shared {
                fetch,
                state: Mutex::default(),
                attempts: 3,
                retry_delay: Duration::from_millis(300),
                attempt_timeout: Duration::from_secs(10),
            }),
        }
    }
}

impl<F: Fetch + 'static> Shared<F> {
    fn next(self: &Arc<Self>) -> Next {
        let now = SystemTime::now();
        let mut state = self.state.lock().unwrap();
        let valid = state.held.as_ref().filter(|h| !h.expired(now));
        if let Some((credentials, due)) =
            valid.map(|h| (h.credentials.clone(), h.due_for_refresh(now)))
        {
            if due {
                // Started here or already running or backing off: this caller waits for none.
                let _ = self.join_or_start_refresh(&mut state);
            }
            return Next::Use(credentials);
        }
        match self.join_or_start_refresh(&mut state) {
            Some(refresh) => Next::Wait(refresh),
            None => Next::Fail(reissue(&state.failure.as_ref().expect("a backoff").error)),
        }
    }

    /// The refresh under way, else a new one; `None` while a failed one's backoff lasts.
    fn join_or_start_refresh(
        self: &Arc<Self>,
        state: &mut State,
    ) -> Option<watch::Receiver<Option<Outcome>>> {
        // A refresh whose task vanished (a panic, the runtime shutting down) never answers.
        state
            .in_flight
            .take_if(|r| r.has_changed().is_err() && r.borrow().is_none());
        if let Some(refresh) = &state.in_flight {
            return Some(refresh.clone());
        }
        if state
            .failure
            .as_ref()
            .is_some_and(|f| Instant::now() < f.retry_after)
        {
            return None;
        }
        let (done, refresh) = watch::channel(None);
        state.in_flight = Some(refresh.clone());
        tokio::spawn(self.clone().refresh(done));
        Some(refresh)
    }

    async fn refresh(self: Arc<Self>, done: watch::Sender<Option<Outcome>>) {
        let result = self.fetch_with_retries().await;
        let outcome = {
            let mut state = self.state.lock().unwrap();
            state.in_flight = None;
            self.record(&mut state, result)
        };
        // Sent after the state is updated, so a caller either finds the new state or this.
        done.send_replace(Some(outcome));
    }

    fn record(&self, state: &mut State, result: Result<Expiring, OssError>) -> Outcome {
        match result {
            Ok(e) => {
                tracing::info!(
                    source = %self.fetch.describe(),
                    access_key_id = %masked_key_id(&e.credentials.access_key_id),
                    expires = ?e.expiration.map(super::time::iso8601_extended),
                    "fetched temporary credentials"
                );
                let credentials = e.credentials.clone();
                state.held = Some(Held::new(e, SystemTime::now()));
                state.failure = None;
                Ok(credentials)
            }
            Err(err) => {
                let in_a_row = state.failure.as_ref().map_or(0, |f| f.in_a_row) + 1;
                let valid = state
                    .held
                    .as_ref()
                    .filter(|h| !h.expired(SystemTime::now()));
                let mut backoff = FIRST_BACKOFF
                    .saturating_mul(1u32 << (in_a_row - 1).min(16))
                    .min(MAX_BACKOFF);
                if let Some(held) = valid {
                    backoff = backoff.min(held.margin / 4);
                }
                // One line per failed refresh, however many callers were waiting on it.
                if valid.is_some() {
                    tracing::warn!(source = %self.fetch.describe(), in_a_row, "refreshing credentials failed; the current ones stay in use until they expire, next attempt in {backoff:?}: {err}");
                } else {
                    tracing::warn!(source = %self.fetch.describe(), in_a_row, "fetching credentials failed; requests fail with this error until the next attempt in {backoff:?}: {err}");
                }
                let error = Arc::new(err);
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_after: Instant::now() + backoff,
                    in_a_row,
                });
                Err(error)
            }
        }
    }

    async fn fetch_with_retries(&self) -> Result<Expiring, OssError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(self.attempt_timeout, self.fetch.fetch())
                .await
                .unwrap_or_else(|_| {
                    Err(OssError::Config(format!(
                        "{} did not answer within {:?}",
                        self.fetch.describe(),
                        self.attempt_timeout
                    )))
                });
            match result {
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

/// A copy of a shared error for one more caller (`OssError` is not `Clone`).
fn reissue(e: &OssError) -> OssError {
    match e {
        OssError::Service(s) => OssError::Service(s.clone()),
        OssError::Transport { endpoint, detail } => OssError::Transport {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        OssError::Protocol { endpoint, detail } => OssError::Protocol {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        OssError::NotModified => OssError::NotModified,
        OssError::Config(m) => OssError::Config(m.clone()),
    }
}

impl<F: Fetch + 'static> ProvideCredentials for Refreshing<F> {
    fn credentials(&self) -> BoxFut<'_, Result<Credentials, OssError>> {
        Box::pin(async move {
            let mut refresh = match self.shared.next() {
                Next::Use(c) => return Ok(c),
                Next::Fail(e) => return Err(e),
                Next::Wait(refresh) => refresh,
            };
            // Bounded: the fetch has its attempts, each with a timeout.
            let outcome = match refresh.wait_for(Option::is_some).await {
                Ok(seen) => seen.clone(),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(c)) => Ok(c),
                Some(Err(e)) => Err(reissue(&e)),
                None => Err(OssError::Config(format!(
                    "fetching credentials from {} stopped without an answer",
                    self.shared.fetch.describe()
                ))),
            }
        })
    }

    fn describe(&self) -> String {
        self.shared.fetch.describe()
    }
}

/// A provider shared by clients.
pub type SharedProvider = Arc<dyn ProvideCredentials>;

/// An access key id as logs show it: its first 4 characters and `***`. Enough to tell a
/// long-term key (`LTAI`) from an STS one (`STS.`), not enough to name the key.
pub fn masked_key_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}***")
}

#[cfg(test)]
mod masking_tests {
    #[test]
    fn a_logged_key_id_shows_four_characters_only() {
        assert_eq!(super::masked_key_id("STS.second-key"), "STS.***");
        assert_eq!(super::masked_key_id("LTAI5tAbCdEf"), "LTAI***");
        assert_eq!(super::masked_key_id("ab"), "ab***");
    }
}
