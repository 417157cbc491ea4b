//! The audit history: append-only and hash-chained. Each record carries the hash of the
//! one before, so an altered or removed record is found by walking the chain.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Result;

/// One deploy, rollback, restart or restore, as the operator reads it in `hoist history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub app: String,
    pub kind: String,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub commit: Option<String>,
    pub actor: String,
    pub result: String,
    pub duration_ms: i64,
    pub reason: Option<String>,
}

/// What `hoist history --verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub records: i64,
    pub problems: Vec<String>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `app` of records about the host itself (retention), not about one app.
pub(crate) const HOST_RECORD_APP: &str = "*";
/// The kind of the record retention appends when it prunes (see `retention.rs`).
pub(crate) const RETENTION_KIND: &str = "retention";

/// How a retention record names its checkpoint; `verify` parses it back.
pub(crate) fn checkpoint_text(seq: i64, hash: &str) -> String {
    format!("the chain continues from checkpoint {seq}:{hash}")
}

fn parse_checkpoint(reason: &str) -> Option<(i64, String)> {
    let rest = reason.split("checkpoint ").nth(1)?;
    let (seq, hash) = rest.split_once(':')?;
    Some((seq.parse().ok()?, hash.trim().to_string()))
}

/// Where the chain starts: the genesis hash, or the checkpoint left by pruning.
fn checkpoint(conn: &Connection) -> Result<Option<(i64, String)>> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM history_checkpoint WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn chain_hash(prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record.as_bytes());
    hex::encode(h.finalize())
}

pub(crate) fn append(conn: &Connection, mut rec: HistoryRecord) -> Result<HistoryRecord> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM history ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let last = match last {
        Some(l) => Some(l),
        None => checkpoint(conn)?,
    };
    let (seq, prev) = last.map_or((1, GENESIS.to_string()), |(s, h)| (s + 1, h));
    rec.seq = seq;
    let text =
        serde_json::to_string(&rec).map_err(|e| crate::StateError::Corrupt(e.to_string()))?;
    let hash = chain_hash(&prev, &text);
    conn.execute(
        "INSERT INTO history (seq, at, record, prev_hash, hash, app, release, result)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            seq,
            rec.at_ms,
            text,
            prev,
            hash,
            rec.app,
            rec.release,
            rec.result
        ],
    )?;
    Ok(rec)
}

pub(crate) fn list(
    conn: &Connection,
    app: Option<&str>,
    limit: usize,
) -> Result<Vec<HistoryRecord>> {
    // Through the `app` column's index (two statements: `?1 IS NULL OR app = ?1` would
    // not use it): only the records asked for are read and parsed.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = match app {
        Some(_) => {
            conn.prepare("SELECT record FROM history WHERE app = ?1 ORDER BY seq DESC LIMIT ?2")?
        }
        None => {
            conn.prepare("SELECT record FROM history WHERE ?1 IS NULL ORDER BY seq DESC LIMIT ?2")?
        }
    };
    let mut out = Vec::new();
    let rows = stmt.query_map(params![app, limit], |r| r.get::<_, String>(0))?;
    for text in rows {
        let text = text?;
        let rec: HistoryRecord =
            serde_json::from_str(&text).map_err(|e| crate::StateError::Corrupt(e.to_string()))?;
        out.push(rec);
    }
    out.reverse();
    Ok(out)
}

/// Whether `release` of `app` ever served: a succeeded deploy, rollback or restart of it
/// is in the (kept) history. One index lookup.
pub(crate) fn served(conn: &Connection, app: &str, release: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM history
           WHERE app = ?1 AND release = ?2 AND result = 'succeeded')",
        params![app, release],
        |r| r.get(0),
    )?)
}

pub(crate) fn verify(conn: &Connection) -> Result<VerifyReport> {
    let mut stmt = conn.prepare("SELECT seq, record, prev_hash, hash FROM history ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut problems = Vec::new();
    let start = checkpoint(conn)?;
    let (mut expected_seq, mut expected_prev) = match &start {
        Some((seq, hash)) => (seq + 1, hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let mut records = 0;
    let mut named: Option<(i64, String)> = None;
    for row in rows {
        let (seq, record, prev, hash) = row?;
        records += 1;
        if seq != expected_seq {
            problems.push(format!("records {expected_seq}..{} are missing", seq - 1));
        }
        if prev != expected_prev {
            problems.push(format!("record {seq} does not follow the record before it"));
        }
        if chain_hash(&prev, &record) != hash {
            problems.push(format!("record {seq} was altered"));
        }
        match serde_json::from_str::<HistoryRecord>(&record) {
            Ok(rec) if rec.seq != seq => {
                problems.push(format!("record {seq} claims to be {}", rec.seq))
            }
            Ok(rec) => {
                if rec.kind == RETENTION_KIND && rec.app == HOST_RECORD_APP {
                    named = rec.reason.as_deref().and_then(parse_checkpoint);
                }
            }
            Err(_) => problems.push(format!("record {seq} is not readable")),
        }
        expected_prev = hash;
        expected_seq = seq + 1;
    }
    // A checkpoint is only as good as the chained record that names it.
    if let Some(cp) = start {
        if named.as_ref() != Some(&cp) {
            problems.push(format!(
                "the checkpoint {}:{} is not the one the newest retention record names",
                cp.0, cp.1
            ));
        }
    }
    Ok(VerifyReport { records, problems })
}
