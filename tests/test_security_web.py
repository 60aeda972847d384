"""Nobody without an account can hold the dashboard's port: slow clients from one address do not starve others.

Issue 24, item 3: about 210 half-open connections trickling one byte every 25 s
kept every page and /healthz unreachable (waitress accepts 200 connections and
its idle timeout restarts at every byte).
"""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

import web.server as web_server
from tests.support.wait import wait_until
from web.app import create_app
from web.server import serve

SLOW_CONNECTIONS = 220  # more than waitress's connection limit (200)
PER_ADDRESS = 8


@pytest.fixture
def guarded(book_appliance, store, accounts, monkeypatch):
    # The module's bounds, lowered so the test does not wait 20 s for the header deadline.
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS_PER_ADDRESS", PER_ADDRESS, raising=False)
    monkeypatch.setattr(web_server, "HEADER_TIMEOUT_S", 1.0, raising=False)
    handle = serve(create_app(book_appliance, store.path, accounts=accounts), "127.0.0.1", 0)
    yield handle
    handle.stop()


class Trickler:
    """Connections from 127.0.0.1 that send a request's headers one byte at a time, forever."""

    def __init__(self, port: int, count: int):
        self.socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.closed: set[int] = set()
        self.refused = 0  # answered "503 too many connections from this address"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        line = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        i = 0
        while not self._stop.wait(0.2):  # one byte every 0.2 s: waitress's idle timeout never fires
            for n, s in enumerate(self.socks):
                if n not in self.closed:
                    self._poke(n, s, line[i:i + 1])
            i = (i + 1) % len(line)

    def _poke(self, n: int, s: socket.socket, byte: bytes) -> None:
        try:
            s.send(byte)
            s.setblocking(False)
            try:
                answer = s.recv(4096)
            except BlockingIOError:
                return
            finally:
                s.setblocking(True)
        except OSError:  # reset by the server
            self.closed.add(n)
            return
        if answer.startswith(b"HTTP/1.1 503") and b"this address" in answer:
            self.refused += 1
        self.closed.add(n)  # an answer (the refusal) or the end of the stream: the server let go

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def healthz_from(addr: str, port: int) -> int | None:
    """The status /healthz answers to a client at ``addr``; None if it does not answer within a few seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3, source_address=(addr, 0))
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_slow_clients_of_one_address_do_not_starve_another(guarded):
    slow = Trickler(guarded.port, SLOW_CONNECTIONS)
    try:
        # Everything past the per-address bound is refused at once, with a reason ...
        wait_until(lambda: slow.refused >= SLOW_CONNECTIONS - PER_ADDRESS, what="connections over the bound refused")
        # ... so a technician's tablet (another address) is answered while the slow ones trickle on,
        assert wait_until(lambda: healthz_from("127.0.0.2", guarded.port) == 200, what="/healthz from 127.0.0.2")
        # and the ones held are closed once their headers are overdue, trickling or not.
        wait_until(lambda: len(slow.closed) == SLOW_CONNECTIONS, what="slow connections closed at the deadline")
        assert slow.refused == SLOW_CONNECTIONS - PER_ADDRESS
        assert guarded._server.timed_out == PER_ADDRESS
        # The slow address itself is served again once its connections are gone.
        assert wait_until(lambda: healthz_from("127.0.0.1", guarded.port) == 200, what="/healthz from 127.0.0.1")
    finally:
        slow.close()


def test_a_request_that_arrives_in_time_is_served_on_a_connection_kept_open(guarded):
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port)
    try:
        for _ in range(3):  # keep-alive: an idle connection between requests is not a slow request
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            assert r.status == 200 and r.read()
    finally:
        conn.close()


def test_a_body_trickled_after_prompt_headers_is_closed_at_the_request_deadline(guarded):
    guarded._server.request_timeout_s = 2.0
    s = socket.create_connection(("127.0.0.1", guarded.port))
    try:
        s.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n")  # the headers in time, the body never

        def closed() -> bool:
            try:
                s.send(b"x")
                s.setblocking(False)
                try:
                    return s.recv(4096) == b""
                except BlockingIOError:
                    return False
                finally:
                    s.setblocking(True)
            except OSError:
                return True

        wait_until(closed, what="the slow body's connection closed")
        assert guarded._server.timed_out == 1
    finally:
        s.close()
