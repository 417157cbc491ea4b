"""The notes web service: a page with a form and the list of notes, a small JSON API,
and /health. hoist runs two replicas behind its proxy, each on its own $PORT.

It only reads and inserts notes; word counts come from worker.py and old notes are
removed by cleanup.py. On SIGTERM it stops accepting, finishes the requests it holds,
and exits 0, which is what lets hoist drain it without dropping anything.
"""

import html
import json
import os
import signal
import sqlite3
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import notes_db

RELEASE = os.environ.get("HOIST_RELEASE", "dev")
INSTANCE = os.environ.get("HOIST_INSTANCE", "local")
MAX_NOTE = 10_000

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>notes</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}li{{margin:.4em 0}}
small{{color:#666}}textarea{{width:100%}}</style></head>
<body>
<h1>notes</h1>
<form method="post" action="/notes">
<textarea name="body" rows="3" required maxlength="{max_note}"></textarea>
<button type="submit">add note</button>
</form>
<ul>{items}</ul>
<p><small>release {release} · instance {instance}</small></p>
</body>
</html>
"""


def list_notes(conn):
    rows = conn.execute("SELECT * FROM notes ORDER BY created_at DESC, id DESC LIMIT 200").fetchall()
    return [notes_db.note_dict(row) for row in rows]


def add_note(conn, body):
    body = body.strip()
    if not body or len(body) > MAX_NOTE:
        raise ValueError("a note needs 1 to {} characters".format(MAX_NOTE))
    cursor = conn.execute("INSERT INTO notes (body, created_at) VALUES (?, ?)", (body, notes_db.now()))
    row = conn.execute("SELECT * FROM notes WHERE id = ?", (cursor.lastrowid,)).fetchone()
    return notes_db.note_dict(row)


class Handler(BaseHTTPRequestHandler):
    server_version = "notes"
    # HTTP/1.0 (one request per connection) so that no idle keep-alive connection can hold
    # up a graceful stop; the timeout bounds a client that connects and sends nothing.
    protocol_version = "HTTP/1.0"
    timeout = 30

    def log_message(self, fmt, *args):
        # One access line per request on stderr; hoist keeps it with the instance's logs.
        sys.stderr.write("{} {}\n".format(self.address_string(), fmt % args))

    def send(self, status, body, content_type="application/json", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, value):
        self.send(status, json.dumps(value))

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > 4 * MAX_NOTE:
            raise ValueError("request body too large")
        return self.rfile.read(length).decode("utf-8")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/health":
            self.health()
        elif path == "/api/notes":
            with db() as conn:
                self.send_json(200, list_notes(conn))
        elif path == "/":
            with db() as conn:
                notes = list_notes(conn)
            items = "".join(
                "<li>{}<br><small>{} words</small></li>".format(
                    html.escape(n["body"]), n["word_count"] if n["processed"] else "counting"
                )
                for n in notes
            )
            page = PAGE.format(
                items=items or "<li>no notes yet</li>",
                release=html.escape(RELEASE),
                instance=html.escape(INSTANCE),
                max_note=MAX_NOTE,
            )
            self.send(200, page, "text/html; charset=utf-8")
        else:
            self.send_json(404, {"error": "no page at `{}`".format(path)})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/api/notes":
                body = json.loads(self.read_body() or "{}").get("body", "")
                with db() as conn:
                    self.send_json(201, add_note(conn, str(body)))
            elif path == "/notes":
                form = urllib.parse.parse_qs(self.read_body())
                with db() as conn:
                    add_note(conn, form.get("body", [""])[0])
                self.send(303, "", "text/plain", headers=[("Location", "/")])
            else:
                self.send_json(404, {"error": "no page at `{}`".format(path)})
        except (ValueError, AttributeError) as error:
            self.send_json(400, {"error": str(error)})

    def health(self):
        """Healthy when the database opens and has its schema (migrate.py has run)."""
        try:
            with db() as conn:
                conn.execute("SELECT count(*) FROM notes").fetchone()
        except sqlite3.Error as error:
            self.send(503, "database unavailable: {}\n".format(error), "text/plain")
            return
        self.send(200, "ok", "text/plain")


class db:
    """A connection per request: cheap with SQLite, and no state shared across threads."""

    def __enter__(self):
        self.conn = notes_db.connect()
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    # Request threads are joined on close, so in-flight requests finish before exit.
    server.daemon_threads = False
    server.block_on_close = True

    def on_sigterm(signum, frame):
        print("sigterm received, finishing in-flight requests", file=sys.stderr, flush=True)
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    host, bound = server.server_address[:2]
    print("listening on {}:{} (release {})".format(host, bound, RELEASE), flush=True)
    server.serve_forever()
    server.server_close()
    print("exiting", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
