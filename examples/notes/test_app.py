"""Tests of the notes example with real processes: migrate a temporary data dir, start
app.py on a free port, use the page and the API, run the worker and the cleanup job once,
run the preflight check, and stop the web service with SIGTERM.

Standard library only; run with `python3 -m unittest -v test_app` from this directory.
"""

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE = 20  # seconds; only a failing test waits this long


def run(script, *args, env):
    return subprocess.run(
        [sys.executable, os.path.join(HERE, script), *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def request(url, data=None, headers=None, method=None):
    """Returns (status, body); HTTP errors are answers too, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    # No redirects: the form's 303 is what we check.
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=DEADLINE) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class NotesTest(unittest.TestCase):
    def setUp(self):
        self.data = tempfile.TemporaryDirectory(prefix="notes-test-")
        self.addCleanup(self.data.cleanup)
        self.env = dict(
            os.environ,
            HOIST_DATA_DIR=self.data.name,
            HOIST_RELEASE="rel-test-1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        for _ in range(2):  # the second run proves the migration is idempotent
            migrated = run("migrate.py", env=self.env)
            self.assertEqual(migrated.returncode, 0, migrated.stderr)
        self.assertIn("(0 applied)", migrated.stdout)
        self.db_path = os.path.join(self.data.name, "notes.db")

    def start_app(self, env=None):
        """Starts app.py on a port it picks (PORT=0) and returns its base URL."""
        app = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "app.py")],
            env=dict(env or self.env, PORT="0"),
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(self.stop, app)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in app.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=DEADLINE)
        except queue.Empty:
            self.fail("app.py printed nothing within {} s".format(DEADLINE))
        self.assertTrue(first.startswith("listening on "), first)
        address = first.split()[2]
        return app, "http://" + address

    def stop(self, app):
        if app.poll() is None:
            app.kill()
        app.wait()
        app.stdout.close()
        app.stderr.close()

    def test_post_list_page_and_health(self):
        _, url = self.start_app()
        status, body = request(url + "/health")
        self.assertEqual((status, body), (200, "ok"))

        status, body = request(
            url + "/api/notes",
            data=json.dumps({"body": "buy milk and bread"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(status, 201, body)
        created = json.loads(body)
        self.assertEqual(created["body"], "buy milk and bread")
        self.assertFalse(created["processed"])

        status, body = request(url + "/notes", data=urllib.parse.urlencode({"body": "<b>call mum</b>"}).encode())
        self.assertEqual(status, 303, body)

        status, body = request(url + "/api/notes")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(n["body"] for n in json.loads(body)), ["<b>call mum</b>", "buy milk and bread"])

        status, page = request(url + "/")
        self.assertEqual(status, 200)
        self.assertIn("buy milk and bread", page)
        self.assertIn("&lt;b&gt;call mum&lt;/b&gt;", page, "note bodies must be escaped")
        self.assertIn("rel-test-1", page)

        status, body = request(url + "/api/notes", data=json.dumps({"body": "  "}).encode())
        self.assertEqual(status, 400, body)

    def test_worker_counts_words_once(self):
        _, url = self.start_app()
        for text in ["one two three", "four"]:
            request(url + "/api/notes", data=json.dumps({"body": text}).encode())
        worked = run("worker.py", "--once", env=self.env)
        self.assertEqual(worked.returncode, 0, worked.stderr)
        self.assertIn("words", worked.stdout)
        notes = {n["body"]: n for n in json.loads(request(url + "/api/notes")[1])}
        self.assertEqual(notes["one two three"]["word_count"], 3)
        self.assertEqual(notes["four"]["word_count"], 1)
        self.assertTrue(all(n["processed"] for n in notes.values()))

        again = run("worker.py", "--once", env=self.env)
        self.assertNotIn("processed note", again.stdout, "nothing is processed twice")

    def test_cleanup_deletes_only_old_notes(self):
        conn = sqlite3.connect(self.db_path)
        now = int(time.time())
        conn.executemany(
            "INSERT INTO notes (body, created_at) VALUES (?, ?)",
            [("ancient", now - 40 * 86400), ("fresh", now)],
        )
        conn.commit()
        conn.close()
        cleaned = run("cleanup.py", "--once", "--days", "30", env=self.env)
        self.assertEqual(cleaned.returncode, 0, cleaned.stderr)
        self.assertIn("deleted 1 notes", cleaned.stdout)
        conn = sqlite3.connect(self.db_path)
        left = [row[0] for row in conn.execute("SELECT body FROM notes")]
        conn.close()
        self.assertEqual(left, ["fresh"])

    def test_health_fails_without_a_migrated_database(self):
        with tempfile.TemporaryDirectory() as empty:
            _, url = self.start_app(env=dict(self.env, HOIST_DATA_DIR=empty))
            status, body = request(url + "/health")
            self.assertEqual(status, 503, body)
            self.assertFalse(os.path.exists(os.path.join(empty, "notes.db")), "the app must not create the db")

    def test_check_passes_and_names_what_is_wrong(self):
        checked = run("check.py", env=self.env)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("check ok", checked.stdout)
        broken = run("check.py", env=dict(self.env, HOIST_DATA_DIR=os.path.join(self.data.name, "missing")))
        self.assertNotEqual(broken.returncode, 0)
        self.assertIn("HOIST_DATA_DIR", broken.stderr)

    def test_sigterm_stops_the_web_service_gracefully(self):
        app, url = self.start_app()
        self.assertEqual(request(url + "/health")[0], 200)
        app.send_signal(signal.SIGTERM)
        self.assertEqual(app.wait(timeout=DEADLINE), 0)
        self.assertIn("exiting", app.stderr.read())


if __name__ == "__main__":
    unittest.main()
