//! Restart decisions as pure functions of explicit times: exponential backoff with a cap
//! and a reset after a stable run, crash-loop detection over a sliding window, and the
//! memory-limit test. Nothing here reads a clock or sleeps, so every rule is unit-tested
//! with made-up instants; the agent supplies `Instant::now()` and a random jitter value.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::procfs::ProcessStats;

/// Exponential restart delay: `base * factor^n`, capped, where `n` counts the failures
/// since the instance last stayed up for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub factor: u32,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2,
            cap: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before restart number `failures + 1` (`failures` = 0 gives `base`).
    pub fn delay(&self, failures: u32) -> Duration {
        let mut d = self.base;
        for _ in 0..failures {
            d = d.saturating_mul(self.factor.max(1));
            if d >= self.cap {
                return self.cap;
            }
        }
        d.min(self.cap)
    }
}

/// Tracks one instance slot's consecutive failures for [`Backoff`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartTracker {
    failures: u32,
}

impl RestartTracker {
    /// Records an exit after `uptime` and returns the delay before the next start. An
    /// instance that stayed up `reset_after` or longer starts again from `base`.
    pub fn next_delay(&mut self, backoff: &Backoff, uptime: Duration) -> Duration {
        if uptime >= backoff.reset_after {
            self.failures = 0;
        }
        let d = backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Spreads restarts of many instances that crashed together: adds up to 10 % of `delay`,
/// scaled by `unit` in `[0, 1)` (the caller's random number). Never shortens a delay.
pub fn jittered(delay: Duration, unit: f64) -> Duration {
    delay + delay.mul_f64(unit.clamp(0.0, 1.0) * 0.1)
}

/// A crash loop is `max_failures` failures within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub window: Duration,
    pub max_failures: usize,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            window: Duration::from_secs(300),
            max_failures: 5,
        }
    }
}

/// The recent failures of one slot, for [`CrashLoop`].
#[derive(Debug, Clone, Default)]
pub struct CrashLoopDetector {
    failures: VecDeque<Instant>,
}

impl CrashLoopDetector {
    /// Records a failure at `at`; true if the slot is now in a crash loop.
    pub fn record_failure(&mut self, rule: &CrashLoop, at: Instant) -> bool {
        self.failures.push_back(at);
        self.is_looping(rule, at)
    }

    /// Whether the failures inside the window ending at `now` reach the limit. Older
    /// failures are forgotten, so a slot leaves the crash loop once it stays up.
    pub fn is_looping(&mut self, rule: &CrashLoop, now: Instant) -> bool {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > rule.window)
        {
            self.failures.pop_front();
        }
        self.failures.len() >= rule.max_failures.max(1)
    }
}

/// Whether an instance's tree uses more resident memory than `limit_bytes`.
pub fn memory_exceeded(stats: &ProcessStats, limit_bytes: u64) -> bool {
    stats.rss_bytes > limit_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff {
            base: S(1),
            factor: 2,
            cap: S(60),
            reset_after: S(30),
        };
        let got: Vec<u64> = (0..10).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), S(60));
    }

    #[test]
    fn tracker_grows_on_quick_crashes_and_resets_after_a_stable_run() {
        let b = Backoff {
            base: S(1),
            factor: 2,
            cap: S(8),
            reset_after: S(30),
        };
        let mut t = RestartTracker::default();
        let quick: Vec<u64> = (0..6).map(|_| t.next_delay(&b, S(1)).as_secs()).collect();
        assert_eq!(quick, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(t.next_delay(&b, S(30)), S(1), "a run of reset_after resets");
        assert_eq!(t.next_delay(&b, S(29)), S(2), "a shorter run does not");
    }

    #[test]
    fn jitter_never_shortens_and_stays_within_ten_percent() {
        let d = S(10);
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, 0.5), Duration::from_millis(10_500));
        assert!(jittered(d, 0.999_999) <= Duration::from_millis(11_000));
        assert_eq!(
            jittered(d, 7.0),
            Duration::from_millis(11_000),
            "out-of-range unit is clamped"
        );
    }

    #[test]
    fn crash_loop_needs_k_failures_inside_the_window() {
        let rule = CrashLoop {
            window: S(60),
            max_failures: 3,
        };
        let t0 = Instant::now();
        let mut d = CrashLoopDetector::default();
        assert!(!d.record_failure(&rule, t0));
        assert!(!d.record_failure(&rule, t0 + S(30)));
        assert!(d.record_failure(&rule, t0 + S(59)), "3 in 59 s");
        // The first failure leaves the window: no longer looping until another comes.
        assert!(!d.is_looping(&rule, t0 + S(61)));
        assert!(
            d.record_failure(&rule, t0 + S(62)),
            "30, 59, 62 are within 60 s"
        );
        assert!(
            !d.is_looping(&rule, t0 + S(200)),
            "quiet for a window ends the loop"
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_loop() {
        let rule = CrashLoop {
            window: S(10),
            max_failures: 2,
        };
        let t0 = Instant::now();
        let mut d = CrashLoopDetector::default();
        for i in 0..20 {
            assert!(!d.record_failure(&rule, t0 + S(11 * i)), "failure {i}");
        }
    }

    #[test]
    fn memory_limit_is_strictly_above() {
        let s = ProcessStats {
            rss_bytes: 100,
            cpu_seconds: 0.0,
            processes: 1,
        };
        assert!(!memory_exceeded(&s, 100));
        assert!(memory_exceeded(&s, 99));
    }
}
