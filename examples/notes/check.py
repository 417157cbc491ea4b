"""The preflight check hoist runs inside a new release before it may take traffic.

It imports every module of the app (so a missing dependency or a syntax error fails
here, not in front of users) and checks that sqlite3 works with WAL on this machine.
It prints one line and exits non-zero with a clear message when something is wrong.
"""

import importlib
import os
import sqlite3
import sys
import tempfile

MODULES = ["notes_db", "app", "worker", "cleanup", "migrate", "smoke"]


def problems():
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # report every kind of import failure the same way
            yield "cannot import `{}`: {}: {}".format(name, type(error).__name__, error)
    if sqlite3.sqlite_version_info < (3, 7, 0):
        yield "sqlite {} is too old for WAL (need 3.7 or newer)".format(sqlite3.sqlite_version)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            conn = sqlite3.connect(os.path.join(scratch, "check.db"))
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("CREATE TABLE t (x)")
            conn.close()
            if mode != "wal":
                yield "sqlite refused WAL mode (got `{}`)".format(mode)
        except sqlite3.Error as error:
            yield "sqlite does not work: {}".format(error)
    data = os.environ.get("HOIST_DATA_DIR")
    if data and not (os.path.isdir(data) and os.access(data, os.W_OK)):
        yield "HOIST_DATA_DIR `{}` is not a writable directory".format(data)


def main():
    found = list(problems())
    for problem in found:
        print("check failed: " + problem, file=sys.stderr)
    if found:
        return 1
    print("check ok: {} modules import, sqlite {} with WAL".format(len(MODULES), sqlite3.sqlite_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
