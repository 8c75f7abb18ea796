//! A limit on requests in flight across every hydration of a mount, with a reserve that only
//! demand fetches (parts a reader is waiting for) may use: background parts can never take
//! the last connections, so a reader always gets one first.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    background: Arc<Semaphore>,
    max: usize,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    _background: Option<OwnedSemaphorePermit>,
}

impl ConnectionLimiter {
    /// `max` connections in all, of which `reserved_for_demand` are never used by background
    /// fetches (at least one connection stays open to them).
    pub fn new(max: usize, reserved_for_demand: usize) -> Arc<ConnectionLimiter> {
        let max = max.max(1);
        let background = max.saturating_sub(reserved_for_demand).max(1);
        Arc::new(ConnectionLimiter {
            total: Arc::new(Semaphore::new(max)),
            background: Arc::new(Semaphore::new(background)),
            max,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.total.available_permits()
    }

    pub async fn acquire(&self, demand: bool) -> ConnectionPermit {
        let background = if demand {
            None
        } else {
            Some(
                self.background
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("limiter semaphores are never closed"),
            )
        };
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("limiter semaphores are never closed");
        ConnectionPermit {
            _total: total,
            _background: background,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn demand_gets_a_connection_while_background_is_saturated() {
        let lim = ConnectionLimiter::new(4, 1);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(lim.acquire(false).await);
        }
        // A fourth background fetch must wait...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), lim.acquire(false))
                .await
                .is_err()
        );
        // ...but a demand fetch gets the reserved connection at once.
        let d = tokio::time::timeout(Duration::from_millis(50), lim.acquire(true)).await;
        assert!(d.is_ok());
        assert_eq!(lim.in_flight(), 4);
    }
}
