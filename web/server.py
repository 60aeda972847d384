"""Serve the web app with waitress on its own threads, away from the appliance's event loop.

Waitress (a production WSGI server, pure Python, no C build on a Raspberry Pi)
reads requests on one I/O thread and runs the app on a fixed pool of worker
threads, so a slow client or a store query never blocks detection, and the
number of threads never grows with the number of clients. The app sees at most
``max_concurrent`` requests at once (:class:`ConcurrencyLimit`): past that a
request gets a quick 503 instead of waiting in line. Live-update streams hold a
worker each for their (bounded) life, so the pool has room for them on top.

Nobody without an account can hold the port (:func:`_guarded_server_class`): one
client address holds at most ``MAX_CONNECTIONS_PER_ADDRESS`` connections (the
server's ``MAX_CONNECTIONS`` would otherwise be filled by one host), and a
request's headers must arrive within ``HEADER_TIMEOUT_S`` of its first byte (of
the connection, for its first request), the whole request within
``REQUEST_TIMEOUT_S``, however the bytes are trickled: waitress's own idle
timeout restarts at every byte, so ~200 connections sending one byte every 25 s
used to keep every page and ``/healthz`` unreachable.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 16
MAX_REQUEST_BODY = 1024 * 1024  # waitress's own bound, above the app's 64 KiB (which answers 413 itself)
MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 200
# A browser keeps up to 6 connections per site plus a live stream; a few tablets may share an address (NAT).
MAX_CONNECTIONS_PER_ADDRESS = 24
HEADER_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 60.0  # headers and body (the app takes at most 64 KiB)
_REFUSED_BODY = b'{"error": "too many connections from this address", "status": 503}'
_REFUSED_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Retry-After: 5\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY))


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


def _guarded_channel():
    """Waitress's channel, knowing since when it reads a request, and whose own refusals read like the app's.

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

    class GuardedChannel(HTTPChannel):
        error_task_class = OneLineErrorTask

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # When the request being read began: a fresh connection owes its first request at once.
            self.reading_since: float | None = self.creation_time

        def received(self, data) -> bool:
            fresh = self.request is None
            result = super().received(data)
            if self.request is None:
                self.reading_since = None  # every request read is complete: idle (channel_timeout applies)
            elif fresh and self.reading_since is None:
                self.reading_since = time.time()
            return result

        def overdue(self, now: float, header_s: float, request_s: float) -> bool:
            """Still reading a request that had its time: its headers ``header_s``, all of it ``request_s``."""
            if self.reading_since is None or self.requests or self.will_close:
                return False
            took = now - self.reading_since
            headers_done = self.request is not None and self.request.headers_finished
            return took > request_s or (took > header_s and not headers_done)

    return GuardedChannel


def _guarded_server_class():
    """Waitress's TCP server, bounding what one client address may hold (see the module's docstring)."""
    from waitress.server import TcpWSGIServer

    class GuardedServer(TcpWSGIServer):
        per_address = MAX_CONNECTIONS_PER_ADDRESS
        header_timeout_s = HEADER_TIMEOUT_S
        request_timeout_s = REQUEST_TIMEOUT_S
        exempt: frozenset[str] = frozenset()  # the trusted proxy: every client comes through its address
        refused = 0  # connections refused for their address's bound
        timed_out = 0  # connections closed for a request read too slowly

        def handle_accept(self) -> None:
            try:
                accepted = self.accept()
                if accepted is None:
                    return
                conn, addr = accepted
                self.set_socket_options(conn)
            except OSError:  # the peer went away before we got to it
                return
            if addr[0] not in self.exempt and self._connections_from(addr[0]) >= self.per_address:
                self._refuse(conn, addr[0])
                return
            self.channel_class(self, conn, addr, self.adj, map=self._map)

        def _connections_from(self, host: str) -> int:
            return sum(1 for channel in self.active_channels.values() if channel.addr[0] == host)

        def _refuse(self, conn, host: str) -> None:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("web: refused connections over the per-address bound addr=%s bound=%d refused=%d",
                            host[:64], self.per_address, self.refused)
            try:
                conn.setblocking(False)
                conn.send(_REFUSED_ANSWER)  # a few bytes into an empty send buffer: never blocks
            except OSError:
                pass
            finally:
                conn.close()

        def maintenance(self, now: float) -> None:
            super().maintenance(now)  # idle connections (channel_timeout)
            for channel in self.active_channels.values():
                if channel.overdue(now, self.header_timeout_s, self.request_timeout_s):
                    self.timed_out += 1
                    log.info("web: closed a connection whose request came too slowly addr=%s", channel.addr[0][:64])
                    channel.will_close = True

    return GuardedServer


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
          trusted_proxy: str | None = None, per_address: int | None = None,
          header_timeout_s: float | None = None, request_timeout_s: float | None = None) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0 = any free port) with waitress and return at once.

    Binding happens here, so a port already in use raises ``OSError`` to the
    caller (the appliance keeps running; the demo takes another port).
    ``threads`` workers run the app (default: ``max_concurrent`` plus room for
    the live streams); ``trusted_proxy`` is the address of a TLS-terminating
    reverse proxy whose ``X-Forwarded-Proto``/``-For`` are believed (the session
    cookie is then marked Secure for HTTPS clients; its own address is exempt
    from ``per_address``). ``header_timeout_s`` and ``request_timeout_s`` bound
    how long a request may take to arrive (checked every few seconds).
    """
    from waitress.adjustments import Adjustments

    # The module's bounds, read at each call (the tests lower them).
    per_address = per_address or MAX_CONNECTIONS_PER_ADDRESS
    header_timeout_s = header_timeout_s or HEADER_TIMEOUT_S
    request_timeout_s = request_timeout_s or REQUEST_TIMEOUT_S
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
    adj = Adjustments(
        sockets=[sock], threads=threads, ident="appliance",
        max_request_body_size=MAX_REQUEST_BODY, max_request_header_size=MAX_HEADER_BYTES,
        channel_timeout=120, connection_limit=MAX_CONNECTIONS, expose_tracebacks=False,
        # How often the deadlines are checked: a slow request is closed at most this late.
        cleanup_interval=max(0.2, min(5.0, header_timeout_s / 4)),
        clear_untrusted_proxy_headers=True, asyncore_use_poll=True, **proxy)
    server_class = _guarded_server_class()
    # What waitress's create_server does for one listening socket, with our server class.
    server = server_class(ConcurrencyLimit(app, max_concurrent), {}, True, sock, dispatcher=_dispatcher(threads),
                          adj=adj, bind_socket=False, sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
    server.channel_class = _guarded_channel()
    server.per_address = per_address
    server.header_timeout_s = header_timeout_s
    server.request_timeout_s = request_timeout_s
    server.exempt = frozenset([trusted_proxy]) if trusted_proxy else frozenset()
    thread = threading.Thread(target=server.run, name="web-server", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, host, bound_port, app)
    log.info("web: dashboard listening url=%s threads=%d", handle.url, threads)
    return handle
