//! Request slots: a global cap on requests in progress, and under it a cap per
//! principal, so that one token's requests (stalled bodies, say) cannot take the slots
//! every other caller needs. A request holds its two slots until its response head is
//! ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one server.
pub(super) struct Slots {
    /// Every request in progress holds one.
    all: Arc<Semaphore>,
    /// Slots one principal may hold.
    per_principal: usize,
    /// Each principal's semaphore, made on its first request. Principals come from the
    /// token table (callers without a valid token share one entry), so this stays small.
    principals: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A request's right to be handled: released when dropped.
pub(super) struct Slot {
    _principal: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Slots {
    /// `all` slots in total, `per_principal` for each principal.
    pub(super) fn new(all: usize, per_principal: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all)),
            per_principal,
            principals: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot of `principal` and then one of the total; `None` only if the
    /// semaphores were closed (they never are).
    pub(super) async fn acquire(&self, principal: &str) -> Option<Slot> {
        let mine = {
            let mut principals = self.principals.lock().unwrap_or_else(PoisonError::into_inner);
            principals
                .entry(principal.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_principal)))
                .clone()
        };
        // The principal's slot first: a principal at its cap waits without holding
        // one of the shared slots.
        let principal = mine.acquire_owned().await.ok()?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some(Slot { _principal: principal, _all: all })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test(start_paused = true)]
    async fn a_principal_at_its_cap_does_not_block_another() {
        let slots = Slots::new(4, 2);
        let a1 = slots.acquire("alice").await;
        let a2 = slots.acquire("alice").await;
        assert!(a1.is_some() && a2.is_some());
        assert!(tokio::time::timeout(SOON, slots.acquire("alice")).await.is_err());
        let b1 = slots.acquire("bob").await;
        assert!(b1.is_some());
        drop(a1);
        assert!(tokio::time::timeout(SOON, slots.acquire("alice")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_caps_all_principals_together() {
        let slots = Slots::new(2, 2);
        let _a = slots.acquire("alice").await;
        let _b = slots.acquire("bob").await;
        assert!(tokio::time::timeout(SOON, slots.acquire("carol")).await.is_err());
    }
}
