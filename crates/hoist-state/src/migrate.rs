//! Schema migrations tracked with SQLite's `user_version`: each entry runs once, in order,
//! inside one transaction with the version bump.

use rusqlite::Connection;

use crate::{Result, StateError};

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE releases (
        app TEXT NOT NULL,
        release TEXT NOT NULL,
        manifest TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (app, release)
    );
    CREATE TABLE current (
        app TEXT PRIMARY KEY,
        release TEXT NOT NULL,
        standby TEXT,
        standby_until INTEGER,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        kind TEXT NOT NULL,
        release TEXT,
        previous TEXT,
        actor TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        result TEXT NOT NULL DEFAULT 'running',
        reason TEXT
    );
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        operation INTEGER NOT NULL REFERENCES operations(id),
        step TEXT NOT NULL,
        phase TEXT NOT NULL,
        at INTEGER NOT NULL,
        detail TEXT
    );
    CREATE INDEX journal_by_op ON journal(operation);
    CREATE TABLE instances (
        instance TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        service TEXT NOT NULL,
        release TEXT NOT NULL,
        slot INTEGER NOT NULL,
        port INTEGER,
        desired TEXT NOT NULL,
        restarts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        app TEXT,
        kind TEXT NOT NULL,
        subject TEXT,
        message TEXT NOT NULL
    );
    CREATE TABLE history (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        record TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE locks (
        app TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        agent_boot TEXT NOT NULL,
        since INTEGER NOT NULL
    );
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        job TEXT NOT NULL,
        release TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        status TEXT NOT NULL,
        exit_code INTEGER,
        output TEXT
    );
    CREATE INDEX job_runs_by_job ON job_runs(app, job, id);
    "#,
    // 2: fleet-wide deploy leases (one row per lease name, e.g. `deploy:APP`).
    r#"
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 3: backups and their restores and verifies (one row per attempt).
    r#"
    CREATE TABLE backups (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        file TEXT,
        copy TEXT,
        sha256 TEXT,
        size INTEGER,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        duration_ms INTEGER,
        release TEXT,
        trigger TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        checked TEXT,
        verified INTEGER
    );
    CREATE INDEX backups_by_name ON backups(app, name, id);
    "#,
    // 4: retention — the history's checkpoint (the hash of the last pruned record) and
    //    indexes for pruning by age.
    r#"
    CREATE TABLE history_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX events_by_at ON events(at);
    CREATE INDEX job_runs_by_started ON job_runs(started_at);
    CREATE INDEX history_by_at ON history(at);
    "#,
    // 5: the history's app, release and result beside its record, indexed, so that an
    //    app's records (`hoist history --app`, rollback's previous release) and "did this
    //    release ever serve" (every deploy's release pruning) are index lookups instead of
    //    a parse of every record: the soak's deploys read up to 10,000 records each, under
    //    the state lock. Derived from the record text (which alone is hashed).
    r#"
    ALTER TABLE history ADD COLUMN app TEXT;
    ALTER TABLE history ADD COLUMN release TEXT;
    ALTER TABLE history ADD COLUMN result TEXT;
    UPDATE history SET app = json_extract(record, '$.app'),
                       release = json_extract(record, '$.release'),
                       result = json_extract(record, '$.result')
     WHERE json_valid(record);
    CREATE INDEX history_by_app ON history(app);
    CREATE INDEX history_served ON history(app, release) WHERE result = 'succeeded';
    -- Each job's last success, read by every alert pass (2 s): one lookup per job instead
    -- of grouping every kept run (20,000 at the default retention).
    CREATE INDEX job_runs_succeeded ON job_runs(app, job, finished_at) WHERE status = 'succeeded';
    "#,
];

/// The schema version this build knows.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(StateError::TooNew {
            found,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "state schema migrated");
    }
    Ok(())
}
