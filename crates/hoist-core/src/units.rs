//! Human durations (`30s`, `1h30m`, `250ms`) and sizes (`512MiB`, `1GB`, `1.5GiB`): parsing,
//! formatting back to the same human form, and the serde glue that makes the spec carry
//! them as strings. Pure: no I/O, no clock.
//!
//! Size units are case-insensitive (`512mib` is `512MiB`): `B`, `KB`/`MB`/`GB`/`TB` are
//! powers of 1000 and `KiB`/`MiB`/`GiB`/`TiB` powers of 1024, as the SI and IEC prefixes
//! say. A decimal mantissa is allowed only when it gives a whole number of bytes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration or a size could not be parsed. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a duration like `30s`, `5m` or `1h30m`, found `{input}`")]
    BadDuration { input: String },
    #[error("unknown duration unit `{unit}` in `{input}`; expected `ms`, `s`, `m`, `h` or `d`")]
    DurationUnit { input: String, unit: String },
    #[error("duration `{input}` is too large")]
    DurationOverflow { input: String },
    #[error("expected a size like `512MiB` or `1GB`, found `{input}`")]
    BadSize { input: String },
    #[error(
        "unknown size unit `{unit}` in `{input}`; expected `B`, `KB`, `MB`, `GB`, `TB` \
         (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024)"
    )]
    SizeUnit { input: String, unit: String },
    #[error("size `{input}` is not a whole number of bytes")]
    FractionalBytes { input: String },
    #[error("size `{input}` is too large")]
    SizeOverflow { input: String },
}

const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a human duration: one or more `<integer><unit>` segments, units `ms`, `s`, `m`,
/// `h`, `d` (`"30s"`, `"5m"`, `"1h30m"`, `"250ms"`, `"2d"`). Spaces between segments are
/// allowed. Millisecond precision is all hoist needs for timeouts and schedules.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::BadDuration {
        input: input.to_string(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(bad());
        }
        let Some(&(_, factor)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(UnitError::DurationUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        };
        let overflow = || UnitError::DurationOverflow {
            input: input.to_string(),
        };
        let n: u64 = number.parse().map_err(|_| overflow())?;
        let ms = n.checked_mul(factor).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(overflow)?;
        rest = tail;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the form [`parse_duration`] reads: `"1h30m"`, `"250ms"`, `"0s"`.
/// Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for &(unit, factor) in DURATION_UNITS {
        let factor = u128::from(factor);
        let n = ms / factor;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms -= n * factor;
        }
    }
    out
}

/// A number of bytes, written and shown in human form (`512MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const KIB: u64 = 1024;
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("kib", KIB),
    ("mib", KIB * KIB),
    ("gib", KIB * KIB * KIB),
    ("tib", KIB * KIB * KIB * KIB),
];
// Display order: the unit that gives the shortest exact number wins; binary first on ties
// because memory limits are usually thought of in MiB.
const DISPLAY_UNITS: &[(&str, u64)] = &[
    ("TiB", KIB * KIB * KIB * KIB),
    ("TB", 1000 * 1000 * 1000 * 1000),
    ("GiB", KIB * KIB * KIB),
    ("GB", 1000 * 1000 * 1000),
    ("MiB", KIB * KIB),
    ("MB", 1000 * 1000),
    ("KiB", KIB),
    ("KB", 1000),
];

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"512MiB"`, `"1GB"`, `"1.5GiB"`, `"100 MB"`, `"4096B"`. A unit is required so
    /// that `512` is never silently read as bytes.
    pub fn parse(input: &str) -> Result<ByteSize, UnitError> {
        let bad = || UnitError::BadSize {
            input: input.to_string(),
        };
        let text = input.trim();
        let num_len = text
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, unit) = text.split_at(num_len);
        let unit = unit.trim_start();
        if number.is_empty() || unit.is_empty() {
            return Err(bad());
        }
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty()
            || frac_part.contains('.')
            || (number.contains('.') && frac_part.is_empty())
        {
            return Err(bad());
        }
        let lower = unit.to_ascii_lowercase();
        let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(u, _)| *u == lower) else {
            return Err(UnitError::SizeUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        };
        let overflow = || UnitError::SizeOverflow {
            input: input.to_string(),
        };
        let int: u128 = int_part.parse().map_err(|_| overflow())?;
        let mut total = int.checked_mul(u128::from(factor)).ok_or_else(overflow)?;
        if !frac_part.is_empty() {
            if frac_part.len() > 18 {
                return Err(UnitError::FractionalBytes {
                    input: input.to_string(),
                });
            }
            let frac: u128 = frac_part.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(frac_part.len() as u32);
            let scaled = frac * u128::from(factor);
            if scaled % scale != 0 {
                return Err(UnitError::FractionalBytes {
                    input: input.to_string(),
                });
            }
            total += scaled / scale;
        }
        u64::try_from(total).map(ByteSize).map_err(|_| overflow())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let best = DISPLAY_UNITS
            .iter()
            .filter(|(_, factor)| self.0 != 0 && self.0 % factor == 0)
            .min_by_key(|(_, factor)| self.0 / factor);
        match best {
            Some((unit, factor)) => write!(f, "{}{unit}", self.0 / factor),
            None => write!(f, "{}B", self.0),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ByteSize::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "hoist_core::units::human_duration")]`: a `Duration` as `"30s"`.
