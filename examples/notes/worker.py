"""The notes worker: picks up notes that have not been processed yet, counts their
words, and records the result. hoist runs exactly one of it (singleton).

Claims are made inside one IMMEDIATE transaction, so even two workers by mistake would
not process a note twice. On SIGTERM it finishes the current batch and exits 0.
"""

import argparse
import os
import signal
import sys
import threading

import notes_db

BATCH = 50
stop = threading.Event()


def process_batch(conn):
    """Counts words of up to BATCH unprocessed notes; returns how many it processed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT id, body FROM notes WHERE processed_at IS NULL ORDER BY id LIMIT ?", (BATCH,)
        ).fetchall()
        for row in rows:
            words = len(row["body"].split())
            conn.execute(
                "UPDATE notes SET word_count = ?, processed_at = ? WHERE id = ?",
                (words, notes_db.now(), row["id"]),
            )
            print("processed note {}: {} words".format(row["id"], words), flush=True)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="process what is pending, then exit")
    parser.add_argument(
        "--interval",
        type=float,
        default=float(os.environ.get("NOTES_WORKER_INTERVAL", "2")),
        help="seconds between polls when idle",
    )
    args = parser.parse_args(argv)

    def on_signal(signum, frame):
        print("sigterm received, stopping after this batch", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    conn = notes_db.connect()
    try:
        print("worker started (release {})".format(os.environ.get("HOIST_RELEASE", "dev")), flush=True)
        while not stop.is_set():
            done = process_batch(conn)
            if args.once and done < BATCH:
                break
            if done < BATCH:
                stop.wait(args.interval)
    finally:
        conn.close()
    print("worker exiting", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
