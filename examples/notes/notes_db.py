"""The notes database: where it lives and how every process opens it.

Owns the connection settings shared by the web service, the worker, the cleanup job and
the migration (WAL and a busy timeout, so they can all use the file at once) and the
schema migrations. It never serves HTTP and never prints.
"""

import os
import sqlite3
import time

# Readers never block the writer in WAL mode; a writer waits this long for another.
BUSY_TIMEOUT_MS = 5000

# Each entry moves the schema one version up; `PRAGMA user_version` records how far a
# database has come, so running them again is a no-op.
MIGRATIONS = [
    """
    CREATE TABLE notes (
        id INTEGER PRIMARY KEY,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )
    """,
    """
    ALTER TABLE notes ADD COLUMN word_count INTEGER;
    ALTER TABLE notes ADD COLUMN processed_at INTEGER;
    CREATE INDEX notes_unprocessed ON notes (processed_at) WHERE processed_at IS NULL;
    CREATE INDEX notes_created_at ON notes (created_at);
    """,
]


def data_dir():
    """hoist's persistent per-app directory, or ./data next to the code when run by hand."""
    return os.environ.get("HOIST_DATA_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def db_path():
    return os.path.join(data_dir(), "notes.db")


def connect(create=False):
    """Opens the database. Only the migration creates it: the app refuses a missing one
    instead of quietly serving from an empty file."""
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        "file:{}?mode={}".format(db_path(), mode),
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # autocommit; transactions are explicit with BEGIN
        check_same_thread=False,
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = {}".format(BUSY_TIMEOUT_MS))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def migrate(conn):
    """Brings the schema to the latest version; returns (version, migrations applied)."""
    applied = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute("PRAGMA user_version = {}".format(number))
            applied += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS), applied


def now():
    return int(time.time())


def note_dict(row):
    return {
        "id": row["id"],
        "body": row["body"],
        "created_at": row["created_at"],
        "word_count": row["word_count"],
        "processed": row["processed_at"] is not None,
    }
