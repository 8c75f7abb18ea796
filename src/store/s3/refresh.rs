//! Temporary AWS credentials kept fresh: the same design as the OSS chain's `Refreshing`
//! (`oss::credentials`), on the store's own types so the S3 client owes nothing to the OSS
//! one. Keys are refreshed a margin before they expire (a third of their lifetime, at most the
//! AWS SDKs' five minutes), by one background refresh while callers go on signing with the
//! current keys; only callers without valid keys wait, all on that one refresh. A failed
//! refresh (its retries included) is remembered and backed off, and callers without valid keys
//! get its error at once meanwhile. No secret reaches a log line: the key id is masked.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::credentials::{AwsCredentials, CredentialSource};
use crate::store::{BoxFut, StoreError, StoreErrorKind};

/// Credentials with the time they stop working (`None`: they do not expire).
#[derive(Clone, Debug)]
pub struct Expiring {
    pub credentials: AwsCredentials,
    pub expiration: Option<SystemTime>,
}

/// Fetches a fresh set of temporary credentials (STS, a container endpoint, IMDS).
pub trait Fetch: Send + Sync {
    fn fetch(&self) -> BoxFut<'_, Result<Expiring, StoreError>>;
    /// Which source, for messages (never a secret).
    fn describe(&self) -> String;
    /// Who signs: the same for every set this source hands out (a role, an endpoint).
    fn principal(&self) -> String {
        self.describe()
    }
}

/// The first wait after a failed refresh; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between refreshes (while valid keys remain, also at most a quarter of the
/// margin, so that several refreshes are tried before the keys expire).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest margin: the AWS SDKs refresh five minutes before expiry.
const MAX_MARGIN: Duration = Duration::from_secs(300);

/// A `Fetch` behind a cache that refreshes ahead of expiry. See the module comment.
pub struct Refreshing<F: Fetch + 'static> {
    shared: Arc<Shared<F>>,
}

struct Shared<F> {
    fetch: F,
    state: Mutex<State>,
    attempts: u32,
    retry_delay: Duration,
    /// Bounds one fetch whatever the source does (the HTTP clients have shorter timeouts).
    attempt_timeout: Duration,
}

/// A refresh's outcome, once, for every caller waiting on it.
type Outcome = Result<AwsCredentials, StoreError>;

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// The refresh under way; its outcome appears here when it ends.
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
    /// The last refresh failed: when the next may start, and what to tell callers until then.
    failure: Option<Failure>,
}

struct Held {
    credentials: AwsCredentials,
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
    error: StoreError,
    retry_after: Instant,
    in_a_row: u32,
}

/// What a caller does next, decided under the state's lock.
enum Next {
    Use(AwsCredentials),
    Fail(StoreError),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl<F: Fetch + 'static> Refreshing<F> {
    pub fn new(fetch: F) -> Refreshing<F> {
        Refreshing::with_state(fetch, State::default())
    }

    /// Holding `first`, fetched already (by a probe that had to ask the source anyway).
    pub fn seeded(fetch: F, first: Expiring) -> Refreshing<F> {
        let state = State {
            held: Some(Held::new(first, SystemTime::now())),
            ..State::default()
        };
        Refreshing::with_state(fetch, state)
    }

    fn with_state(fetch: F, state: State) -> Refreshing<F> {
        Refreshing {
            shared: Arc::new(Shared {
                fetch,
                state: Mutex::new(state),
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
                // Started here, already running or backing off: this caller waits for none.
                let _ = self.join_or_start_refresh(&mut state);
            }
            return Next::Use(credentials);
        }
        match self.join_or_start_refresh(&mut state) {
            Some(refresh) => Next::Wait(refresh),
            None => Next::Fail(state.failure.as_ref().expect("a backoff").error.clone()),
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

    fn record(&self, state: &mut State, result: Result<Expiring, StoreError>) -> Outcome {
        match result {
            Ok(e) => {
                tracing::info!(
                    source = %self.fetch.describe(),
                    access_key_id = %masked_key_id(&e.credentials.access_key_id),
                    expires = ?e.expiration.map(crate::store::time::iso8601_extended),
                    "fetched temporary AWS credentials"
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
                    tracing::warn!(source = %self.fetch.describe(), in_a_row, "refreshing AWS credentials failed; the current ones stay in use until they expire, next attempt in {backoff:?}: {err}");
                } else {
                    tracing::warn!(source = %self.fetch.describe(), in_a_row, "fetching AWS credentials failed; requests fail with this error until the next attempt in {backoff:?}: {err}");
                }
                state.failure = Some(Failure {
                    error: err.clone(),
                    retry_after: Instant::now() + backoff,
                    in_a_row,
                });
                Err(err)
            }
        }
    }

    async fn fetch_with_retries(&self) -> Result<Expiring, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(self.attempt_timeout, self.fetch.fetch())
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::new(
                        StoreErrorKind::Transient,
                        format!(
                            "{} did not answer within {:?}",
                            self.fetch.describe(),
                            self.attempt_timeout
                        ),
                    ))
                });
            match result {
                Ok(e) => return Ok(e),
                // Refused (a bad token, a missing role): asking again at once will not help.
                Err(e) if attempt >= self.attempts || e.kind != StoreErrorKind::Transient => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(source = %self.fetch.describe(), attempt, "fetching AWS credentials failed, retrying: {e}");
                    tokio::time::sleep(self.retry_delay * attempt).await;
                }
            }
        }
    }
}

impl<F: Fetch + 'static> fmt::Debug for Refreshing<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refreshing credentials from {}",
            self.shared.fetch.describe()
        )
    }
}

impl<F: Fetch + 'static> CredentialSource for Refreshing<F> {
    fn credentials(&self) -> BoxFut<'_, Result<AwsCredentials, StoreError>> {
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
            outcome.unwrap_or_else(|| {
                Err(StoreError::new(
                    StoreErrorKind::Transient,
                    format!(
                        "fetching AWS credentials from {} stopped without an answer",
                        self.shared.fetch.describe()
                    ),
                ))
            })
        })
    }

    fn principal(&self) -> String {
        self.shared.fetch.principal()
    }
}

/// An access key id as logs show it: its first 4 characters and `***` (`ASIA***` tells
/// temporary keys from long-term `AKIA***` ones without naming the key).
pub fn masked_key_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}***")
}
