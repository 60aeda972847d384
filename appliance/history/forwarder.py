"""Drains the outbox into InfluxDB, in order, one acknowledged batch at a time.

A plain influxdb-client user: the v2 write API in SYNCHRONOUS mode, called from
this thread's own loop, so the call's return *is* the server's acknowledgement of
exactly the batch that was sent, and only then is that batch deleted. One batch
is in flight at a time, which keeps points of a series in acceptance order.

Delivery is at least once: if the process dies after the server acknowledged a
batch but before the delete committed, or a request times out after the server
wrote it, the batch is sent again. That resend is the same bytes (measurement,
tags, timestamp), which InfluxDB stores as the same point, so downstream there is
exactly one.

Failures:

* connection errors, timeouts, 5xx, 429 and anything unknown: the batch stays,
  the thread waits a jittered, growing delay (``Retry-After`` honoured) and tries
  again; the first failure of a streak logs a warning, the rest stay at debug;
* 401/403/404 (token, org or bucket wrong): same, the outbox keeps everything
  until the configuration is fixed; ``last_error`` says why;
* 400/413/422 (the server refuses the data): the batch is halved until the
  refused point is alone, then that one point is moved to the ``rejected`` table
  and counted, so one bad point never blocks the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from email.utils import parsedate_to_datetime

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from appliance.connections.backoff import jittered_backoff
from appliance.history.lineproto import Kind
from appliance.history.outbox import Outbox, Row

log = logging.getLogger(__name__)

REFUSED = (400, 413, 422)
CRASH_PAUSE_S = 5.0


class RateMeter:
    """Events per second over a sliding window, in one-second buckets."""

    def __init__(self, window_s: int = 60):
        self.window_s = window_s
        self._buckets: deque[list] = deque()
        self._started = time.monotonic()

    def add(self, n: int, now: float | None = None) -> None:
        sec = int(time.monotonic() if now is None else now)
        if self._buckets and self._buckets[-1][0] == sec:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([sec, n])
        self._trim(sec)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(int(now))
        span = min(self.window_s, max(1.0, now - self._started))
        return sum(n for _, n in self._buckets) / span

    def _trim(self, sec: int) -> None:
        while self._buckets and self._buckets[0][0] <= sec - self.window_s:
            self._buckets.popleft()


class ForwarderStats:
    """What the forwarder did, read by status() and /metrics from other threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {k: 0 for k in Kind}
        self.batches = 0
        self.requests_failed = 0
        self.consecutive_failures = 0
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_status: int | None = None
        self.next_attempt_at: float | None = None
        self.rate = RateMeter()

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "sent": {k.label: n for k, n in self.sent.items()},
                "batches": self.batches,
                "requests_failed": self.requests_failed,
                "consecutive_failures": self.consecutive_failures,
                "last_success_at": self.last_success_at,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "last_status": self.last_status,
                "retry_in_s": (max(0.0, self.next_attempt_at - time.monotonic())
                               if self.next_attempt_at is not None else None),
                "sent_per_s": round(self.rate.rate(), 3),
            }


