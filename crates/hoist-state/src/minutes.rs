//! Per-minute traffic aggregates: for each (app, service, release) and minute, the
//! requests answered, the 5xx among them and the latency histogram (the proxy's fixed
//! buckets), so a p99 and a "slower than X" count can be had per minute or over any
//! window. SLOs (28-day windows) and charts read them; nothing is kept beyond
//! [`RETENTION_MINUTES`].
//!
//! A separate SQLite file (`<root>/minutes.db`), not the state database: it is written
//! every few seconds and needs no `synchronous=FULL` (losing the last seconds of counts
//! to a power cut is acceptable; losing a deploy's journal is not), and its writes never
//! queue behind a deploy's. Only minutes that saw traffic have a row (~60 bytes: the
//! histogram is a varint blob), so an idle service costs nothing and a busy one about
//! 2.5 MB per 28 days.
//!
//! The proxy's counters are cumulative since it started; the agent folds their growth in
//! with [`Minutes::record`], which keeps the last snapshot of each route and release (the
//! baseline) in the same transaction as the minutes it adds to. So a restarted agent
//! takes up where the last one stopped (what was answered meanwhile lands in the first
//! minute it sees), and nothing is counted twice. An agent with no baseline for a proxy
//! it found already serving (upgraded from a version without this store) takes its
//! first pass as the baseline ([`FirstSight::Baseline`]): counts of unknown time land in
//! no minute.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Result, StateError};

/// 28 days of minutes: the longest SLO window.
pub const RETENTION_MINUTES: i64 = 28 * 24 * 60;

/// What a route without a baseline contributes to the minute it is first seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstSight {
    /// Everything it counted: its counters started with the route, within the pass.
    Counts,
    /// Nothing: the counters ran before anyone watched (the first pass of an agent
    /// that found the proxy already serving, with no baseline kept for it — an agent
    /// upgraded from a version without this store, or a lost `minutes.db`).
    Baseline,
}

/// The aggregate store (one connection; the agent holds it behind a mutex).
pub struct Minutes {
    conn: Connection,
}

/// Cumulative counters of one route and release at one moment, as the proxy reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub app: String,
    pub service: String,
    pub release: String,
    pub requests: u64,
    pub errors_5xx: u64,
    /// Counts per latency bucket: `buckets[i]` took at most `bounds_ms[i]`, the last one
    /// is above every bound.
    pub buckets: Vec<u64>,
}

/// One step of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MinutePoint {
    /// Start of the step, Unix seconds (a multiple of 60).
    pub t: i64,
    pub requests: u64,
    pub errors_5xx: u64,
    /// The upper bound of the latency bucket holding the 99th percentile (twice the
    /// last bound when it is above them all); 0 without requests.
    pub p99_seconds: f64,
}

/// One stored minute: (minute, requests, 5xx, bucket counts).
type Row = (i64, u64, u64, Vec<u64>);

