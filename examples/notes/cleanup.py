"""The periodic cleanup job: deletes notes older than the retention period and logs how
many it removed. hoist runs it every minute and never starts a run while the previous
one is still going, so a single run is all this script does.
"""

import argparse
import os
import sys

import notes_db

DAY = 24 * 60 * 60


def cleanup(conn, days):
    cutoff = notes_db.now() - int(days * DAY)
    return conn.execute("DELETE FROM notes WHERE created_at < ?", (cutoff,)).rowcount


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--days",
        type=float,
        default=float(os.environ.get("NOTES_RETENTION_DAYS", "30")),
        help="keep notes younger than this many days",
    )
    parser.add_argument("--once", action="store_true", help="run once and exit (what every run does)")
    args = parser.parse_args(argv)
    conn = notes_db.connect()
    try:
        deleted = cleanup(conn, args.days)
    finally:
        conn.close()
    print("cleanup deleted {} notes older than {:g} days".format(deleted, args.days), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
