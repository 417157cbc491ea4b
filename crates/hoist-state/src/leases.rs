//! Fleet deploy leases: a lock with a holder, a start time, an expiry and a heartbeat.
//! A holder that dies (Ctrl-C, SIGKILL, a lost laptop) stops renewing, and its lease
//! expires by itself; nobody has to clean up after it.
//!
//! One row per lease name. Acquiring is a single transaction: a live lease of another
//! token is reported, an expired one (or one of the same token) is taken over.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{Result, State};

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub token: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub expires_at_ms: i64,
}

impl LeaseRow {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// What an attempt to take a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours now (newly, after an expired holder, or renewed).
    Acquired(LeaseRow),
    /// Another token holds it and it has not expired.
    Held(LeaseRow),
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow {
        name: r.get(0)?,
        holder: r.get(1)?,
        token: r.get(2)?,
        started_at_ms: r.get(3)?,
        heartbeat_at_ms: r.get(4)?,
        expires_at_ms: r.get(5)?,
    })
}

const COLUMNS: &str = "name, holder, token, started_at, heartbeat_at, expires_at";

impl State {
    pub fn lease(&self, name: &str) -> Result<Option<LeaseRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM leases WHERE name = ?1"),
                params![name],
                row,
            )
            .optional()?)
    }

    /// Every lease, live or expired (an expired one is shown until it is replaced).
    pub fn leases(&self) -> Result<Vec<LeaseRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM leases ORDER BY name"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Takes `name` for `token` until `now + ttl`, unless another token holds it live.
    pub fn acquire_lease(
        &mut self,
        name: &str,
        holder: &str,
        token: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Acquire> {
        let tx = self.conn.transaction()?;
        let found = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM leases WHERE name = ?1"),
                params![name],
                row,
            )
            .optional()?;
        let started = match &found {
            Some(l) if l.token != token && l.is_live(now_ms) => {
                return Ok(Acquire::Held(l.clone()))
            }
            Some(l) if l.token == token => l.started_at_ms,
            _ => now_ms,
        };
        let lease = LeaseRow {
            name: name.to_string(),
            holder: holder.to_string(),
            token: token.to_string(),
            started_at_ms: started,
            heartbeat_at_ms: now_ms,
            expires_at_ms: now_ms + ttl_ms,
        };
        tx.execute(
            &format!("INSERT OR REPLACE INTO leases ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                lease.name,
                lease.holder,
                lease.token,
                lease.started_at_ms,
                lease.heartbeat_at_ms,
                lease.expires_at_ms
            ],
        )?;
        tx.commit()?;
        Ok(Acquire::Acquired(lease))
    }

    /// Extends a lease `token` still holds; `None` when it is no longer ours (released,
    /// or expired and taken by someone else). An expired lease nobody took is revived.
    pub fn renew_lease(
        &self,
        name: &str,
        token: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>> {
        let n = self.conn.execute(
            "UPDATE leases SET heartbeat_at = ?3, expires_at = ?4 WHERE name = ?1 AND token = ?2",
            params![name, token, now_ms, now_ms + ttl_ms],
        )?;
        if n == 0 {
            return Ok(None);
        }
        self.lease(name)
    }

    /// Drops a lease: only the holder's token, or any holder with `token = None` (an
    /// operator's `hoist lock release`). Returns the lease that was dropped.
    pub fn release_lease(&self, name: &str, token: Option<&str>) -> Result<Option<LeaseRow>> {
        let Some(found) = self.lease(name)? else {
            return Ok(None);
        };
        if token.is_some_and(|t| t != found.token) {
            return Ok(None);
        }
        self.conn.execute(
            "DELETE FROM leases WHERE name = ?1 AND token = ?2",
            params![name, found.token],
        )?;
        Ok(Some(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn a_live_lease_of_another_token_is_refused_and_an_expired_one_is_taken() {
        let (_d, mut s) = state();
        let Acquire::Acquired(a) = s.acquire_lease("notes", "ann@pc", "t1", 1000, 0).unwrap()
        else {
            panic!("first acquire must win")
        };
        assert_eq!((a.started_at_ms, a.expires_at_ms), (0, 1000));
        match s.acquire_lease("notes", "bob@pc", "t2", 1000, 500).unwrap() {
            Acquire::Held(h) => assert_eq!(h.holder, "ann@pc"),
            other => panic!("expected held, got {other:?}"),
        }
        // The same token renews and keeps its start time.
        let Acquire::Acquired(again) = s.acquire_lease("notes", "ann@pc", "t1", 1000, 600).unwrap()
        else {
            panic!("same token must renew")
        };
        assert_eq!((again.started_at_ms, again.expires_at_ms), (0, 1600));
        // Expired: taken over by the next holder.
        let Acquire::Acquired(b) = s
            .acquire_lease("notes", "bob@pc", "t2", 1000, 1600)
            .unwrap()
        else {
            panic!("an expired lease must be taken")
        };
        assert_eq!((b.holder.as_str(), b.started_at_ms), ("bob@pc", 1600));
        // The old holder's heartbeat finds it lost.
        assert_eq!(s.renew_lease("notes", "t1", 1000, 1700).unwrap(), None);
        assert!(s.renew_lease("notes", "t2", 1000, 1700).unwrap().is_some());
    }

    #[test]
    fn release_needs_the_token_unless_forced() {
        let (_d, mut s) = state();
        s.acquire_lease("notes", "ann", "t1", 1000, 0).unwrap();
        assert_eq!(s.release_lease("notes", Some("other")).unwrap(), None);
        assert!(s.lease("notes").unwrap().is_some());
        assert!(s.release_lease("notes", None).unwrap().is_some());
        assert_eq!(s.lease("notes").unwrap(), None);
        assert_eq!(s.leases().unwrap(), vec![]);
    }
}
