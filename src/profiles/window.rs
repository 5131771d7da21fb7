//! The prefetch window that all profiles share, and each one's fair share of it
//! (SPEC section 9).
//!
//! A profile that is deferring its own events although it is within its share (a hanging
//! endpoint, an open breaker, a rate limit far behind) cannot use more of the window: any
//! event of its that arrives is deferred as well. It keeps what it holds but does not count
//! when the window is divided, so the others' shares are not kept free for it. Without this,
//! the slots it gives up go round in circles: the broker fills each with the next event in
//! the queue, a busy healthy profile's, which is over that profile's share and deferred in
//! turn, freeing the slot for the next one.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since the process's first look at the clock: instants that fit an atomic.
pub(super) fn micros(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_micros() as u64
}

/// The prefetch window, shared by all profiles.
#[derive(Debug)]
pub struct Window {
    pub prefetch: usize,
    /// Profiles with at least one event in hand.
    pub(super) active: AtomicUsize,
    /// The most profiles seen with events in hand within the last [`RECENT`], and when that
    /// was last confirmed. A profile whose events the broker cannot send because the window is
    /// full holds none for a moment; it still needs its share.
    peak: AtomicUsize,
    peak_at_us: AtomicU64,
    /// Profiles with events in hand that deferred one of them within their share during the
    /// last [`RECENT`]: they do not count for the fair share.
    pub(super) saturated: AtomicUsize,
}

/// How long a profile that had events in hand still counts for the fair share, and how long
/// one that had to defer within its share does not.
pub(super) const RECENT: Duration = Duration::from_secs(1);

impl Window {
    pub fn new(prefetch: usize) -> Self {
        Self {
            prefetch,
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            peak_at_us: AtomicU64::new(0),
            saturated: AtomicUsize::new(0),
        }
    }

    /// A profile's fair share: `prefetch / profiles with events in hand` (counting those that
    /// had some within the last second, not those deferring within their share), at least 1.
    pub fn share(&self) -> usize {
        self.share_at(micros(Instant::now()))
    }

    /// [`Window::share`] at `now` (microseconds on the gate's clock).
    fn share_at(&self, now: u64) -> usize {
        let active = self.active.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        let stale =
            now.saturating_sub(self.peak_at_us.load(Ordering::Relaxed)) > RECENT.as_micros() as u64;
        let profiles = if active >= peak || stale {
            self.peak.store(active, Ordering::Relaxed);
            self.peak_at_us.store(now, Ordering::Relaxed);
            active
        } else {
            peak
        };
        let saturated = self.saturated.load(Ordering::Relaxed);
        (self.prefetch / profiles.saturating_sub(saturated).max(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_counts_profiles_that_had_events_within_the_last_second() {
        let w = Window::new(64);
        assert_eq!(w.share_at(0), 64, "no one: the whole window");
        w.active.store(2, Ordering::Relaxed);
        assert_eq!(w.share_at(0), 32);
        // The other profile holds nothing for a moment (say, the broker cannot send it more
        // because the window is full): it still counts.
        w.active.store(1, Ordering::Relaxed);
        assert_eq!(w.share_at(0), 32);
        // A second later it no longer does.
        let later = RECENT.as_micros() as u64 + 1;
        assert_eq!(w.share_at(later), 64);
        w.active.store(3, Ordering::Relaxed);
        assert_eq!(w.share_at(later), 21);
        // One of the three defers its own events within its share: the other two split it.
        w.saturated.store(1, Ordering::Relaxed);
        assert_eq!(w.share_at(later), 32);
        w.saturated.store(3, Ordering::Relaxed);
        assert_eq!(w.share_at(later), 64, "all saturated: the whole window");
        let tiny = Window::new(2);
        tiny.active.store(5, Ordering::Relaxed);
        assert_eq!(tiny.share_at(0), 1, "at least one");
    }
}
