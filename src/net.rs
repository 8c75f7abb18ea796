//! Accepting connections, in one place for every server of the crate (the control socket,
//! the metrics endpoint, the emulator): when accepting fails because the process is out of
//! descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the loop pauses, longer while it
//! goes on failing, instead of retrying at once and spinning a core while nothing can
//! change; it says so once per streak of failures, not once per attempt. Must not know what a
//! connection is for, nor which listener it comes from.

use std::future::Future;
use std::io;
use std::time::Duration;

/// The first pause after a failed accept; it doubles while accepting keeps failing.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause, so a server is back within a second of descriptors coming free.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Whether an accept error concerns only the connection being taken (it went away first):
/// the next one may be accepted at once, so no pause.
fn only_that_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts connections with `accept` (e.g. `|| listener.accept()`) for ever, handing each to
/// `on_connection`. Any error other than one about the single connection (a resource
/// running out, or a listener gone wrong) pauses the loop from 100 ms, doubling up to 1 s,
/// until an accept succeeds again. Runs until its task is aborted or its future dropped.
pub async fn accept_loop<C, Fut>(
    what: &str,
    mut accept: impl FnMut() -> Fut,
    mut on_connection: impl FnMut(C),
) where
    Fut: Future<Output = io::Result<C>>,
{
    let mut pause = FIRST_PAUSE;
    let mut failing = false;
    loop {
        match accept().await {
            Ok(conn) => {
                if failing {
                    tracing::info!("{what}: accepting connections again");
                    failing = false;
                    pause = FIRST_PAUSE;
                }
                on_connection(conn);
            }
            Err(e) if only_that_connection(&e) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "{what}: cannot accept connections ({e}); retrying, at most once a second"
                    );
                    failing = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn out_of_descriptors() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test]
    async fn running_out_of_descriptors_does_not_spin() {
        let attempts = AtomicUsize::new(0);
        let accepting = accept_loop(
            "test",
            || {
                attempts.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(out_of_descriptors()) }
            },
            |_| panic!("nothing to accept"),
        );
        let _ = tokio::time::timeout(Duration::from_millis(300), accepting).await;
        // A hot loop makes millions of attempts in 300 ms; the back-off makes about three
        // (at 0, 100 and 300 ms). The bound is generous against a slow machine.
        let n = attempts.load(Ordering::Relaxed);
        assert!((1..20).contains(&n), "{n} accept attempts in 300 ms");
    }

    #[tokio::test]
    async fn connections_after_failures_are_still_served() {
        let script = Arc::new(Mutex::new(vec![
            Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
            Err(out_of_descriptors()),
            Ok(1),
            Err(io::Error::from_raw_os_error(libc::ENFILE)),
            Ok(2),
        ]));
        let served = Arc::new(Mutex::new(Vec::new()));
        let accepting = {
            let served = served.clone();
            accept_loop(
                "test",
                move || {
                    let mut script = script.lock().unwrap();
                    let next = (!script.is_empty()).then(|| script.remove(0));
                    async move {
                        match next {
                            Some(r) => r,
                            None => std::future::pending().await,
                        }
                    }
                },
                move |c| served.lock().unwrap().push(c),
            )
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                _ = accepting => {}
                _ = async {
                    while served.lock().unwrap().len() < 2 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => {}
            }
        })
        .await;
        assert_eq!(*served.lock().unwrap(), [1, 2]);
    }
}
