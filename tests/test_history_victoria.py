"""History against a real server: VictoriaMetrics speaking the InfluxDB v2 write API.

VictoriaMetrics runs without deduplication, so every resend would be visible as
an extra sample: "exactly once" below is checked on the raw samples wherever the
protocol allows it (server outage), and on distinct points plus a bound on raw
resends where it does not (kill -9 between the server's acknowledgement and the
outbox delete: InfluxDB overwrites such a resend, being the same point).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from appliance.history.config import HistoryConfig
from appliance.core import Alarm, AlarmEvent, AlarmState, Level, Reading, Score
from appliance.history.sink import History
from appliance.history.lineproto import ts_ns
from tests.support.victoria import count_points
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration  # a real VictoriaMetrics server

REPO = Path(__file__).resolve().parents[1]
SENSORS = ("current", "vib_x", "vib_y", "temp")


def ms(ts: float) -> int:
    """The millisecond timestamp VictoriaMetrics stores for a point sent at ``ts``."""
    return ts_ns(ts) // 1_000_000


def cfg_for(url: str, **over) -> HistoryConfig:
    influx = {"url": url, "batch_size": 200, "flush_interval_s": 0.05,
              "retry": {"initial_s": 0.05, "max_s": 0.5}}
    influx.update(over.pop("influx", {}))
    outbox = {"commit_interval_s": 0.05}
    outbox.update(over.pop("outbox", {}))
    return HistoryConfig.model_validate({"influx": influx, "outbox": outbox, **over})


def drained(h: History) -> bool:
    st = h.status()
    return st["outbox"]["points"] == 0 and sum(st["pending"].values()) == 0


def alarm_event(i: int, ts: float) -> AlarmEvent:
    a = Alarm(id=f"al{i:04d}", asset="p1", level=Level.ANOMALY, state=AlarmState.UNACKED, start=ts,
              peak_ratio=2.0, top_sensors=("current",))
    return AlarmEvent("raised", a, ts)


def test_server_stopped_then_restarted_every_point_exactly_once_in_order(tmp_path, victoria):
    h = History(cfg_for(victoria.url), tmp_path / "gw")
    h.start()
    t0 = float(int(time.time()) - 86400)
    seq = 0

    def produce(n):
        nonlocal seq
        for _ in range(n):
            ts = t0 + seq * 0.5
            for s in SENSORS:
                h.add_reading(Reading("p1", s, ts, float(seq)))
            h.add_score(Score("p1", ts, 0.01 * seq, 1.0, {"current": 1.0}))
            if seq % 50 == 0:
                h.add_alarm_event(alarm_event(seq, ts))
                h.add_audit({"ts": ts, "asset": "p1", "action": "advise", "seq": seq})
            seq += 1
        assert h.flush()

    produce(500)                       # server up
    wait_until(lambda: drained(h), what="first drain")
    victoria.stop()
    produce(1500)                      # server away: the outbox grows
    wait_until(lambda: h.status()["forwarder"]["consecutive_failures"] >= 3, what="retries while down")
    st = h.status()
    assert st["state"] == "retrying" and st["outbox"]["points"] >= 1500 * 5
    assert st["outbox"]["oldest_age_s"] > 0
    time.sleep(1.0)                    # stay away a little longer, retrying with backoff
    victoria.start()
    produce(500)                       # server back, new points queue behind the backlog
    wait_until(lambda: drained(h), timeout=60, what="drain after restart")
    text = h.metrics_text().decode()
    h.stop()

    n = seq
    for s in SENSORS:
        series = victoria.series("reading_value")[(("asset", "p1"), ("sensor", s))]
        stamps, values = series
        assert len(stamps) == n, f"{s}: {len(stamps)} samples for {n} points (lost or duplicated)"
        assert stamps == [ms(t0 + i * 0.5) for i in range(n)]      # each once, in order
        assert values == [float(i) for i in range(n)]              # and the right value at each
    assert count_points(victoria.series("score_value")) == (n, n)
    assert count_points(victoria.series("alarm_event_active")) == (n // 50, n // 50)
    assert count_points(victoria.series("audit_seq")) == (n // 50, n // 50)
    assert st["dropped_total"] == 0
    for metric in ("appliance_history_outbox_points", "appliance_history_outbox_oldest_age_seconds",
                   "appliance_history_write_rate_points_per_second", "appliance_history_points_dropped_total",
                   "appliance_history_write_errors_total", "appliance_history_up 1.0"):
        assert metric in text
    assert f'appliance_history_points_sent_total{{kind="reading"}} {float(n * 4)}' in text


CHILD = textwrap.dedent("""
    import sys, time
    from appliance.history.config import HistoryConfig
    from appliance.core import Reading
    from appliance.history.sink import History

    data_dir, url, t0, start, count, batch = sys.argv[1], sys.argv[2], float(sys.argv[3]), \\
        int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    sensors = sys.argv[7].split(",")
    cfg = HistoryConfig.model_validate({
        "influx": {"url": url, "batch_size": batch, "flush_interval_s": 0,
                   "retry": {"initial_s": 0.05, "max_s": 0.5}},
        "outbox": {"commit_interval_s": 0.05}, "local": {"enabled": False}})
    h = History(cfg, data_dir)
    h.start()
    seq = start
    while seq < start + count:
        for _ in range(250):
            for s in sensors:
                h.add_reading(Reading("p1", s, t0 + seq * 0.01, float(seq)))
            seq += 1
        h.flush()
        print("accepted", seq, flush=True)
        print("sent", h.status()["forwarder"]["sent"]["reading"], flush=True)
    while True:
        st = h.status()
        print("sent", st["forwarder"]["sent"]["reading"], "outbox", st["outbox"]["points"], flush=True)
        if st["outbox"]["points"] == 0:
            print("drained", flush=True)
            break
        time.sleep(0.01)
    h.stop()
