"""History sink benchmark: outbox throughput, drain speed, one-hour backlog, kill -9 loss/resends.

Runs against a real VictoriaMetrics (Debian's ``victoria-metrics``, InfluxDB v2
write API) on a free loopback port. Prints a table and writes
``benchmarks/results/history.json`` (machine, library and server versions in front).

    .venv/bin/python benchmarks/history.py            # full run (~1-2 min)
    .venv/bin/python benchmarks/history.py --quick    # smaller sizes
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_results  # noqa: E402
from appliance.history.config import HistoryConfig  # noqa: E402
from appliance.core import Reading, Score  # noqa: E402
from appliance.history.sink import History  # noqa: E402
from appliance.broker import free_port  # noqa: E402
from rigs.victoria import VictoriaMetrics, count_points  # noqa: E402

LIBRARIES = ("influxdb-client",)  # the forwarder's client; VictoriaMetrics' version is in "server"
DEMO_SENSORS = [f"s{i}" for i in range(8)]  # the demo: 8 sensors at 1 Hz on one asset, 1 score/s


def make_cfg(url: str, fsync: str = "commit", local: bool = True, batch: int = 5000) -> HistoryConfig:
    return HistoryConfig.model_validate({
        "influx": {"url": url, "batch_size": batch, "retry": {"initial_s": 0.2, "max_s": 1.0}},
        "outbox": {"fsync": fsync},
        "local": {"enabled": local},
    })


def wait_drained(h: History, timeout: float = 600) -> tuple[float, float]:
    """Seconds until the outbox is empty: (from now, from the first acknowledged batch).

    The first includes the forwarder's remaining backoff after the server came back."""
    t = time.perf_counter()
    first_ack = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = h.status()
        if first_ack is None and st["forwarder"]["batches"] > 0:
            first_ack = time.perf_counter()
        if st["outbox"]["points"] == 0 and sum(st["pending"].values()) == 0:
            end = time.perf_counter()
            return end - t, end - (first_ack or t)
        time.sleep(0.005)
    raise TimeoutError("outbox did not drain")


def pace(h: History) -> None:
    """Keep a flat-out producer no faster than the writer commits: the memory buffer
    is bounded (max_pending) and would shed the oldest readings, counted, otherwise."""
    while sum(h.status()["pending"].values()) > 50_000:
        time.sleep(0.001)


def produce_demo(h: History, seconds: int, t0: float) -> int:
    n = 0
    for i in range(seconds):
        ts = t0 + i
        for s in DEMO_SENSORS:
            h.add_reading(Reading("pump-1", s, ts, float(i % 100)))
        h.add_score(Score("pump-1", ts, 0.1, 1.0, {s: 1 / 8 for s in DEMO_SENSORS}, "m1"))
        n += 9
    return n


