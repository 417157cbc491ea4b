//! The restart rules driven the way the agent drives them, with real crashing processes:
//! each failure's delay grows by the backoff factor up to its cap, the crash loop is
//! declared at the K-th failure inside the window, and a run longer than `reset_after`
//! starts the backoff again from its base. Delays are kept short (tens of ms) so the test
//! is quick; nothing is asserted about how long anything took.

mod common;

use std::time::{Duration, Instant};

use common::{spec, supervisor, LONG};
use hoist_supervisor::{Backoff, CrashLoop, CrashLoopDetector, RestartTracker};
use hoist_testkit::tempdir;

#[test]
fn a_crashing_instance_is_restarted_with_growing_backoff_until_a_crash_loop() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let ms = Duration::from_millis;
    let backoff = Backoff {
        base: ms(20),
        factor: 2,
        cap: ms(160),
        reset_after: Duration::from_secs(3600),
    };
    let rule = CrashLoop {
        window: Duration::from_secs(3600),
        max_failures: 6,
    };
    let mut tracker = RestartTracker::default();
    let mut detector = CrashLoopDetector::default();

    let mut delays = Vec::new();
    let mut looping_at = None;
    for attempt in 1..=8 {
        let started = Instant::now();
        let inst = sup
            .spawn(&spec(root.path(), "crashy", "echo starting; exit 1"))
            .unwrap();
        assert!(inst.wait_stopped(LONG));
        let exit = inst.exit_status().unwrap().unwrap();
        assert!(exit.is_failure(), "{exit:?}");
        sup.forget("crashy").unwrap();
        if detector.record_failure(&rule, Instant::now()) && looping_at.is_none() {
            looping_at = Some(attempt);
        }
        let delay = tracker.next_delay(&backoff, started.elapsed());
        delays.push(delay);
        std::thread::sleep(delay); // the backoff itself, as the agent waits it
    }
    assert_eq!(delays, [20, 40, 80, 160, 160, 160, 160, 160].map(ms));
    assert_eq!(
        looping_at,
        Some(6),
        "crash loop declared at the 6th failure"
    );
    assert_eq!(tracker.failures(), 8);
    // Every start wrote to the same log; each attempt's line is there.
    let lines = hoist_supervisor::logs::read(&root.path().join("logs"), "web", &Default::default())
        .unwrap();
    assert_eq!(lines.iter().filter(|l| l.line == "starting").count(), 8);

    // A run that outlasts reset_after starts again from the base.
    let stable = Backoff {
        reset_after: Duration::ZERO,
        ..backoff
    };
    assert_eq!(tracker.next_delay(&stable, ms(1)), ms(20));
}