""")


class Child:
    """The writer in its own process, so it can be killed for real."""

    def __init__(self, script: Path, *args):
        self.proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.accepted: int | None = None
        self.sent = 0

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())
        self.lines.put(None)

    def run_until(self, pred, timeout=60.0) -> bool:
        """Follow the child's progress until ``pred(self)``; False if it finished first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                words = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if words is None:
                return False
            if words[0] == "accepted":
                self.accepted = int(words[1])
            elif words[0] == "sent":
                self.sent = int(words[1])
            if pred(self):
                return True
        raise AssertionError("child made no progress in time")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def test_kill9_mid_drain_then_restart_exactly_once(tmp_path, victoria):
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    data = tmp_path / "gw"
    t0 = float(int(time.time()) - 86400)
    batch = 100
    # (first seq, how many, when to kill) per process: once mid-drain with all
    # points accepted, once while points are still being accepted and drained.
    runs = [(0, 5000, lambda c: c.sent >= 5000 * len(SENSORS) // 3),
            (5000, 5000, lambda c: c.sent > 0 and c.accepted is not None and c.accepted >= 7500)]
    accepted_upto = []
    kills = 0
    for start, count, when in runs:
        child = Child(script, data, victoria.url, t0, start, count, batch, ",".join(SENSORS))
        assert child.run_until(when), "the writer finished before it could be killed"
        child.kill9()
        kills += 1
        assert child.accepted is not None
        accepted_upto.append(child.accepted)
    # A last process only drains what the killed ones left in the outbox.
    last = Child(script, data, victoria.url, t0, 10_000, 0, batch, ",".join(SENSORS))
    assert not last.run_until(lambda c: False, timeout=60)
    assert last.proc.wait(60) == 0

    raw_total = distinct_total = 0
    seq_at = {ms(t0 + i * 0.01): i for a, c, _ in runs for i in range(a, a + c)}
    for s in SENSORS:
        stamps, values = victoria.series("reading_value")[(("asset", "p1"), ("sensor", s))]
        # A resent sample is the same point: same series, timestamp and value.
        assert all(t in seq_at and v == float(seq_at[t]) for t, v in zip(stamps, values))
        got = dict(zip(stamps, values))
        for (start, count, _), upto in zip(runs, accepted_upto):
            in_run = sorted(t for t in got if ms(t0 + start * 0.01) <= t <= ms(t0 + (start + count - 1) * 0.01))
            # Points are accepted in order, so what reached the server is a gap-free
            # prefix of the run, covering at least everything reported accepted.
            n = len(in_run)
            assert n >= upto - start, f"{s}: accepted points lost"
            assert in_run == [ms(t0 + (start + i) * 0.01) for i in range(n)]
        raw_total += len(stamps)
        distinct_total += len(got)
    resent = raw_total - distinct_total
    # A resend happens only for a batch acknowledged but not yet deleted when the
    # process died: at most one batch per kill.
    assert 0 <= resent <= batch * kills
    print(f"\nkill -9 x{kills}: accepted_reported={sum(u - r[0] for u, r in zip(accepted_upto, runs)) * 4} "
          f"distinct={distinct_total} raw={raw_total} resent_samples={resent} lost=0")


def test_outbox_full_drops_only_raw_readings_and_counts_them(tmp_path, victoria):
    victoria.stop()  # the server is away while the outbox fills past its bound
    batch = 20
    h = History(cfg_for(victoria.url, influx={"batch_size": batch}, outbox={"max_bytes": 64 * 1024}),
                tmp_path / "gw")
    h.start()
    t0 = float(int(time.time()) - 86400)
    R, S, A, U = 3000, 100, 10, 10
    for i in range(R):
        h.add_reading(Reading("p1", "current", t0 + i, float(i)))
        if i % (R // S) == 0:
            h.add_score(Score("p1", t0 + i, 0.5, 1.0, {"current": 1.0}))
        if i % (R // A) == 0:
            h.add_alarm_event(alarm_event(i, t0 + i))
            h.add_audit({"ts": t0 + i, "asset": "p1", "action": "advise", "seq": i})
        if i % 500 == 0:
            assert h.flush()
    assert h.flush()
    st = h.status()
    dropped = st["dropped"]
    assert set(dropped) == {"reading"} and set(dropped["reading"]) == {"bytes_bound"}
    x = dropped["reading"]["bytes_bound"]
    assert x > 0 and st["outbox"]["bytes"] <= 64 * 1024
    assert st["outbox"]["by_kind"] == {"reading": R - x, "score": S, "alarm": A, "audit": U}

    victoria.start()
    wait_until(lambda: drained(h), what="drain")
    h.stop()
    stamps, _ = victoria.series("reading_value")[(("asset", "p1"), ("sensor", "current"))]
    assert len(stamps) == len(set(stamps)) == R - x             # the count is right
    # The oldest readings went; what is left is the newest ones, plus the few that
    # were in the batch in flight while the outbox filled (never dropped, so that no
    # dropped point was ever delivered): at most one batch outside the newest run.
    seq = {ms(t0 + i): i for i in range(R)}
    kept = sorted(seq[t] for t in stamps)
    runs = [[kept[0]]]
    for i in kept[1:]:
        if i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    assert runs[-1][-1] == R - 1
    assert sum(len(r) for r in runs[:-1]) <= batch
    assert count_points(victoria.series("score_value")) == (S, S)
    assert count_points(victoria.series("alarm_event_active")) == (A, A)
    assert count_points(victoria.series("audit_seq")) == (U, U)
