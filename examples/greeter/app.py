"""The greeter: a Flask app. Flask comes from vendor/ (see passenger_wsgi.py)."""

import flask

app = flask.Flask(__name__)


@app.get("/")
def index():
    name = flask.request.args.get("name", "world")
    return f"hello, {name}\n"


@app.get("/health")
def health():
    return "ok\n"


@app.get("/version")
def version():
    # Where Flask was imported from: the release's vendor/ directory, not the system's.
    return {"flask": flask.__version__ if hasattr(flask, "__version__") else "?", "from": flask.__file__}
