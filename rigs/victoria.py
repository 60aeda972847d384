"""A real VictoriaMetrics server on a free loopback port, for the history tests and benchmark.

It accepts the InfluxDB v2 write API (``/api/v2/write``, what influxdb-client
sends) and gives every stored sample back through ``/api/v1/export``. Series are
named ``<measurement>_<field>`` with the tags as labels; string fields are stored
as 0, timestamps at millisecond resolution.

Deduplication is deliberately OFF: a point written twice shows up twice in the
export, so a test sees every resend the sink made. :func:`count_points` gives
both views: raw samples, and distinct timestamps (what InfluxDB, which
overwrites a point with the same series and timestamp, would hold).

The tests' ``victoria`` fixture (``tests/support/victoria.py``) and
``benchmarks/history.py`` start it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from appliance.broker import free_port, stop_process, wait_port

VICTORIA = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


class VictoriaMetrics:
    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "VictoriaMetrics":
        if not Path(VICTORIA).exists():
            raise FileNotFoundError("victoria-metrics is not installed (apt-get install -y victoria-metrics)")
        self.proc = subprocess.Popen(
            [VICTORIA, f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.workdir / 'data'}",
             "-retentionPeriod=100y",  # tests write timestamps from any time
             "-search.latencyOffset=0s", "-search.disableCache",
             "-loggerLevel=ERROR", "-loggerOutput=stderr"],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "victoria.log", "ab"))
        wait_port(self.port, timeout=60)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError("victoria-metrics did not become healthy")

    def stop(self) -> None:
        """Graceful stop (SIGINT): in-flight requests finish, data is flushed."""
        stop_process(self.proc, signal.SIGINT, 20)
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        """Make everything written so far visible to export."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10) as r:
            r.read()

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Every stored sample of the matching series: ``[{metric, values, timestamps}]``."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def series(self, metric: str) -> dict[tuple, tuple[list[int], list[float]]]:
        """``{sorted label items: (timestamps_ms, values)}`` of one metric name."""
        out = {}
        for s in self.export('{__name__="%s"}' % metric):
            labels = tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
            out[labels] = (s["timestamps"], s["values"])
        return out


def count_points(series: dict) -> tuple[int, int]:
    """(raw samples, distinct timestamps) summed over the series."""
    raw = sum(len(ts) for ts, _ in series.values())
    distinct = sum(len(set(ts)) for ts, _ in series.values())
    return raw, distinct
