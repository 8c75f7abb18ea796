//! How `Refreshing` behaves around a refresh, against a stand-in `Fetch` the test holds in its
//! hand: a refresh it can keep waiting (a closed gate) or let fail, and that counts its calls.
//! While the current keys are valid no caller waits and one refresh runs; a failed refresh is
//! one retry sequence, remembered for a backoff; once the keys have expired every caller
//! waits on the same fetch and shares its outcome. Times come from real clocks, so keys live
//! a few seconds; the assertions are on counts and keys, and every wait is bounded so that a
//! provider that blocks fails the test instead of hanging it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ossmount::oss::credentials::{Expiring, Fetch, ProvideCredentials, Refreshing};
use ossmount::oss::{Credentials, OssError, Secret};
use tokio::sync::Semaphore;

/// What `Refreshing` does with a failed fetch before it gives up (its default).
const ATTEMPTS: u32 = 3;
/// More than any wait the fixed provider needs; the old one waited here forever.
const BOUND: Duration = Duration::from_secs(10);

/// Hands out `key-1`, `key-2`, … each valid for `lifetime`. The first fetch answers at once;
/// later ones wait at `gate` until the test adds permits, then fail when `later_fail` is set.
struct StandIn {
    calls: Arc<AtomicU32>,
    gate: Arc<Semaphore>,
    lifetime: Duration,
    later_fail: bool,
}

impl StandIn {
    fn new(lifetime: Duration, later_fail: bool) -> (StandIn, Arc<AtomicU32>, Arc<Semaphore>) {
        let calls = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let fetch = StandIn {
            calls: calls.clone(),
            gate: gate.clone(),
            lifetime,
            later_fail,
        };
        (fetch, calls, gate)
    }
}

impl Fetch for StandIn {
    fn fetch(&self) -> ossmount::store::BoxFut<'_, Result<Expiring, OssError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n > 1 {
                self.gate.acquire().await.unwrap().forget();
                if self.later_fail {
                    return Err(OssError::Config(format!("stand-in STS is down (call {n})")));
                }
            }
            Ok(Expiring {
                credentials: Credentials {
                    access_key_id: format!("key-{n}"),
                    access_key_secret: Secret::new(format!("secret-{n}")),
                    security_token: Some(Secret::new(format!("token-{n}"))),
                },
                expiration: Some(SystemTime::now() + self.lifetime),
            })
        })
    }

    fn describe(&self) -> String {
        "a stand-in STS".into()
    }
}

async fn key_id(p: &(impl ProvideCredentials + ?Sized)) -> Result<String, String> {
    match tokio::time::timeout(BOUND, p.credentials()).await {
        Ok(Ok(c)) => Ok(c.access_key_id),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {BOUND:?}")),
    }
}

/// `n` concurrent callers; their answers in order of asking.
fn ask_concurrently<F: Fetch + 'static>(
    p: &Arc<Refreshing<F>>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<String, String>>> {
    (0..n)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { key_id(&*p).await })
        })
        .collect()
}

/// Waits (bounded) until the stand-in has been called `want` times.
async fn until_calls(calls: &AtomicU32, want: u32) -> u32 {
    let start = Instant::now();
    while calls.load(Ordering::SeqCst) < want && start.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    calls.load(Ordering::SeqCst)
}

/// Keys live 8 s, so the margin is the last 8/3 s; sleeps until that margin has begun.
async fn inside_the_margin(
    later_fail: bool,
) -> (Arc<Refreshing<StandIn>>, Arc<AtomicU32>, Arc<Semaphore>) {
    let (fetch, calls, gate) = StandIn::new(Duration::from_secs(8), later_fail);
    let p = Arc::new(Refreshing::new(fetch));
    assert_eq!(key_id(&*p).await.unwrap(), "key-1");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    (p, calls, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inside_the_margin_nobody_waits_for_the_refresh_and_it_runs_once() {
    let (p, calls, gate) = inside_the_margin(false).await;
    // The refresh is held at the gate throughout: every caller answers without it.
    let callers = ask_concurrently(&p, 50);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "key-1");
    }
    assert_eq!(until_calls(&calls, 2).await, 2, "one refresh started");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "and only one");
    gate.add_permits(1);
    let start = Instant::now();
    while key_id(&*p).await.unwrap() != "key-2" {
        assert!(
            start.elapsed() < BOUND,
            "the refreshed keys never came into use"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inside_the_margin_a_failed_refresh_is_one_retry_sequence_then_a_backoff() {
    let (p, calls, gate) = inside_the_margin(true).await;
    gate.add_permits(1000);
    let callers = ask_concurrently(&p, 10);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "key-1");
    }
    assert_eq!(until_calls(&calls, 1 + ATTEMPTS).await, 1 + ATTEMPTS);
    // The sequence has failed (or is about to be recorded as failed): a caller now still gets
    // the valid keys, and starts no second sequence while the backoff lasts.
    assert_eq!(key_id(&*p).await.unwrap(), "key-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(key_id(&*p).await.unwrap(), "key-1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1 + ATTEMPTS,
        "a refresh was tried again within the backoff"
    );
}

/// Keys that lived 1 s and have expired.
async fn expired(later_fail: bool) -> (Arc<Refreshing<StandIn>>, Arc<AtomicU32>, Arc<Semaphore>) {
    let (fetch, calls, gate) = StandIn::new(Duration::from_secs(1), later_fail);
    let p = Arc::new(Refreshing::new(fetch));
    assert_eq!(key_id(&*p).await.unwrap(), "key-1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    (p, calls, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_keys_are_replaced_by_one_fetch_that_every_caller_waits_for() {
    let (p, calls, gate) = expired(false).await;
    let callers = ask_concurrently(&p, 20);
    assert_eq!(until_calls(&calls, 2).await, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        callers.iter().all(|c| !c.is_finished()),
        "a caller answered with expired keys"
    );
    gate.add_permits(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "key-2");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one fetch for all callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_keys_and_a_failed_fetch_fail_every_caller_once_then_fast() {
    let (p, calls, gate) = expired(true).await;
    let callers = ask_concurrently(&p, 10);
    assert_eq!(until_calls(&calls, 2).await, 2);
    gate.add_permits(1000);
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        assert!(err.contains("stand-in STS is down"), "{err}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1 + ATTEMPTS,
        "the callers shared one retry sequence"
    );
    // Within the backoff a caller gets the remembered error at once, without a fetch.
    let err = key_id(&*p).await.unwrap_err();
    assert!(err.contains(&format!("call {}", 1 + ATTEMPTS)), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1 + ATTEMPTS);
}