/// Totals over a window, for SLOs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Requests slower than the threshold asked for (0 without one).
    pub slow: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS minute (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    release TEXT NOT NULL,
    t INTEGER NOT NULL,            -- Unix minutes
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,       -- 5xx
    buckets BLOB NOT NULL,         -- LEB128 count per latency bucket
    PRIMARY KEY (app, service, release, t)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS minute_t ON minute (t);
CREATE TABLE IF NOT EXISTS baseline (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    release TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    buckets BLOB NOT NULL,
    PRIMARY KEY (app, service, release)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
";

impl Minutes {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Minutes> {
        let conn = Connection::open(path).map_err(|source| StateError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Minutes { conn })
    }

    /// The latency bucket bounds (ms) the stored histograms use, once any were recorded.
    pub fn bounds_ms(&self) -> Result<Option<Vec<f64>>> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT v FROM meta WHERE k = 'bounds_ms'", [], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Folds the proxy's cumulative counters in at minute `minute` (Unix minutes): the
    /// growth since each route's baseline is added to that minute, and the baselines
    /// move on. A counter lower than its baseline means the proxy (or the release's
    /// counters) started again: the whole value is growth. Baselines of routes absent
    /// from `now` are dropped (their release is gone). One transaction.
    pub fn record(&mut self, bounds_ms: &[f64], now: &[Snapshot], minute: i64) -> Result<()> {
        self.record_with(bounds_ms, now, minute, FirstSight::Counts)
    }

    /// As [`Minutes::record`], with what a route seen for the first time (no baseline)
    /// contributes decided by `first`.
    pub fn record_with(
        &mut self,
        bounds_ms: &[f64],
        now: &[Snapshot],
        minute: i64,
        first: FirstSight,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let bounds = serde_json::to_string(bounds_ms).unwrap_or_default();
        let known: Option<String> = tx
            .query_row("SELECT v FROM meta WHERE k = 'bounds_ms'", [], |r| r.get(0))
            .optional()?;
        if known.as_deref() != Some(&bounds) {
            // Other buckets (another proxy version): old rows cannot be added to new
            // ones, so they go.
            if known.is_some() {
                tracing::warn!("the proxy's latency buckets changed: per-minute history restarts");
                tx.execute("DELETE FROM minute", [])?;
                tx.execute("DELETE FROM baseline", [])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('bounds_ms', ?1)",
                [&bounds],
            )?;
        }
        // Every baseline in one read, and only what changed written back: the proxy
        // reports every route and release it keeps counters for (in the soak, one more
        // with each deploy), and a pass every 2 s that rewrote them all made the work
        // and the WAL grow with the deploys, not with the traffic.
        type Key = (String, String, String);
        let mut base: std::collections::HashMap<Key, (u64, u64, Vec<u64>)> = {
            let mut st = tx.prepare_cached(
                "SELECT app, service, release, requests, errors, buckets FROM baseline",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    (
                        r.get::<_, i64>(3)? as u64,
                        r.get::<_, i64>(4)? as u64,
                        decode(&r.get::<_, Vec<u8>>(5)?),
                    ),
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut seen = std::collections::HashSet::new();
        for s in now {
            let key = (s.app.clone(), s.service.clone(), s.release.clone());
            let (req, err, buckets) = match base.get(&key) {
                Some((r, e, b)) => {
                    match growth((*r, *e, b), (s.requests, s.errors_5xx, &s.buckets)) {
                        Some(grown) => grown,
                        // Nothing since the baseline: nothing to write.
                        None => {
                            seen.insert(key);
                            continue;
                        }
                    }
                }
                // First sight: everything counted so far is new (a release's counters
                // start with its route; an agent's first pass after a fresh root).
                None if first == FirstSight::Counts => {
                    (s.requests, s.errors_5xx, s.buckets.clone())
                }
                // A proxy that was serving before this agent: when its counts were
                // answered is unknown, so they start the baseline and land nowhere.
                None => (0, 0, vec![0; s.buckets.len()]),
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO baseline (app, service, release, requests, errors, buckets)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.app,
                s.service,
                s.release,
                s.requests as i64,
                s.errors_5xx as i64,
                encode(&s.buckets)
            ])?;
            base.insert(key.clone(), (s.requests, s.errors_5xx, s.buckets.clone()));
            seen.insert(key);
            if req == 0 && err == 0 && buckets.iter().all(|b| *b == 0) {
                continue;
            }
            let old: Option<(i64, i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT requests, errors, buckets FROM minute
                     WHERE app = ?1 AND service = ?2 AND release = ?3 AND t = ?4",
                )?
                .query_row(params![s.app, s.service, s.release, minute], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let (mut r, mut e, mut b) = (req, err, buckets);
            if let Some((or, oe, ob)) = old {
                r += or as u64;
                e += oe as u64;
                add(&mut b, &decode(&ob));
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO minute (app, service, release, t, requests, errors, buckets)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![s.app, s.service, s.release, minute, r as i64, e as i64, encode(&b)])?;
        }
        for (a, s, r) in base.keys().filter(|k| !seen.contains(*k)) {
            tx.prepare_cached(
                "DELETE FROM baseline WHERE app = ?1 AND service = ?2 AND release = ?3",
            )?
            .execute(params![a, s, r])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets minutes before `minute` (Unix minutes); returns how many rows went.
    pub fn prune(&self, minute: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM minute WHERE t < ?1", [minute])?)
    }

    /// The (app, service, release) keys with traffic at or after `since` (Unix seconds).
    pub fn keys(&self, since: i64) -> Result<Vec<(String, String, String)>> {
        let mut st = self.conn.prepare(
            "SELECT DISTINCT app, service, release FROM minute WHERE t >= ?1 ORDER BY 1, 2, 3",
        )?;
        let rows = st.query_map([since.div_euclid(60)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn rows(
        &self,
        app: &str,
        service: &str,
        release: Option<&str>,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<Row>> {
        let mut st = self.conn.prepare_cached(
            "SELECT t, requests, errors, buckets FROM minute
             WHERE app = ?1 AND service = ?2 AND (?3 IS NULL OR release = ?3)
               AND t >= ?4 AND t < ?5 ORDER BY t",
        )?;
        let rows = st.query_map(
            params![app, service, release, from_minute, to_minute],
            |r| {
                let b: Vec<u8> = r.get(3)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    decode(&b),
                ))
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A series of `app`'s `service` (one release, or all of them added up with `None`)
    /// from `since` (Unix seconds, rounded down to its minute) to now, in steps of
    /// `step_minutes` (at least 1). Steps without traffic are left out.
    pub fn series(
        &self,
        app: &str,
        service: &str,
        release: Option<&str>,
        since: i64,
        step_minutes: u32,
    ) -> Result<Vec<MinutePoint>> {
        let step = i64::from(step_minutes.max(1));
        let from = since.div_euclid(60);
        let bounds = self.bounds_ms()?.unwrap_or_default();
        let mut out: Vec<Row> = Vec::new();
        for (t, r, e, b) in self.rows(app, service, release, from, i64::MAX)? {
            let at = from + (t - from).div_euclid(step) * step;
            match out.last_mut() {
                Some(last) if last.0 == at => {
                    last.1 += r;
                    last.2 += e;
                    add(&mut last.3, &b);
                }
                _ => out.push((at, r, e, b)),
            }
        }
        Ok(out
            .into_iter()
            .map(|(t, requests, errors_5xx, b)| MinutePoint {
                t: t * 60,
                requests,
                errors_5xx,
                p99_seconds: quantile_ms(&bounds, &b, 0.99) / 1000.0,
            })
            .collect())
    }

    /// Totals of `app`'s `service` (every release) over the minutes from `since` up to
    /// and including the one holding `until` (Unix seconds); with `slow_ms`, the requests
    /// whose latency bucket lies wholly above it (exact when it is one of the bounds).
    pub fn totals(
        &self,
        app: &str,
        service: &str,
        since: i64,
        until: i64,
        slow_ms: Option<f64>,
    ) -> Result<Totals> {
        let bounds = self.bounds_ms()?.unwrap_or_default();
        let mut t = Totals::default();
        for (_, r, e, b) in self.rows(
            app,
            service,
            None,
            since.div_euclid(60),
            until.div_euclid(60) + 1,
        )? {
            t.requests += r;
            t.errors_5xx += e;
            if let Some(limit) = slow_ms {
                t.slow += slow_count(&bounds, &b, limit);
            }
        }
        Ok(t)
    }
}

/// Requests in buckets whose lower bound is at or above `limit_ms`.
/// How far cumulative counters `(requests, errors, buckets)` grew from `before`; when
/// any of them went back (the proxy, or a release's counters, started again) the whole
/// of `now` is growth. `None` while nothing grew.
pub fn growth(before: (u64, u64, &[u64]), now: (u64, u64, &[u64])) -> Option<(u64, u64, Vec<u64>)> {
    let (r, e, b) = before;
    let (nr, ne, nb) = now;
    let reset = r > nr || e > ne || b.len() != nb.len() || b.iter().zip(nb).any(|(o, n)| o > n);
    if reset {
        Some((nr, ne, nb.to_vec()))
    } else if r == nr && e == ne && b == nb {
        None
    } else {
        Some((
            nr - r,
            ne - e,
            nb.iter().zip(b).map(|(n, o)| n - o).collect(),
        ))
    }
}

pub fn slow_count(bounds_ms: &[f64], buckets: &[u64], limit_ms: f64) -> u64 {
    buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let lower = if *i == 0 { 0.0 } else { bounds_ms[i - 1] };
            *i > 0 && *i <= bounds_ms.len() && lower >= limit_ms
        })
        .map(|(_, n)| n)
        .sum()
}

/// The upper bound of the bucket holding quantile `q` (twice the last bound when it is
/// above them all); 0 without counts.
pub fn quantile_ms(bounds_ms: &[f64], counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bounds_ms
                .get(i)
                .copied()
                .unwrap_or_else(|| bounds_ms.last().copied().unwrap_or(0.0) * 2.0);
        }
    }
    0.0
}

fn add(into: &mut Vec<u64>, more: &[u64]) {
    if into.len() < more.len() {
        into.resize(more.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(more) {
        *a += b;
    }
}

fn encode(v: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for &x in v {
        let mut x = x;
        loop {
            let byte = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

fn decode(b: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let (mut x, mut shift) = (0u64, 0u32);
    for &byte in b {
        x |= u64::from(byte & 0x7f) << shift.min(63);
        if byte & 0x80 == 0 {
            out.push(x);
            x = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_picks_the_bucket_bound() {
        let bounds = [1.0, 10.0, 100.0];
        assert_eq!(quantile_ms(&bounds, &[99, 0, 1, 0], 0.99), 1.0);
        assert_eq!(quantile_ms(&bounds, &[90, 0, 10, 0], 0.99), 100.0);
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 5], 0.99), 200.0);
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 0], 0.99), 0.0);
    }

    const BOUNDS: [f64; 3] = [10.0, 100.0, 1000.0];

    fn snap(release: &str, requests: u64, errors: u64, buckets: [u64; 4]) -> Snapshot {
        Snapshot {
            app: "a".into(),
            service: "web".into(),
            release: release.into(),
            requests,
            errors_5xx: errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn varints_round_trip() {
        let v = [0, 1, 127, 128, 300, u64::from(u32::MAX) + 5, u64::MAX];
        assert_eq!(decode(&encode(&v)), v);
    }

    #[test]
    fn growth_lands_in_its_minute_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minutes.db");
        let mut m = Minutes::open(&path).unwrap();
        let base = 29_000_000; // some minute
        m.record(&BOUNDS, &[snap("r1", 10, 1, [8, 1, 1, 0])], base)
            .unwrap();
        m.record(&BOUNDS, &[snap("r1", 15, 1, [12, 2, 1, 0])], base)
            .unwrap();
        drop(m);
        let mut m = Minutes::open(&path).unwrap();
        // A restarted agent: the baseline was kept, so only the growth is added.
        m.record(&BOUNDS, &[snap("r1", 115, 3, [12, 2, 100, 1])], base + 1)
            .unwrap();
        let s = m.series("a", "web", Some("r1"), base * 60, 1).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].t, s[0].requests, s[0].errors_5xx), (base * 60, 15, 1));
        assert_eq!(s[0].p99_seconds, 1.0, "1 of 15 in the ≤1000 ms bucket");
        assert_eq!((s[1].requests, s[1].errors_5xx), (100, 2));
        assert_eq!(s[1].p99_seconds, 1.0);
        // Steps of two minutes add up; totals count slow requests by bucket.
        let s = m.series("a", "web", None, base * 60, 2).unwrap();
        assert_eq!((s.len(), s[0].requests), (1, 115));
        let t = m
            .totals("a", "web", base * 60, (base + 1) * 60, Some(100.0))
            .unwrap();
        assert_eq!(
            t,
            Totals {
                requests: 115,
                errors_5xx: 3,
                slow: 101
            }
        );
        assert_eq!(m.keys(0).unwrap().len(), 1);
        // Pruning takes whole minutes.
        assert_eq!(m.prune(base + 1).unwrap(), 1);
        assert_eq!(m.series("a", "web", None, 0, 1).unwrap().len(), 1);
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Minutes::open(&dir.path().join("m.db")).unwrap();
        m.record(&BOUNDS, &[snap("r1", 50, 0, [50, 0, 0, 0])], 10)
            .unwrap();
        m.record(&BOUNDS, &[snap("r1", 7, 2, [7, 0, 0, 0])], 11)
            .unwrap();
        let s = m.series("a", "web", None, 0, 1).unwrap();
        assert_eq!(
            s.iter()
                .map(|p| (p.requests, p.errors_5xx))
                .collect::<Vec<_>>(),
            [(50, 0), (7, 2)]
        );
        // A release gone from the proxy loses its baseline; releases are apart.
        m.record(&BOUNDS, &[snap("r2", 3, 0, [3, 0, 0, 0])], 12)
            .unwrap();
        assert_eq!(m.series("a", "web", Some("r2"), 0, 1).unwrap().len(), 1);
        assert_eq!(m.series("a", "web", Some("r1"), 0, 1).unwrap().len(), 2);
    }

    #[test]
    fn an_adopted_proxys_earlier_counts_are_a_baseline_not_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Minutes::open(&dir.path().join("m.db")).unwrap();
        m.record_with(
            &BOUNDS,
            &[snap("r1", 500, 9, [400, 90, 10, 0])],
            20,
            FirstSight::Baseline,
        )
        .unwrap();
        assert!(m.series("a", "web", None, 0, 1).unwrap().is_empty());
        m.record(&BOUNDS, &[snap("r1", 504, 10, [403, 91, 10, 0])], 21)
            .unwrap();
        let s = m.series("a", "web", None, 0, 1).unwrap();
        assert_eq!(
            s.iter()
                .map(|p| (p.t, p.requests, p.errors_5xx))
                .collect::<Vec<_>>(),
            [(21 * 60, 4, 1)]
        );
    }

    #[test]
    fn a_pass_without_new_traffic_writes_nothing() {
        // The proxy reports every release it keeps counters for, most of them idle (one
        // more with each deploy in the soak); a pass used to rewrite all their baselines.
        let dir = tempfile::tempdir().unwrap();
        let mut m = Minutes::open(&dir.path().join("m.db")).unwrap();
        let idle: Vec<Snapshot> = (0..50)
            .map(|i| snap(&format!("r{i}"), 5, 0, [5, 0, 0, 0]))
            .collect();
        m.record(&BOUNDS, &idle, 10).unwrap();
        let before = m.conn.total_changes();
        m.record(&BOUNDS, &idle, 10).unwrap();
        m.record(&BOUNDS, &idle, 11).unwrap();
        assert_eq!(m.conn.total_changes(), before, "idle passes wrote rows");
        // One release with traffic: its baseline and its minute, nothing else.
        let mut busy = idle.clone();
        busy[7] = snap("r7", 9, 1, [8, 0, 1, 0]);
        m.record(&BOUNDS, &busy, 11).unwrap();
        assert_eq!(m.conn.total_changes(), before + 2);
        let s = m.series("a", "web", Some("r7"), 0, 1).unwrap();
        assert_eq!(
            s.iter()
                .map(|p| (p.t, p.requests, p.errors_5xx))
                .collect::<Vec<_>>(),
            [(600, 5, 0), (660, 4, 1)]
        );
        // Releases the proxy no longer reports lose their baselines, idle or not.
        m.record(&BOUNDS, &busy[..1], 12).unwrap();
        let left: i64 = m
            .conn
            .query_row("SELECT count(*) FROM baseline", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn slow_counts_whole_buckets_above_the_limit() {
        assert_eq!(slow_count(&BOUNDS, &[5, 4, 3, 2], 100.0), 5);
        assert_eq!(slow_count(&BOUNDS, &[5, 4, 3, 2], 10.0), 9);
        assert_eq!(slow_count(&BOUNDS, &[5, 4, 3, 2], 1000.0), 2);
    }
}
