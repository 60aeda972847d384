"""Serve the web app with waitress on its own threads, away from the appliance's event loop.

Waitress (a production WSGI server, pure Python, no C build on a Raspberry Pi)
reads requests on one I/O thread and runs the app on a fixed pool of worker
threads, so a slow client or a store query never blocks detection, and the
number of threads never grows with the number of clients. The app sees at most
``max_concurrent`` requests at once (:class:`ConcurrencyLimit`): past that a
request gets a quick 503 instead of waiting in line. Live-update streams hold a
worker each for their (bounded) life, so the pool has room for them on top.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 16
MAX_REQUEST_BODY = 1024 * 1024  # waitress's own bound, above the app's 64 KiB (which answers 413 itself)
MAX_HEADER_BYTES = 64 * 1024


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
            # command); only static files and live streams go on afterwards,
            # which cost no appliance work, so the slot is released here.
            return self.app(environ, start_response)
        finally:
            self._slots.release()


class _MostRecentlyIdleFirst(threading.Condition):
    """A condition whose ``notify`` wakes the worker that went idle last, not the one idle longest.

    Waitress hands each request to whichever worker ``notify`` wakes, and
    ``threading.Condition`` wakes the longest waiter, so even one visitor's
    requests rotate through all ~17-25 workers. Every worker then warms its own
    stack pages and glibc malloc arena, and the process's RSS crept up by about
    2 MiB per 20,000 requests for as long as we measured (tracemalloc saw almost
    nothing: it is allocator memory, not Python objects). Waking the most
    recently idle worker keeps a light load on the same one or two warm threads;
    the others are touched only when requests really overlap, so RSS follows
    the peak concurrency instead of the request count.
    """

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters
        while waiters and n > 0:
            waiter = waiters.pop()  # the newest waiter; the stock class takes waiters[0]
            try:
                waiter.release()
            except RuntimeError:  # it timed out meanwhile (waitress waits without a timeout)
                continue
            n -= 1


def _dispatcher(threads: int):
    """Waitress's task dispatcher with ``threads`` workers, waking them most-recently-idle first."""
    from waitress.task import ThreadedTaskDispatcher

    dispatcher = ThreadedTaskDispatcher()
    dispatcher.queue_cv = _MostRecentlyIdleFirst(dispatcher.lock)  # before any worker waits on it
    dispatcher.set_thread_count(threads)
    return dispatcher


def _one_line_error_channel():
    """Waitress's channel, whose own refusals read like the app's: JSON with a one-line reason.

    Waitress answers some requests before the app sees them: a body over
    ``MAX_REQUEST_BODY``, a header block over ``MAX_HEADER_BYTES``, a request it
    cannot parse. Its stock answer is a three-paragraph text page; a client of the
    API gets ``{"error": "...", "status": N}`` like every other refusal instead.
    """
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class OneLineErrorTask(ErrorTask):
        def execute(self) -> None:
            err = self.request.error
            reason = " ".join(f"{err.reason}: {err.body}".split())[:300]
            body = json.dumps({"error": reason, "status": err.code}).encode()
            self.status = f"{err.code} {err.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class OneLineErrorChannel(HTTPChannel):
        error_task_class = OneLineErrorTask

    return OneLineErrorChannel


class ServerHandle:
    """A running dashboard server: ``host``, bound ``port``, ``url``, and ``stop()``."""

    def __init__(self, server, thread: threading.Thread, host: str, port: int, app=None):
        self._server = server
        self._thread = thread
        self._app = app
        self._stopped = False
        self.host = host
        self.port = port  # the bound port, also when 0 was asked for

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
        """End live streams, let the workers finish, then close every connection and the listening socket."""
        if self._stopped:
            return
        self._stopped = True
        ctx = getattr(self._app, "extensions", {}).get("appliance_web") if self._app is not None else None
        if ctx is not None:
            ctx.close()  # live streams end, so their worker threads are free to stop
        server = self._server
        # Workers first: a worker finishing a response wakes the I/O thread through the trigger,
        # which must still be open then.
        server.task_dispatcher.shutdown(timeout=timeout)
        if self._thread.is_alive():
            done = threading.Event()

            def close_everything() -> None:
                # Runs on waitress's I/O thread (through its trigger), where closing channels is safe.
                try:
                    for channel in list(server._map.values()):
                        if channel is not server.trigger:
                            channel.close()
                    server.trigger.close()
                finally:
                    done.set()

            try:
                server.trigger.pull_trigger(close_everything)
                done.wait(timeout)
            except OSError:  # the trigger is gone already
                pass
            self._thread.join(timeout)
        sock = getattr(server, "socket", None)
        if sock is not None:  # the I/O loop never ran, or did not close it
            try:
                sock.close()
            except OSError:
                pass
        log.info("web: dashboard stopped port=%d", self.port)


def serve(app, host: str = "127.0.0.1", port: int = 8080, max_concurrent: int = MAX_CONCURRENT_REQUESTS, *,
          threads: int | None = None, live_streams: int | None = None,
          trusted_proxy: str | None = None) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = any free port) with waitress and return at once.

    Binding happens here, so a port already in use raises ``OSError`` to the
    caller (the appliance keeps running; the demo takes another port).
    ``threads`` workers run the app (default: ``max_concurrent`` plus room for
    the live streams); ``trusted_proxy`` is the address of a TLS-terminating
    reverse proxy whose ``X-Forwarded-Proto``/``-For`` are believed (the session
    cookie is then marked Secure for HTTPS clients).
    """
    from waitress.server import create_server

    if live_streams is None:
        ctx = getattr(app, "extensions", {}).get("appliance_web")
        live_streams = ctx.live.max_streams if ctx is not None else 0
    threads = threads or (max_concurrent + live_streams + 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restart must not wait for the previous process's TIME_WAIT sockets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    proxy = {}
    if trusted_proxy:
        proxy = {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": {"x-forwarded-proto", "x-forwarded-for", "x-forwarded-host"}}
    server = create_server(
        ConcurrencyLimit(app, max_concurrent), _dispatcher=_dispatcher(threads), sockets=[sock], threads=threads,
        ident="appliance",
        max_request_body_size=MAX_REQUEST_BODY, max_request_header_size=MAX_HEADER_BYTES,
        channel_timeout=120, cleanup_interval=30, connection_limit=200, expose_tracebacks=False,
        clear_untrusted_proxy_headers=True, asyncore_use_poll=True, **proxy)
    server.channel_class = _one_line_error_channel()  # one server (one socket): its class makes each channel
    thread = threading.Thread(target=server.run, name="web-server", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, host, bound_port, app)
    log.info("web: dashboard listening url=%s threads=%d", handle.url, threads)
    return handle