def bench_ingest(tmp: Path, n: int, fsync: str) -> dict:
    """Points/s into the outbox (server away, so nothing drains meanwhile), plus add_reading cost."""
    closed = f"http://127.0.0.1:{free_port()}"
    h = History(make_cfg(closed, fsync=fsync), tmp / f"ingest-{fsync}")
    h.start()
    t0 = time.time() - 86400
    start = time.perf_counter()
    call_ns = []
    for i in range(n // 8):
        c = time.perf_counter_ns()
        for s in DEMO_SENSORS:
            h.add_reading(Reading("pump-1", s, t0 + i * 0.001, float(i)))
        call_ns.append((time.perf_counter_ns() - c) / 8)
        if i % 2000 == 0:
            pace(h)
    ok = h.flush(120)
    elapsed = time.perf_counter() - start
    st = h.status()
    h.stop()
    call_ns.sort()
    return {"points": n, "seconds": round(elapsed, 3), "points_per_s": round(n / elapsed),
            "committed_all": ok and st["outbox"]["points"] == n,
            "add_call_us_median": round(call_ns[len(call_ns) // 2] / 1000, 2),
            "add_call_us_p99": round(call_ns[int(len(call_ns) * 0.99)] / 1000, 2),
            "dropped": st["dropped_total"]}


def bench_drain(tmp: Path, vm: VictoriaMetrics, n: int) -> dict:
    """A backlog of n points built while the server was away, then drained."""
    vm.stop()
    h = History(make_cfg(vm.url, local=False), tmp / "drain")
    h.start()
    t0 = time.time() - 2 * 86400
    for i in range(n // 8):
        for s in DEMO_SENSORS:
            h.add_reading(Reading("bench-drain", s, t0 + i * 0.001, float(i)))
        if i % 2000 == 0:
            pace(h)
    assert h.flush(120)
    assert h.status()["dropped_total"] == 0
    vm.start()
    total, secs = wait_drained(h)
    h.stop()
    raw, distinct = count_points(vm.series("reading_value"))
    return {"points": n, "drain_s": round(secs, 3), "points_per_s": round(n / secs),
            "server_up_to_drained_s": round(total, 3), "on_server_raw": raw, "on_server_distinct": distinct}


def bench_sustained(tmp: Path, vm: VictoriaMetrics, seconds: float) -> dict:
    """Producer at full speed with the server up: both ends running at once."""
    h = History(make_cfg(vm.url, local=True), tmp / "sustained")
    h.start()
    t0 = time.time() - 3 * 86400
    n = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        for s in DEMO_SENSORS:
            h.add_reading(Reading("bench-sustained", s, t0 + i * 0.001, float(i)))
        n += 8
        i += 1
        if i % 2000 == 0:
            pace(h)
    assert h.flush(120)
    accepted_s = time.perf_counter() - start
    lag, _ = wait_drained(h)
    total = time.perf_counter() - start
    h.stop()
    return {"points": n, "accept_points_per_s": round(n / accepted_s),
            "end_to_end_points_per_s": round(n / total), "drain_lag_after_producer_s": round(lag, 3)}


def bench_backlog_hour(tmp: Path, vm: VictoriaMetrics) -> dict:
    """One hour at the demo's rate queued while InfluxDB was away, then drained."""
    vm.stop()
    h = History(make_cfg(vm.url), tmp / "hour")
    h.start()
    n = produce_demo(h, 3600, time.time() - 3600 * 5)
    assert h.flush(120)
    st = h.status()
    vm.start()
    total, secs = wait_drained(h)
    h.stop()
    return {"points": n, "outbox_bytes": st["outbox"]["bytes"], "drain_s": round(secs, 3),
            "server_up_to_drained_s": round(total, 3), "points_per_s": round(n / secs)}


KILL_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[8])
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
    for seq in range(start, start + count):
        for s in sensors:
            h.add_reading(Reading("kill", s, t0 + seq * 0.01, float(seq)))
    h.flush(60)
    print("accepted", start + count, flush=True)
    while True:
        st = h.status()
        print("sent", st["forwarder"]["sent"]["reading"], flush=True)
        if not st["outbox"]["points"]:
            break
        time.sleep(0.002)
    print("drained", flush=True)
    h.stop()
""")


def bench_kill9(tmp: Path, vm: VictoriaMetrics, kills: int, per_run: int = 10_000, batch: int = 500) -> dict:
    """kill -9 the writer at different points of its drain; count lost points and resent samples."""
    script = tmp / "kill_child.py"
    script.write_text(KILL_CHILD)
    data = tmp / "kill"
    sensors = DEMO_SENSORS[:4]
    t0 = float(int(time.time()) - 4 * 86400)
    accepted = 0
    mid_drain = 0
    for k in range(kills + 1):
        last = k == kills
        proc = subprocess.Popen([sys.executable, str(script), str(data), vm.url, str(t0), str(k * per_run),
                                 str(0 if last else per_run), str(batch), ",".join(sensors), str(REPO)],
                                stdout=subprocess.PIPE, text=True)
        kill_at = (k % 9 + 1) / 10 * per_run * len(sensors)  # 10 % .. 90 % of this run's points
        for line in proc.stdout:
            words = line.split()
            if words[0] == "accepted":
                accepted = int(words[1])
            elif words[0] == "drained":
                break
            elif words[0] == "sent" and not last and int(words[1]) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                mid_drain += 1
                break
        proc.wait(30)
    expected = accepted * len(sensors)
    raw = distinct = 0
    for labels, (stamps, _) in vm.series("reading_value").items():
        if ("asset", "kill") in labels:
            raw += len(stamps)
            distinct += len(set(stamps))
    return {"kills": kills, "killed_mid_drain": mid_drain, "points_accepted": expected,
            "points_on_server_distinct": distinct, "lost": expected - distinct,
            "resent_samples": raw - distinct, "batch_size": batch}


def server_version() -> str:
    """The InfluxDB-compatible server's package version (Debian's ``victoria-metrics``; its binary does not
    print one), or why it is unknown."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"victoria-metrics, version unknown ({e})"
    return f"victoria-metrics {out.stdout.strip()}" if out.returncode == 0 else "victoria-metrics, version unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "history.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    # Every outage in this benchmark is deliberate; only real errors are worth printing.
    logging.getLogger("appliance.history.forwarder").setLevel(logging.ERROR)
    n = 50_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        vm = VictoriaMetrics(tmp / "vm").start()
        try:
            res = {
                "ingest_fsync_commit": bench_ingest(tmp, n, "commit"),
                "ingest_fsync_interval": bench_ingest(tmp, n, "interval"),
                "drain": bench_drain(tmp, vm, n),
                "sustained": bench_sustained(tmp, vm, 5 if args.quick else 15),
                "backlog_1h_demo_rate": bench_backlog_hour(tmp, vm),
                "kill9": bench_kill9(tmp, vm, 3 if args.quick else 10),
            }
        finally:
            vm.stop()
    res["server"] = server_version()

    rows = [
        ("into outbox, fsync=commit", f"{res['ingest_fsync_commit']['points_per_s']:,} points/s",
         f"add_reading {res['ingest_fsync_commit']['add_call_us_median']} us median, "
         f"{res['ingest_fsync_commit']['add_call_us_p99']} us p99"),
        ("into outbox, fsync=interval", f"{res['ingest_fsync_interval']['points_per_s']:,} points/s", ""),
        ("outbox -> server (backlog)", f"{res['drain']['points_per_s']:,} points/s",
         f"{res['drain']['points']:,} points in {res['drain']['drain_s']} s"),
        ("sustained, both ends", f"{res['sustained']['end_to_end_points_per_s']:,} points/s",
         f"accept {res['sustained']['accept_points_per_s']:,}/s, lag at end "
         f"{res['sustained']['drain_lag_after_producer_s']} s"),
        ("1 h backlog at demo rate", f"{res['backlog_1h_demo_rate']['drain_s']} s",
         f"{res['backlog_1h_demo_rate']['points']:,} points, "
         f"{res['backlog_1h_demo_rate']['outbox_bytes'] / 1e6:.1f} MB in outbox; "
         f"{res['backlog_1h_demo_rate']['server_up_to_drained_s']} s from server up (incl. backoff)"),
        ("kill -9 mid-drain", f"lost {res['kill9']['lost']}",
         f"{res['kill9']['killed_mid_drain']}/{res['kill9']['kills']} kills mid-drain, "
         f"{res['kill9']['resent_samples']} samples resent "
         f"(batch {res['kill9']['batch_size']}; InfluxDB overwrites them)"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    m = machine(LIBRARIES)
    print(f"\nhistory benchmark ({m['cpu']}, {m['machine']}, {m['cores']} cores, load average {m['load_average']}; "
          f"{res['server']})")
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>{w1}}  {c}")
    print(f"\nwrote {write_results(args.out, res, libraries=LIBRARIES)}")


if __name__ == "__main__":
    main()
