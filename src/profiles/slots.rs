//! A profile's concurrency slots, resizable while slots are held: with `cluster.redis` a
//! replica allows its share of the profile's `concurrency`, which changes as replicas come
//! and go (SPEC section 13).
//!
//! Growing adds permits (first cancelling any still owed); shrinking retires free permits at
//! once and the rest as held slots come back, so at no moment are more slots out than the
//! size once the slots out before the shrink have finished.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    size: AtomicUsize,
    /// Permits to retire as held slots come back.
    owed: AtomicUsize,
    resizing: Mutex<()>,
}

/// One slot, until dropped.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let owed = self
                .slots
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            if owed.is_ok() {
                permit.forget();
            }
        }
    }
}

impl Slots {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Slots {
            semaphore: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
            owed: AtomicUsize::new(0),
            resizing: Mutex::new(()),
        })
    }

    pub fn size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    /// Make the size `target`.
    pub fn fit(&self, target: usize) {
        if self.size() == target {
            return;
        }
        let _one_at_a_time = self.resizing.lock().expect("slots lock");
        let size = self.size();
        if target > size {
            let grow = target - size;
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n - n.min(grow))
                })
                .expect("always Some");
            self.semaphore.add_permits(grow - owed.min(grow));
        } else if target < size {
            let shrink = size - target;
            let retired = self.semaphore.forget_permits(shrink);
            self.owed.fetch_add(shrink - retired, Ordering::AcqRel);
        }
        self.size.store(target, Ordering::Release);
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(Slot {
            permit: Some(permit),
            slots: self.clone(),
        })
    }

    /// Wait for a slot (cancel-safe: dropping the future gives up its place in line).
    pub async fn acquire(self: Arc<Self>) -> Slot {
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Slot {
            permit: Some(permit),
            slots: self,
        }
    }

    /// Free slots now (for tests).
    pub fn available(&self) -> usize {
        self.semaphore
            .available_permits()
            .saturating_sub(self.owed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_while_slots_are_held() {
        let slots = Slots::new(4);
        let held: Vec<Slot> = (0..3).map(|_| slots.try_acquire().unwrap()).collect();
        assert_eq!(slots.available(), 1);
        // Shrink to 2 with 3 held: the free one goes now, one more when a slot comes back.
        slots.fit(2);
        assert_eq!(slots.size(), 2);
        assert!(slots.try_acquire().is_none());
        let mut held = held;
        held.pop();
        assert!(slots.try_acquire().is_none(), "2 still held: none free");
        held.pop();
        let one = slots.try_acquire().expect("1 held of 2");
        assert!(slots.try_acquire().is_none());
        // Grow to 4: two more at once.
        slots.fit(4);
        let more: Vec<Slot> = (0..2).map(|_| slots.try_acquire().unwrap()).collect();
        assert!(slots.try_acquire().is_none());
        drop((one, more, held));
        assert_eq!(slots.available(), 4);
        // Shrink with slots held, then grow before they come back: what was owed is
        // cancelled first.
        let held: Vec<Slot> = (0..4).map(|_| slots.try_acquire().unwrap()).collect();
        slots.fit(1);
        slots.fit(3);
        drop(held);
        assert_eq!(slots.available(), 3);
        let three: Vec<Slot> = (0..3).map(|_| slots.try_acquire().unwrap()).collect();
        assert!(slots.try_acquire().is_none());
        drop(three);
    }
}
