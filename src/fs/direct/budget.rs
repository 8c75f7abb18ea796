//! The mount-wide memory budget of direct readers: bytes a window holds from the moment its
//! fetch may start until the window is dropped, shared by every `DirectReader` of the mount.
//! Owns only the accounting (a semaphore of bytes); which windows take it, and when, is the
//! reader's business. Must not fetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default: 32 windows of 8 MiB, about five sequential readers at full readahead.
pub const DEFAULT_DIRECT_MEMORY: u64 = 256 << 20;

#[derive(Debug)]
pub struct WindowBudget {
    bytes: Arc<Semaphore>,
    cap: u64,
    /// The most bytes held at once, for tests and logs.
    peak: AtomicU64,
}

/// Bytes of the budget, given back when dropped (with the window that holds them).
#[derive(Debug)]
pub struct Claim {
    _bytes: OwnedSemaphorePermit,
}

impl WindowBudget {
    /// `cap` bytes in all, never less than one window (`window`): a budget smaller than one
    /// window would make every reader wait for ever.
    pub fn new(cap: u64, window: u64) -> Arc<WindowBudget> {
        let cap = cap.max(window).min(u32::MAX as u64);
        Arc::new(WindowBudget {
            bytes: Arc::new(Semaphore::new(cap as usize)),
            cap,
            peak: AtomicU64::new(0),
        })
    }

    /// `bytes` if they are free now (readahead never waits for memory). Bytes given back go
    /// to waiting claims first (the semaphore is fair), so readahead cannot starve a reader.
    pub fn try_claim(&self, bytes: u64) -> Option<Claim> {
        let p = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.clamp(bytes))
            .ok()?;
        self.note_peak();
        Some(Claim { _bytes: p })
    }

    /// `bytes`, waiting until they are free. The caller must hold no claim it could give
    /// back instead (see `DirectReader::open_window`).
    pub async fn claim(&self, bytes: u64) -> Claim {
        let p = self
            .bytes
            .clone()
            .acquire_many_owned(self.clamp(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        self.note_peak();
        Claim { _bytes: p }
    }

    #[cfg(test)]
    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn in_use(&self) -> u64 {
        self.cap - self.bytes.available_permits() as u64
    }

    #[cfg(test)]
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn clamp(&self, bytes: u64) -> u32 {
        bytes.min(self.cap) as u32
    }

    fn note_peak(&self) {
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_are_bounded_and_given_back_on_drop() {
        let b = WindowBudget::new(100, 10);
        let a = b.try_claim(60).unwrap();
        assert!(b.try_claim(50).is_none(), "over the cap");
        let c = b.try_claim(40).unwrap();
        assert_eq!(b.in_use(), 100);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.claim(30).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.in_use(), 70);
        drop((c, d));
        assert_eq!((b.in_use(), b.peak()), (0, 100));
        // Never less than one window.
        assert_eq!(WindowBudget::new(1, 10).cap(), 10);
    }
}