class Forwarder:
    def __init__(self, cfg, outbox: Outbox):
        """``cfg`` is a :class:`~appliance.config.HistoryInfluxConfig`."""
        self.cfg = cfg
        self.outbox = outbox
        self.stats = ForwarderStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the request in flight (bounded by the client timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.cfg.timeout_s + 2 if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("history forwarder did not stop in time; its batch stays in the outbox")
        self.outbox.release()

    def _make_client(self) -> InfluxDBClient:
        tls = self.cfg.tls
        kwargs = {}
        if tls.ca_file:
            kwargs["ssl_ca_cert"] = tls.ca_file
        if tls.cert_file:
            kwargs["cert_file"] = tls.cert_file
        if tls.key_file:
            kwargs["cert_key_file"] = tls.key_file
        return InfluxDBClient(url=self.cfg.url, token=self.cfg.token or None, org=self.cfg.org,
                              timeout=int(self.cfg.timeout_s * 1000), enable_gzip=self.cfg.gzip,
                              verify_ssl=not tls.insecure_skip_verify, **kwargs)

    def _run(self) -> None:
        while not self._stop.is_set():
            client = None
            try:
                client = self._make_client()
                self._loop(client.write_api(write_options=SYNCHRONOUS))
            except Exception as e:
                # The outbox file failing (I/O error) or a bug: never let the thread
                # die for good. The batch stays in the outbox and is sent again later.
                log.exception("history forwarder error; restarting in %.0f s", CRASH_PAUSE_S)
                with self.stats.lock:
                    self.stats.last_error = f"forwarder error: {type(e).__name__}: {_short(e)}"
                    self.stats.last_error_at = time.time()
                self._stop.wait(CRASH_PAUSE_S)
            finally:
                if client is not None:
                    try:
                        client.close()
                    except Exception as e:
                        log.debug("history client close error=%s", e)

    def _loop(self, write_api) -> None:
        cfg = self.cfg
        delays = jittered_backoff(cfg.retry.initial_s, cfg.retry.max_s)
        limit = cfg.batch_size
        while not self._stop.is_set():
            rows = self.outbox.peek(limit, cfg.batch_max_bytes)
            if not rows:
                self._stop.wait(min(0.2, cfg.flush_interval_s) or 0.05)
                continue
            # A partial batch waits for more points until its oldest point has waited
            # flush_interval_s (a backlog goes at once). Capped in case the wall
            # clock stepped back since the point was accepted.
            wait = min(cfg.flush_interval_s, cfg.flush_interval_s - (time.time() - rows[0].accepted_at))
            if len(rows) < limit and wait > 0:
                self._stop.wait(wait)
                if self._stop.is_set():
                    break
                continue
            error, status, retry_after = self._send(write_api, rows)
            if error is None:
                self.outbox.ack(rows)
                self._succeeded(rows)
                delays = jittered_backoff(cfg.retry.initial_s, cfg.retry.max_s)
                limit = cfg.batch_size
                continue
            if status in REFUSED:
                if len(rows) > 1:
                    # Bisect to find the refused point; the good ones are resent,
                    # which is harmless (same points).
                    limit = max(1, len(rows) // 2)
                    log.debug("history batch refused status=%s size=%d; halving", status, len(rows))
                    continue
                self.outbox.reject(rows[0], status, error)
                log.warning("history point refused by server and set aside status=%s kind=%s error=%s "
                            "line=%.200s", status, rows[0].kind.label, error,
                            rows[0].line.decode(errors="replace"))
                limit = cfg.batch_size
                continue
            delay = next(delays)
            if retry_after is not None:
                delay = min(max(delay, retry_after), cfg.retry.max_s)
            self._failed(error, status, delay)
            self._stop.wait(delay)
            with self.stats.lock:
                self.stats.next_attempt_at = None

    def _send(self, write_api, rows: list[Row]) -> tuple[str | None, int | None, float | None]:
        body = b"\n".join(r.line for r in rows)
        try:
            write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=body,
                            write_precision=WritePrecision.NS)
            return None, None, None
        except ApiException as e:
            msg = (getattr(e, "message", None) or e.reason or str(e)).strip()
            return f"HTTP {e.status}: {msg}", e.status, _retry_after(e.headers)
        except Exception as e:  # urllib3/socket errors: server away, network down
            return f"{type(e).__name__}: {_short(e)}", None, None

    def _succeeded(self, rows: list[Row]) -> None:
        now = time.time()
        st = self.stats
        with st.lock:
            recovered = st.consecutive_failures
            for r in rows:
                st.sent[r.kind] += 1
            st.batches += 1
            st.consecutive_failures = 0
            st.last_success_at = now
            st.last_status = 204
            st.rate.add(len(rows))
        if recovered:
            points, _, _ = self.outbox.totals()
            log.info("history writes recovered url=%s after_failures=%d backlog=%d",
                     self.cfg.url, recovered, sum(points.values()))

    def _failed(self, error: str, status: int | None, delay: float) -> None:
        st = self.stats
        with st.lock:
            st.requests_failed += 1
            st.consecutive_failures += 1
            first = st.consecutive_failures == 1
            st.last_error = error
            st.last_error_at = time.time()
            st.last_status = status
            st.next_attempt_at = time.monotonic() + delay
        points, _, _ = self.outbox.totals()
        # One warning per outage, not one per retry: the outbox is doing its job.
        log.log(logging.WARNING if first else logging.DEBUG,
                "history write failed url=%s error=%s backlog=%d retry_in_s=%.1f",
                self.cfg.url, error, sum(points.values()), delay)


def _retry_after(headers) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _short(e: Exception) -> str:
    # urllib3 wraps the cause in long reprs; the innermost reason is what helps.
    reason = getattr(e, "reason", None)
    text = str(reason if reason is not None else e)
    return text if len(text) <= 300 else text[:300] + "..."
