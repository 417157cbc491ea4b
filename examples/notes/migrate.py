"""The pre_activate hook: creates or updates the schema in $HOIST_DATA_DIR/notes.db.

hoist runs it after the pre-deploy backup and before the new release takes traffic, so
it must be idempotent (it is: applied versions are skipped) and must never drop data.
"""

import os
import sys

import notes_db


def main():
    os.makedirs(notes_db.data_dir(), exist_ok=True)
    conn = notes_db.connect(create=True)
    try:
        version, applied = notes_db.migrate(conn)
    finally:
        conn.close()
    print("schema of {} at version {} ({} applied)".format(notes_db.db_path(), version, applied), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
