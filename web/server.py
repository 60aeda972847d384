"""Serve the web app on a background thread, away from the appliance's event loop.

Werkzeug's threaded server handles each request on its own thread, so a slow
client or a store query never blocks detection. On a 2-core gateway the number
of requests worked on at once is still bounded (:class:`ConcurrencyLimit`): past
the bound a request gets a quick 503 instead of piling up threads.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, get_sockaddr, make_server, select_address_family

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 16


class _QuietHandler(WSGIRequestHandler):
    """Per-request access lines at DEBUG: a dashboard polling every 2 s would flood INFO."""

    def log_request(self, code="-", size="-") -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("web: request method=%s path=%s code=%s", self.command, self.path, code)

    def log_error(self, format: str, *args) -> None:
        log.info("web: connection problem client=%s %s", self.address_string(), format % args)


class ConcurrencyLimit:
    """WSGI middleware: at most ``limit`` requests in the app at once, 503 beyond."""

    def __init__(self, app, limit: int = MAX_CONCURRENT_REQUESTS):
        self.app = app
        self.rejected = 0
        self._slots = threading.BoundedSemaphore(limit)

    def __call__(self, environ, start_response):
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            body = json.dumps({"error": "the gateway is busy, try again"}).encode()
            start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body))),
                                                       ("Retry-After", "1")])
            return [body]
        try:
            # The app returns once it has done its work (status, store query,
            # command); only static files stream afterwards, which costs no
            # appliance work, so the slot is released here.
            return self.app(environ, start_response)
        finally:
            self._slots.release()


class ServerHandle:
    """A running dashboard server: ``host``, bound ``port``, ``url``, and ``stop()``."""

    def __init__(self, server: BaseWSGIServer, thread: threading.Thread):
        self._server = server
        self._thread = thread
        self.host = server.host
        self.port = server.port  # the bound port, also when 0 was asked for

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()
        log.info("web: dashboard stopped port=%d", self.port)


def serve(app, host: str = "127.0.0.1", port: int = 8080,
          max_concurrent: int = MAX_CONCURRENT_REQUESTS) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = any free port) and return at once.

    Binding happens here, so a port already in use raises ``OSError`` to the
    caller. The socket is bound by this function, not by werkzeug, because
    werkzeug answers a bind failure with ``sys.exit(1)``, which would take the
    whole appliance down over a dashboard port.
    """
    family = select_address_family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restart must not wait for the previous process's TIME_WAIT sockets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(64)
        server = make_server(host, port, ConcurrencyLimit(app, max_concurrent), threaded=True,
                             request_handler=_QuietHandler, fd=sock.fileno())
    finally:
        sock.close()  # werkzeug works on its own duplicate of the descriptor
    # Request threads must not keep a stopping appliance alive.
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="web-server", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread)
    log.info("web: dashboard listening url=%s", handle.url)
    return handle
