"""Serves the WSGI app on 127.0.0.1:$PORT (an agent host; Passenger needs no server)."""

import os
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from passenger_wsgi import application


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


make_server("127.0.0.1", int(os.environ["PORT"]), application, server_class=Server).serve_forever()