pub mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "hoist_core::units::human_duration_opt")]`: an optional `Duration`.
pub mod human_duration_opt {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("250ms", 250),
            ("2d", 172_800_000),
            ("0s", 0),
            ("1m30s500ms", 90_500),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_refused() {
        let errors: Vec<String> = [
            "30",
            "",
            "s",
            "1.5h",
            "3w",
            "5 m",
            "-1s",
            "99999999999999999999s",
        ]
        .iter()
        .map(|t| parse_duration(t).unwrap_err().to_string())
        .collect();
        expect_test::expect![[r#"
            [
                "expected a duration like `30s`, `5m` or `1h30m`, found `30`",
                "expected a duration like `30s`, `5m` or `1h30m`, found ``",
                "expected a duration like `30s`, `5m` or `1h30m`, found `s`",
                "expected a duration like `30s`, `5m` or `1h30m`, found `1.5h`",
                "unknown duration unit `w` in `3w`; expected `ms`, `s`, `m`, `h` or `d`",
                "expected a duration like `30s`, `5m` or `1h30m`, found `5 m`",
                "expected a duration like `30s`, `5m` or `1h30m`, found `-1s`",
                "duration `99999999999999999999s` is too large",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn durations_round_trip() {
        for text in ["30s", "5m", "1h30m", "250ms", "2d", "0s", "1d2h3m4s5ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }

    /// xorshift: deterministic pseudo-random values for the round-trip properties.
    fn values(mut x: u64, n: usize) -> impl Iterator<Item = u64> {
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    #[test]
    fn every_duration_and_size_round_trips() {
        for v in values(0x1234_5678, 5000) {
            // Up to ~1000 days, in milliseconds; and small values, where unit edges are.
            for ms in [v % 86_400_000_000, v % 5000] {
                let d = Duration::from_millis(ms);
                assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}ms");
            }
            for bytes in [v, v % 1_000_000, (v % 4096) << 20] {
                let size = ByteSize(bytes);
                assert_eq!(ByteSize::parse(&size.to_string()), Ok(size), "{bytes}");
            }
        }
    }

    #[test]
    fn sizes_parse() {
        let cases = [
            ("512MiB", 512 * 1024 * 1024),
            ("512mib", 512 * 1024 * 1024),
            ("1GiB", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("100MB", 100_000_000),
            ("100 MB", 100_000_000),
            ("4096B", 4096),
            ("1kb", 1000),
            ("2KiB", 2048),
            ("1TiB", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn sizes_refused() {
        let errors: Vec<String> = [
            "512",
            "MiB",
            "12 parsecs",
            "1.5B",
            "1..5MiB",
            "1.MiB",
            "99999999TiB",
        ]
        .iter()
        .map(|t| ByteSize::parse(t).unwrap_err().to_string())
        .collect();
        expect_test::expect![[r#"
            [
                "expected a size like `512MiB` or `1GB`, found `512`",
                "expected a size like `512MiB` or `1GB`, found `MiB`",
                "unknown size unit `parsecs` in `12 parsecs`; expected `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024)",
                "size `1.5B` is not a whole number of bytes",
                "expected a size like `512MiB` or `1GB`, found `1..5MiB`",
                "expected a size like `512MiB` or `1GB`, found `1.MiB`",
                "size `99999999TiB` is too large",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn sizes_display_round_trips() {
        for text in [
            "512MiB", "1GiB", "100MB", "4096KiB", "1500B", "1GB", "0B", "1536MiB",
        ] {
            let size = ByteSize::parse(text).unwrap();
            assert_eq!(ByteSize::parse(&size.to_string()), Ok(size), "{text}");
        }
        assert_eq!(ByteSize(512 * 1024 * 1024).to_string(), "512MiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1536MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
        assert_eq!(ByteSize(100_000_000).to_string(), "100MB");
    }
}
