"""History end to end against a scriptable InfluxDB write endpoint on a real loopback socket.

The endpoint records the bodies it acknowledged (gunzipped), so these tests see
exactly what a server would have stored, in the order it arrived, and can make
the server fail in the ways InfluxDB does (503 + Retry-After, 400, 401).
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from appliance.broker import free_port
from appliance.config import Config
from appliance.core import Alarm, AlarmEvent, AlarmState, Level, Reading, Score
from appliance.history.config import HistoryConfig
from appliance.history.sink import History
from tests.support.wait import wait_until


class FakeInflux:
    """``policy(body) -> (status, headers)``; only 2xx bodies are recorded as stored."""

    def __init__(self):
        self.stored: list[bytes] = []  # lines, in arrival order
        self.requests: list[dict] = []
        self.policy = lambda body: (204, {})
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                status, headers = fake.policy(body)
                with fake.lock:
                    fake.requests.append({"path": urlparse(self.path).path,
                                          "query": parse_qs(urlparse(self.path).query),
                                          "headers": dict(self.headers), "status": status})
                    if 200 <= status < 300:
                        fake.stored.extend(body.split(b"\n"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                msg = b"" if status == 204 else b'{"code":"invalid","message":"refused by test"}'
                self.send_header("Content-Length", str(len(msg)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(msg)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lines(self) -> list[bytes]:
        with self.lock:
            return list(self.stored)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def influx():
    f = FakeInflux()
    yield f
    f.close()


def make_cfg(url: str, **outbox) -> HistoryConfig:
    return HistoryConfig.model_validate({
        "global_tags": {"site": "test"},
        "influx": {"url": url, "token": "secret", "org": "acme", "bucket": "plant", "batch_size": 50,
                   "flush_interval_s": 0.05, "retry": {"initial_s": 0.05, "max_s": 0.3}},
        "outbox": {"commit_interval_s": 0.05, **outbox},
    })


def drained(h: History) -> bool:
    st = h.status()
    return st["outbox"]["points"] == 0 and sum(st["pending"].values()) == 0


def alarm_event(i: int, ts: float) -> AlarmEvent:
    a = Alarm(id=f"al{i}", asset="p1", level=Level.ANOMALY, state=AlarmState.UNACKED, start=ts,
              peak_ratio=2.0 + i, top_sensors=("s0",))
    return AlarmEvent("raised", a, ts)


def series_key(line: bytes) -> bytes:
    return line.split(b" ")[0]


def test_points_arrive_once_in_order_with_gzip_token_and_bucket(tmp_path, influx):
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    t0 = 1_700_000_000.0
    expected = []
    for i in range(300):
        for s in range(3):
            r = Reading("p1", f"s{s}", t0 + i, float(i))
            h.add_reading(r)
            expected.append(r)
        h.add_score(Score("p1", t0 + i, 0.1, 1.0, {"s0": 1.0}))
        if i % 100 == 0:
            h.add_alarm_event(alarm_event(i, t0 + i))
            h.add_audit({"ts": t0 + i, "action": "advise", "asset": "p1", "seq": i})
    assert h.flush()
    wait_until(lambda: drained(h), what="outbox drained")
    lines = influx.lines()
    h.stop()

    assert len(lines) == len(set(lines)) == 900 + 300 + 3 + 3
    by_series: dict[bytes, list[int]] = {}
    for ln in lines:
        if ln.startswith(b"reading,"):
            by_series.setdefault(series_key(ln), []).append(int(ln.rsplit(b" ", 1)[1]))
    assert len(by_series) == 3
    for stamps in by_series.values():
        assert stamps == sorted(stamps) and len(stamps) == 300  # arrival order == acceptance order
    assert b"reading,asset=p1,sensor=s0,site=test quality=0i,value=5 1700000005000000000" in lines
    req = influx.requests[0]
    assert req["path"] == "/api/v2/write"
    assert req["query"]["org"] == ["acme"] and req["query"]["bucket"] == ["plant"]
    assert req["query"]["precision"] == ["ns"]
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert req["headers"]["Authorization"] == "Token secret"
    assert all(r["status"] == 204 for r in influx.requests)


def test_server_unavailable_then_back_nothing_lost_nothing_twice(tmp_path, influx):
    fails = {"n": 0}

    def policy(body):
        if fails["n"] < 4:
            fails["n"] += 1
            return 503, {"Retry-After": "0"}
        return 204, {}

    influx.policy = policy
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    for i in range(500):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    assert h.flush()
    wait_until(lambda: h.status()["forwarder"]["requests_failed"] >= 1, what="a failed write")
    st = h.status()
    assert "503" in st["last_error"]
    wait_until(lambda: drained(h), what="outbox drained")
    lines = influx.lines()
    assert len(lines) == len(set(lines)) == 500
    st = h.status()
    assert st["forwarder"]["requests_failed"] == 4 and st["state"] == "ok"
    text = h.metrics_text().decode()
    assert "appliance_history_write_errors_total 4.0" in text
    assert 'appliance_history_points_sent_total{kind="reading"} 500.0' in text
    assert "appliance_history_up 1.0" in text
    h.stop()


def test_refused_point_is_isolated_and_counted_rest_delivered(tmp_path, influx):
    influx.policy = lambda body: (400, {}) if b"poison" in body else (204, {})
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    for i in range(120):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
        if i == 37:
            h.add_audit({"ts": 1_700_000_000.0 + i, "action": "poison", "seq": i})
    assert h.flush()
    wait_until(lambda: drained(h), what="outbox drained")
    lines = influx.lines()
    assert len(lines) == len(set(lines)) == 120
    st = h.status()
    assert st["dropped"] == {"audit": {"rejected": 1}}
    assert h.outbox.rejected_rows()[0]["line"].startswith("audit,action=poison")
    assert 'appliance_history_points_dropped_total{kind="audit",reason="rejected"} 1.0' in h.metrics_text().decode()
    h.stop()


def test_unauthorized_keeps_everything_until_fixed(tmp_path, influx):
    influx.policy = lambda body: (401, {})
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    for i in range(80):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    h.add_alarm_event(alarm_event(1, 1_700_000_000.5))
    assert h.flush()
    wait_until(lambda: h.status()["forwarder"]["requests_failed"] >= 3, what="repeated 401s")
    st = h.status()
    assert st["state"] == "retrying" and "401" in st["last_error"]
    assert st["outbox"]["points"] == 81 and st["dropped_total"] == 0
    assert st["outbox"]["oldest_age_s"] >= 0
    influx.policy = lambda body: (204, {})  # token fixed on the server side
    wait_until(lambda: drained(h), what="outbox drained")
    assert len(set(influx.lines())) == len(influx.lines()) == 81
    h.stop()


def test_defaults_run_without_any_server(tmp_path):
    cfg = Config().outputs.history
    assert cfg.enabled and cfg.influx.url == "http://127.0.0.1:8086"
    # The default points at a local InfluxDB; aim at a closed port so the test
    # does not depend on what this machine runs.
    closed = f"http://127.0.0.1:{free_port()}"
    h = History(cfg.model_copy(update={"influx": cfg.influx.model_copy(update={"url": closed})}), tmp_path)
    h.start()
    h.add_reading(Reading("p1", "s", time.time(), 1.0))
    h.add_score(Score("p1", time.time(), 0.1, 1.0, {}))
    assert h.flush()
    wait_until(lambda: h.status()["forwarder"]["requests_failed"] >= 1, what="a failed write")
    st = h.status()
    assert st["outbox"]["points"] == 2 and st["state"] == "retrying"
    assert "Connection" in st["last_error"] or "refused" in st["last_error"].lower()
    assert (tmp_path / "history_outbox.db").exists() and (tmp_path / "history_local.db").exists()
    assert len(h.query_readings("p1", "s", 0, 2e9)) == 1
    forwarder = h.forwarder._thread
    h.stop()
    # Stopped, not abandoned: with the server away the forwarder's retry loop still ends
    # within stop()'s own timeout (past it, stop() would give up and leave the thread running) ...
    assert not h.status()["running"] and not forwarder.is_alive()
    # ... and what could not be sent stays in the outbox for the next start.
    h2 = History(h.cfg, tmp_path)
    assert h2.status()["outbox"]["points"] == 2
    h2.stop()


def test_bad_input_is_counted_never_raised(tmp_path, influx):
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    h.add_reading(Reading("", "s", 1.0, 1.0))
    h.add_reading("not a reading")
    h.add_score(Score("p1", float("nan"), 1.0, 1.0, {}))
    h.add_audit(["not", "a", "mapping"])
    h.add_audit({"ts": "yesterday", "action": "x"})
    h.add_reading(Reading("p1", "s", 1_700_000_000.0, 1.0))
    assert h.flush()
    wait_until(lambda: drained(h), what="outbox drained")
    assert h.status()["dropped"] == {"reading": {"invalid": 2}, "score": {"invalid": 1}, "audit": {"invalid": 2}}
    assert len(influx.lines()) == 1
    h.stop()


def test_memory_buffer_is_bounded_and_counts_what_it_sheds(tmp_path, influx):
    h = History(make_cfg(influx.url, max_pending=100), tmp_path)  # not started: the writer is "stalled"
    for i in range(130):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    for i in range(5):
        h.add_alarm_event(alarm_event(i, 1_700_000_000.0 + i))
    st = h.status()
    assert st["pending"] == {"reading": 100, "score": 0, "events": 5}
    assert st["dropped"] == {"reading": {"pending_full": 30}}
    h.start()
    assert h.flush()
    wait_until(lambda: drained(h), what="outbox drained")
    stamps = sorted(int(ln.rsplit(b" ", 1)[1]) for ln in influx.lines() if ln.startswith(b"reading"))
    assert len(stamps) == 100 and stamps[0] == 1_700_000_030 * 10**9  # the oldest 30 went
    h.stop()


def test_stop_commits_the_buffer_and_a_new_process_resumes(tmp_path, influx):
    influx.policy = lambda body: (503, {})
    h = History(make_cfg(influx.url), tmp_path)
    h.start()
    for i in range(200):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    h.stop()  # no flush(): stop itself commits what is buffered
    assert h.status()["outbox"]["points"] == 200

    influx.policy = lambda body: (204, {})
    h2 = History(make_cfg(influx.url), tmp_path)
    assert h2.status()["outbox"]["points"] == 200
    h2.start()
    wait_until(lambda: drained(h2), what="outbox drained")
    assert len(set(influx.lines())) == len(influx.lines()) == 200
    h2.stop()


def test_concurrent_producers_lose_nothing_while_the_writer_commits(tmp_path):
    """add_* from several threads while the writer swaps buffers under them."""
    closed = f"http://127.0.0.1:{free_port()}"
    cfg = make_cfg(closed, commit_interval_s=0.001)
    h = History(cfg, tmp_path)
    h.start()
    per_thread, threads = 20_000, 4

    def produce(k):
        for i in range(per_thread):
            h.add_reading(Reading("p1", f"s{k}", 1_700_000_000.0 + i * 0.001, float(i)))
            if i % 7 == 0:
                h.add_score(Score(f"p{k}", 1_700_000_000.0 + i * 0.001, 0.1, 1.0, {}))

    ts = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert h.flush(30)
    st = h.status()
    h.stop()
    scores = threads * len(range(0, per_thread, 7))
    assert st["store_error"] is None and st["dropped_total"] == 0
    assert st["outbox"]["by_kind"]["reading"] == per_thread * threads
    assert st["outbox"]["by_kind"]["score"] == scores
    assert st["accepted"] == {"reading": per_thread * threads, "score": scores, "alarm": 0, "audit": 0}


def test_outbox_commit_failure_keeps_points_buffered_until_the_disk_recovers(tmp_path, influx, monkeypatch):
    import sqlite3

    h = History(make_cfg(influx.url), tmp_path)
    real_append = h.outbox.append
    failing = {"on": True}

    def append(rows, extra_drops=None, now=None):
        if failing["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_append(rows, extra_drops, now)

    monkeypatch.setattr(h.outbox, "append", append)
    h.start()
    for i in range(50):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    h.add_audit({"ts": 1_700_000_000.0, "action": "arm", "seq": 1})
    assert not h.flush(timeout=0.5)  # not accepted while the disk refuses
    st = h.status()
    assert "disk is full" in st["store_error"]
    assert st["pending"] == {"reading": 50, "score": 0, "events": 1}
    assert 'appliance_history_store_error 1.0' in h.metrics_text().decode()
    failing["on"] = False
    assert h.flush(timeout=30)
    wait_until(lambda: drained(h), what="outbox drained")
    assert len(set(influx.lines())) == len(influx.lines()) == 51
    assert h.status()["store_error"] is None
    h.stop()


def test_unusable_data_dir_is_a_clear_error(tmp_path):
    from appliance.history.sink import HistoryError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(HistoryError, match="history.outbox.path"):
        History(make_cfg("http://127.0.0.1:1"), blocker)


def test_forwarder_survives_an_outbox_read_error(tmp_path, influx, monkeypatch):
    import sqlite3

    from appliance.history import forwarder

    monkeypatch.setattr(forwarder, "CRASH_PAUSE_S", 0.05)
    h = History(make_cfg(influx.url), tmp_path)
    real_peek = h.outbox.peek
    calls = {"n": 0}

    def peek(n, b):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real_peek(n, b)

    monkeypatch.setattr(h.outbox, "peek", peek)
    h.start()
    for i in range(30):
        h.add_reading(Reading("p1", "s", 1_700_000_000.0 + i, float(i)))
    assert h.flush()
    wait_until(lambda: drained(h), what="outbox drained")
    assert len(influx.lines()) == 30
    assert "disk I/O error" in h.status()["forwarder"]["last_error"]
    h.stop()
