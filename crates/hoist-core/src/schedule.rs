//! When a job or a backup runs: every fixed interval, or on a 5-field cron expression (with
//! the `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` aliases), always in UTC.
//! Pure: the caller passes the current time; nothing here reads the clock.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::human_duration;

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron expression `{expr}` has {found} fields; expected 5 \
         (minute hour day-of-month month day-of-week) or an alias like `@daily`"
    )]
    FieldCount { expr: String, found: usize },
    #[error(
        "unknown cron alias `{expr}`; expected `@hourly`, `@daily`, `@weekly`, `@monthly` \
         or `@yearly`"
    )]
    UnknownAlias { expr: String },
    #[error("invalid cron expression `{expr}`: {reason}")]
    Invalid { expr: String, reason: String },
}

/// A parsed cron expression that remembers the text it was written as (which is what is
/// shown, serialised and compared).
#[derive(Clone)]
pub struct CronExpr {
    text: String,
    // Boxed: a parsed pattern is a few hundred bytes and schedules sit in enums.
    cron: Box<croner::Cron>,
}

const ALIASES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, ScheduleError> {
        let trimmed = text.trim();
        let is_alias = ALIASES.iter().any(|a| a.eq_ignore_ascii_case(trimmed));
        if !is_alias && trimmed.starts_with('@') {
            return Err(ScheduleError::UnknownAlias {
                expr: text.to_string(),
            });
        }
        if !is_alias {
            // Count fields ourselves: croner also accepts 6 and 7 fields (seconds, years),
            // which a job schedule does not need and which would surprise a cron user.
            let found = trimmed.split_whitespace().count();
            if found != 5 {
                return Err(ScheduleError::FieldCount {
                    expr: text.to_string(),
                    found,
                });
            }
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(trimmed).map_err(|e| ScheduleError::Invalid {
            expr: text.to_string(),
            reason: field_problem(&parser, trimmed).unwrap_or_else(|| cron_reason(&e)),
        })?;
        Ok(CronExpr {
            text: trimmed.to_string(),
            cron: Box::new(cron),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or `JAN`-`DEC`"),
    ("day-of-week", "0-7 or `SUN`-`SAT`"),
];

/// Names the first field that croner refuses on its own (the others replaced by `*`), so
/// the message can say which field is wrong and what it accepts.
fn field_problem(parser: &CronParser, expr: &str) -> Option<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return None;
    }
    (0..FIELDS.len()).find_map(|i| {
        let probe: Vec<&str> = (0..FIELDS.len()).map(|j| if i == j { fields[j] } else { "*" }).collect();
        parser.parse(&probe.join(" ")).err().map(|_| {
            let (name, range) = FIELDS[i];
            format!("{name} field `{}` is not valid; expected {range}, `*`, a range `a-b`, a list `a,b` or a step `*/n`", fields[i])
        })
    })
}

/// croner's messages are sentences ("Invalid pattern: …."); ours are lowercase fragments.
fn cron_reason(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let raw = match e {
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let raw = raw.trim().trim_end_matches('.');
    let mut chars = raw.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronExpr {}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for CronExpr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CronExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A job's or a backup's schedule. Serialised as `{"every":"5m"}` or `{"cron":"0 3 * * *"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Every(#[serde(with = "human_duration")] Duration),
    Cron(CronExpr),
}

impl Schedule {
    /// The next run strictly after `after` (for `Every`, one interval later: the caller
    /// passes the previous run's start so that runs do not drift by their own duration).
    /// `None` when a cron expression never matches again (such as 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => chrono::Duration::from_std(*d)
                .ok()
                .and_then(|d| after.checked_add_signed(d)),
            Schedule::Cron(c) => c.next_after(after),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", crate::units::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron `{c}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn cron_next_after() {
        let nightly = Schedule::Cron(CronExpr::parse("0 3 * * *").unwrap());
        assert_eq!(
            nightly.next_after(at(2026, 1, 1, 2, 59, 59)),
            Some(at(2026, 1, 1, 3, 0, 0))
        );
        assert_eq!(
            nightly.next_after(at(2026, 1, 1, 3, 0, 0)),
            Some(at(2026, 1, 2, 3, 0, 0))
        );
        let quarter = CronExpr::parse("*/15 * * * *").unwrap();
        assert_eq!(
            quarter.next_after(at(2026, 5, 5, 10, 7, 12)),
            Some(at(2026, 5, 5, 10, 15, 0))
        );
        let hourly = CronExpr::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(at(2026, 5, 5, 10, 7, 12)),
            Some(at(2026, 5, 5, 11, 0, 0))
        );
        let daily = CronExpr::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(at(2026, 12, 31, 23, 0, 0)),
            Some(at(2027, 1, 1, 0, 0, 0))
        );
        let monday = CronExpr::parse("30 9 * * MON").unwrap();
        // 2026-11-23 is a Monday.
        assert_eq!(
            monday.next_after(at(2026, 11, 20, 0, 0, 0)),
            Some(at(2026, 11, 23, 9, 30, 0))
        );
    }

    #[test]
    fn every_next_after() {
        let every = Schedule::Every(Duration::from_secs(300));
        assert_eq!(
            every.next_after(at(2026, 1, 1, 0, 0, 0)),
            Some(at(2026, 1, 1, 0, 5, 0))
        );
    }

    #[test]
    fn cron_refused() {
        let errors: Vec<String> = [
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "0 0 * * funday",
            "@often",
        ]
        .iter()
        .map(|t| CronExpr::parse(t).unwrap_err().to_string())
        .collect();
        expect_test::expect![[r#"
            [
                "cron expression `* * * *` has 4 fields; expected 5 (minute hour day-of-month month day-of-week) or an alias like `@daily`",
                "cron expression `0 0 * * * *` has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or an alias like `@daily`",
                "invalid cron expression `61 * * * *`: minute field `61` is not valid; expected 0-59, `*`, a range `a-b`, a list `a,b` or a step `*/n`",
                "invalid cron expression `0 0 * * funday`: day-of-week field `funday` is not valid; expected 0-7 or `SUN`-`SAT`, `*`, a range `a-b`, a list `a,b` or a step `*/n`",
                "unknown cron alias `@often`; expected `@hourly`, `@daily`, `@weekly`, `@monthly` or `@yearly`",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn schedule_serialises_in_human_form() {
        let every = Schedule::Every(Duration::from_secs(300));
        assert_eq!(serde_json::to_string(&every).unwrap(), r#"{"every":"5m"}"#);
        let cron = Schedule::Cron(CronExpr::parse("0 3 * * *").unwrap());
        let json = serde_json::to_string(&cron).unwrap();
        assert_eq!(json, r#"{"cron":"0 3 * * *"}"#);
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), cron);
    }
}
