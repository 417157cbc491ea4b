//! Grandfather-father-son retention as a pure function: given backups with their times,
//! which ones to keep. No clock, no files: the caller deletes the rest.
//!
//! The rule, in UTC, over the backups given (newest first, ties broken by id):
//! - daily `d`: the newest backup of each of the `d` most recent calendar days that have
//!   a backup;
//! - weekly `w`: the newest backup of each of the `w` most recent ISO weeks that have one;
//! - monthly `m`: the newest backup of each of the `m` most recent calendar months that
//!   have one;
//! - the newest backup overall, always (even with every count at 0);
//! - last `l`: the `l` newest backups, whatever their day (a manual backup taken minutes
//!   before a deploy is not pruned by that deploy's own backup the same day).
//!
//! The kept set is the union, so a backup can count for a day, its week and its month at
//! once. Periods without backups do not use up a slot: a host that was off for a week
//! still keeps `d` dailies.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};
use hoist_core::spec::Keep;

/// The ids of `backups` (id, time) that `keep` retains.
pub fn keep<T: Copy + Ord>(backups: &[(T, DateTime<Utc>)], keep: Keep) -> BTreeSet<T> {
    let mut sorted: Vec<&(T, DateTime<Utc>)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    if let Some(newest) = sorted.first() {
        kept.insert(newest.0);
    }
    kept.extend(sorted.iter().take(keep.last as usize).map(|b| b.0));
    newest_per_period(&sorted, keep.daily, &mut kept, |t| {
        (t.year(), t.ordinal(), 0)
    });
    newest_per_period(&sorted, keep.weekly, &mut kept, |t| {
        let w = t.iso_week();
        (w.year(), w.week(), 0)
    });
    newest_per_period(&sorted, keep.monthly, &mut kept, |t| {
        (t.year(), t.month(), 0)
    });
    kept
}

/// Walks newest first and keeps the first backup seen in each new period, for `n`
/// periods.
fn newest_per_period<T: Copy + Ord>(
    sorted: &[&(T, DateTime<Utc>)],
    n: u32,
    kept: &mut BTreeSet<T>,
    period: impl Fn(&DateTime<Utc>) -> (i32, u32, u32),
) {
    let mut seen = 0u32;
    let mut last = None;
    for (id, at) in sorted {
        if seen >= n {
            break;
        }
        let p = period(at);
        if last != Some(p) {
            last = Some(p);
            seen += 1;
            kept.insert(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, NaiveDate, TimeZone, Weekday};

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    /// The expected set, derived from the calendar rather than from the rule's code:
    /// the last 7 dates; the last date of each of the last 4 ISO weeks (a Sunday, or the
    /// newest date for the current week); the last date of each of the last 12 months
    /// (the newest date for the current month).
    fn expected(last: NaiveDate, first: NaiveDate) -> BTreeSet<NaiveDate> {
        let mut want = BTreeSet::new();
        for i in 0..7 {
            want.insert(last - Duration::days(i));
        }
        want.insert(last);
        // The current week counts as one (its newest date is `last`); then the Sundays
        // that end the three weeks before it.
        let prev_sunday = last - Duration::days(last.weekday().num_days_from_monday() as i64 + 1);
        assert_eq!(prev_sunday.weekday(), Weekday::Sun);
        for i in 0..3 {
            want.insert(prev_sunday - Duration::weeks(i));
        }
        let (mut y, mut m) = (last.year(), last.month());
        for _ in 1..12 {
            // The day before the first of the month after (y, m-1) is the last of m-1.
            let first_of_this = NaiveDate::from_ymd_opt(y, m, 1).unwrap();
            let end_of_prev = first_of_this - Duration::days(1);
            if end_of_prev >= first {
                want.insert(end_of_prev);
            }
            y = end_of_prev.year();
            m = end_of_prev.month();
        }
        want
    }

    #[test]
    fn a_simulated_400_days_of_dailies_keeps_the_expected_7_4_12() {
        // Seven runs, so that the last day falls on every weekday once.
        for days in 400..407 {
            simulate(days);
        }
    }

    fn simulate(days: i64) {
        // One backup a day at 03:00, plus a second one on some days (a before_deploy
        // backup at 15:00): only the newest of a day may count.
        let start = at(2025, 1, 10, 3);
        let mut backups = Vec::new();
        let mut id = 0i64;
        for day in 0..days {
            let t = start + Duration::days(day);
            backups.push((id, t));
            id += 1;
            if day % 5 == 0 {
                backups.push((id, t + Duration::hours(12)));
                id += 1;
            }
        }
        let kept = keep(
            &backups,
            Keep {
                daily: 7,
                weekly: 4,
                monthly: 12,
                last: 0,
            },
        );
        let last = backups.iter().map(|b| b.1).max().unwrap().date_naive();
        let want_days = expected(last, start.date_naive());
        // Each kept backup is the newest of its day.
        let newest_of = |d: NaiveDate| {
            backups
                .iter()
                .filter(|b| b.1.date_naive() == d)
                .max_by_key(|b| b.1)
                .unwrap()
                .0
        };
        let want: BTreeSet<i64> = want_days.iter().map(|d| newest_of(*d)).collect();
        assert_eq!(kept, want);
        // 7 dailies; weeks and months partly overlap them, so fewer than 7+4+12.
        assert!(kept.len() <= 23 && kept.len() >= 12, "{}", kept.len());
    }

    #[test]
    fn gaps_do_not_use_up_slots_and_the_newest_stays() {
        let backups: Vec<(u32, DateTime<Utc>)> = vec![
            (1, at(2026, 1, 1, 1)),
            (2, at(2026, 1, 20, 1)),
            (3, at(2026, 3, 5, 1)),
            (4, at(2026, 3, 5, 9)),
        ];
        let k = |d, w, m| {
            keep(
                &backups,
                Keep {
                    daily: d,
                    weekly: w,
                    monthly: m,
                    last: 0,
                },
            )
        };
        assert_eq!(k(0, 0, 0), BTreeSet::from([4]));
        assert_eq!(k(2, 0, 0), BTreeSet::from([4, 2]));
        assert_eq!(k(0, 0, 2), BTreeSet::from([4, 2]));
        assert_eq!(k(0, 0, 3), BTreeSet::from([4, 2]));
        assert_eq!(k(9, 0, 0), BTreeSet::from([1, 2, 4]));
        assert!(keep::<u32>(&[], Keep::default()).is_empty());
    }

    #[test]
    fn the_newest_last_backups_stay_whatever_their_day() {
        // A scheduled one at 03:00, a manual one at 14:00, a before_deploy one at 14:05.
        let backups: Vec<(u32, DateTime<Utc>)> = vec![
            (1, at(2026, 3, 5, 3)),
            (2, at(2026, 3, 5, 14)),
            (3, at(2026, 3, 5, 14) + Duration::minutes(5)),
        ];
        let gfs = Keep {
            daily: 7,
            weekly: 4,
            monthly: 12,
            last: 0,
        };
        assert_eq!(keep(&backups, gfs), BTreeSet::from([3]));
        assert_eq!(
            keep(&backups, Keep { last: 2, ..gfs }),
            BTreeSet::from([2, 3])
        );
        assert_eq!(keep(&backups, Keep::default()), BTreeSet::from([1, 2, 3]));
    }
}
