"""SD-card budget: bytes the appliance writes per reading, and where they go (not part of CI).

    .venv/bin/python benchmarks/disk_writes.py [--seconds 120] [--rates 96,1000] [--label NAME]
        [--prefill-readings 400000] [--set 'TOML appended to the config'] [--broker-conf 'mosquitto.conf lines']
        [--memory] [--cgroup-mib 512]
        [--out benchmarks/results/disk_writes.json]

Each invocation stores its runs under ``--label`` in the JSON, beside earlier labels
(so "before" and "after" can come from two checkouts).

A private Mosquitto on loopback and the real ``appliance run`` (its own process,
default settings, dashboard off unless ``--memory``) with a model of the
``plant/<asset>/s0..s7`` sensors. A publisher sends ``{"ts": epoch_ms, "value": v}``
at QoS 1, spread evenly over 12 assets x 8 sensors: 96 msg/s is 96 sensors at
1 Hz, 1,000 msg/s is the same sensors at ~10 Hz (the model's period matches: 1 s,
0.1 s). The store and the local history first get ``--prefill-readings`` earlier
readings, written with their own classes, so the run writes into B-trees of a
realistic size. After a warm-up, ``write_bytes``
of ``/proc/<pid>/io`` (bytes the process caused to be written to the block layer:
what wears a card; a page rewritten after each ``fsync`` counts each time) is
read at the start and the end of ``--seconds`` of steady input.

Where the bytes go: per thread (``/proc/<pid>/task/<tid>/io``; the subject names
its OS threads after the Python ones, so ``store-writer`` is the store,
``history-writer`` the local history and the outbox, ``history-forward`` the
outbox's deletes, the rest mostly logs), the store's commits and checkpoints in
the window (commits read from the store object by a thread the subject adds,
which writes them to a small file every half second and is left out of the
total; WAL resets from the WAL header's
checkpoint counter), the largest WAL, and at the end every table's and index's
size in each SQLite file (``dbstat``) and each file of the data folder.

With ``--memory`` the dashboard is on and peak (``VmHWM``) and steady RSS are
reported; ``--cgroup-mib N`` runs the appliance in a memory cgroup limited to N MiB
(cgroup v2 ``memory.max`` if writable, else v1 ``memory.limit_in_bytes``, else
``prlimit --as``; the result says which) and reports whether it was killed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, parser, write_results  # noqa: E402

ASSETS = [f"a{i:02d}" for i in range(12)]
SENSORS = [f"s{i}" for i in range(8)]
TOPICS = [f"plant/{a}/{s}" for a in ASSETS for s in SENSORS]


# ============================================================================ the subject (appliance run)

def _name_os_threads() -> None:
    """Give every Python thread its name at the OS level (``/proc/<pid>/task/<tid>/comm``), so the
    benchmark can tell the store's writes from the history's; CPython 3.11 does not."""
    import ctypes
    import threading as th

    libc = ctypes.CDLL(None)
    original = th.Thread.run

    def run(self):
        try:
            libc.prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass
        original(self)

    th.Thread.run = run


def _report_store(stats: Path) -> None:
    """Write the store's commit counters to ``stats`` every half second (from a daemon thread)."""
    from appliance.store import store as store_mod

    stores: list = []
    original = store_mod.Store.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        stores.append(self)

    store_mod.Store.__init__ = init

    def loop():
        while True:
            if stores:
                s = stores[0]
                doc = {"committed_batches": s.committed_batches, "lingers": s.lingers,
                       "pid": os.getpid(), "t": time.time()}
                tmp = stats.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc))
                tmp.replace(stats)
            time.sleep(0.5)

    threading.Thread(target=loop, name="bench-stats", daemon=True).start()


def subject_main(config: str, stats: str) -> int:
    """``appliance run --config <config>``, with OS thread names and the store's counters exported."""
    _name_os_threads()
    _report_store(Path(stats))
    from appliance.cli import main
    return main(["run", "--config", config])


# ============================================================================ measuring from outside

def proc_io(pid: int, tid: int | None = None) -> dict[str, int]:
    path = f"/proc/{pid}/io" if tid is None else f"/proc/{pid}/task/{tid}/io"
    out = {}
    for line in Path(path).read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def threads_io(pid: int) -> dict[str, int]:
    """write_bytes per thread name (threads of one name summed)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0) + proc_io(pid, int(task.name))["write_bytes"]
        except (OSError, ValueError):
            continue
    return out


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def wal_checkpoint_seq(db: Path) -> int | None:
    """The WAL header's checkpoint sequence number: +1 each time the WAL restarts after a checkpoint."""
    try:
        with open(str(db) + "-wal", "rb") as f:
            head = f.read(16)
        return struct.unpack(">I", head[12:16])[0] if len(head) == 16 else None
    except OSError:
        return None


def dbstat(db: Path) -> dict[str, int]:
    """Bytes on disk per table and index (``dbstat``), largest first."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]
    return {name: size for name, size in rows}


def wal_frames(db: Path) -> dict:
    """What the WAL holds now (the frames since its last restart): frames per table or index
    (``dbstat``'s page numbers; a page no B-tree holds any more is "(free)"), frames, commits
    (frames that end a transaction) and pages per commit. Each frame is one page written whole plus
    a 24-byte header: this is where a commit's bytes go, before the checkpoint copies each distinct
    page once more into the database file."""
    try:
        with open(str(db) + "-wal", "rb") as f:
            wal = f.read()
    except OSError:
        return {}
    if len(wal) < 32:
        return {}
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = wal[16:24]
    pages: list[int] = []
    commits = 0
    off = 32
    while off + 24 + page_size <= len(wal):
        head = wal[off:off + 24]
        if head[8:16] != salts:
            break  # frames of before the last restart
        pages.append(struct.unpack(">I", head[:4])[0])
        commits += struct.unpack(">I", head[4:8])[0] != 0
        off += 24 + page_size
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    by_object: dict[str, int] = {}
    for p in pages:
        name = owner.get(p, "(free)")
        by_object[name] = by_object.get(name, 0) + 1
    return {"page_size": page_size, "frames": len(pages), "commits": commits,
            "distinct_pages": len(set(pages)),
            "pages_per_commit": round(len(pages) / max(1, commits), 1),
            "frames_by_object": dict(sorted(by_object.items(), key=lambda kv: -kv[1]))}


def stored_readings(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


class Pacer(threading.Thread):
    """QoS 1 publisher at a steady rate, messages spread evenly over :data:`TOPICS`."""

    def __init__(self, port: int, rate: float):
        super().__init__(name="publisher", daemon=True)
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-publisher")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate = rate
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stopping.is_set():
            due = int((time.perf_counter() - t0) * self.rate)
            if due <= self.sent:
                time.sleep(0.002)
                continue
            for i in range(self.sent, due):
                value = 20.0 + 5.0 * math.sin(i * 0.05) + 0.37 * ((i * 7919) % 13 - 6)
                self.client.publish(TOPICS[i % len(TOPICS)],
                                    b'{"ts":%.3f,"value":%.4f}' % (time.time() * 1000.0, value), qos=1)
            self.sent = due

    def close(self) -> None:
        self.stopping.set()
        self.join(10)
        self.client.disconnect()
        self.client.loop_stop()


class DashboardPoller(threading.Thread):
    """Asks the dashboard for its login page, health and metrics every second, so its server threads,
    templates and the store readers they open are part of the memory measured."""

    def __init__(self, port: int):
        super().__init__(name="dashboard-poller", daemon=True)
        self.port = port
        self.ok = 0
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        import urllib.request

        while not self.stopping.wait(1.0):
            for path in ("/login", "/healthz", "/metrics"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                        r.read()
                    self.ok += 1
                except Exception:
                    self.failed += 1

    def close(self) -> None:
        self.stopping.set()
        self.join(15)


def _config(work: Path, port: int, bundle: Path, web: bool, web_port: int, overrides: str) -> Path:
    cfg = work / "appliance.toml"
    cfg.write_text(f"""
data_dir = "{work / 'data'}"
[connections.mqtt]
port = {port}
[detector]
bundle = "{bundle}"
[web]
enabled = {'true' if web else 'false'}
port = {web_port}
{overrides}
""")
    return cfg


def _cgroup(limit_mib: int, pid: int) -> str:
    """Put ``pid`` in a fresh memory cgroup limited to ``limit_mib``; returns how ("" if not possible)."""
    limit = str(limit_mib * 1024 * 1024)
    for root, knob in _cgroup_roots():
        if not Path(root, "cgroup.procs").exists():
            continue
        group = Path(root) / f"disk-writes-bench-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / knob).write_text(limit)
            if knob == "memory.limit_in_bytes" and Path(group, "memory.memsw.limit_in_bytes").exists():
                try:
                    (group / "memory.memsw.limit_in_bytes").write_text(limit)  # no escape into swap
                except OSError:
                    pass
            (group / "cgroup.procs").write_text(str(pid))
            return f"{group}/{knob}={limit}"
        except OSError:
            try:
                group.rmdir()
            except OSError:
                pass
    return ""


def _cgroup_roots() -> list[tuple[str, str]]:
    """Where a child memory cgroup of ours can go: under this process's own cgroup (so every limit
    above still applies), v2 first, then v1's memory hierarchy."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path.lstrip("/")
    roots = []
    if "" in own:
        roots += [(str(Path("/sys/fs/cgroup", own[""])), "memory.max"),
                  (str(Path("/sys/fs/cgroup/unified", own[""])), "memory.max")]
    if "memory" in own:
        roots.append((str(Path("/sys/fs/cgroup/memory", own["memory"])), "memory.limit_in_bytes"))
    return roots


def _cgroup_events(how: str) -> dict:
    if not how:
        return {}
    group = Path(how.split("=")[0]).parent
    out = {}
    for name in ("memory.events", "memory.peak", "memory.max_usage_in_bytes", "memory.failcnt",
                 "memory.oom_control"):
        try:
            out[name] = (group / name).read_text().strip()
        except OSError:
            pass
    return out


def _remove_cgroup(how: str) -> None:
    if how:
        try:
            Path(how.split("=")[0]).parent.rmdir()
        except OSError:
            pass


def prefill(data: Path, n: int, rate: float) -> int:
    """Give the store and the local history ``n`` past readings of this workload before the run, so the run
    writes into B-trees of a realistic depth and spread (a fresh file writes into a few pages only).
    Written with the appliance's own classes: inside every retention."""
    from appliance.core import Quality, Reading
    from appliance.history.local import LocalHistory
    from appliance.store.store import Store

    if n <= 0:
        return 0
    store = Store(data / "appliance.db")
    store.start()
    local = LocalHistory(data / "history_local.db", 86400.0, 30 * 86400.0)
    t0 = time.time() - n / rate
    chunk: list = []
    for i in range(n):
        r = Reading(ASSETS[(i // 8) % 12], SENSORS[i % 8], t0 + i / rate, 20.0 + (i % 97) / 10.0, Quality.GOOD)
        store.put_reading(r)
        chunk.append(r)
        if len(chunk) == 20_000:
            local.insert(chunk, [])
            chunk = []
            store.flush(600)
    local.insert(chunk, [])
    store.close()
    local.close()
    return n


def measure(rate: float, seconds: float, warmup: float, bundle: Path, web: bool = False, overrides: str = "",
            cgroup_mib: int = 0, prefill_readings: int = 0, broker_conf: str = "") -> dict:
    from appliance.broker import Mosquitto, free_port, stop_process
    from rigs.appliance import wait_online

    # Not under /tmp: a tmpfs (a container's /tmp can be one) writes no blocks and counts none.
    work = Path(tempfile.mkdtemp(prefix="disk-writes-", dir=ROOT / "benchmarks" / "results"))
    broker = Mosquitto(work / "broker", extra_conf=broker_conf).start()
    web_port = free_port()
    cfg = _config(work, broker.port, bundle, web, web_port, overrides)
    prefilled = prefill(work / "data", prefill_readings, rate)
    stats = work / "stats.json"
    log = open(work / "appliance.log", "ab")
    cmd = [sys.executable, str(Path(__file__).resolve()), "subject", str(cfg), str(stats)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    how = _limit_memory(cgroup_mib, proc.pid) if cgroup_mib else ""
    db = work / "data" / "appliance.db"
    pacer = poller = None
    try:
        wait_online(broker.port, timeout=120)
        pacer = Pacer(broker.port, rate)
        pacer.start()
        if web:
            poller = DashboardPoller(web_port)
            poller.start()
        rss_samples = []
        t_end = time.monotonic() + warmup
        while time.monotonic() < t_end:
            rss_samples.append(rss_kib(proc.pid)["VmRSS"])
            time.sleep(1)
        io0, th0, st0, sent0, n0 = (proc_io(proc.pid), threads_io(proc.pid), _stats(stats), pacer.sent,
                                    stored_readings(db))
        seq0, seq_last, wal_max = wal_checkpoint_seq(db), None, 0
        resets = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and proc.poll() is None:
            time.sleep(0.25)
            seq = wal_checkpoint_seq(db)
            if seq is not None and seq_last is not None and seq != seq_last:
                resets += (seq - seq_last) % 2 ** 32
            seq_last = seq if seq is not None else seq_last
            try:
                wal_max = max(wal_max, os.path.getsize(str(db) + "-wal"))
            except OSError:
                pass
            if int((time.monotonic() - t0) * 4) % 4 == 0:
                rss_samples.append(rss_kib(proc.pid)["VmRSS"])
        elapsed = time.monotonic() - t0
        killed = proc.poll() is not None
        if killed:
            return {"rate": rate, "killed": True, "returncode": proc.returncode, "limit": how,
                    "cgroup": _cgroup_events(how), "rss_mib_samples": [round(r / 1024, 1) for r in rss_samples]}
        io1, th1, st1, sent1 = proc_io(proc.pid), threads_io(proc.pid), _stats(stats), pacer.sent
        mem = rss_kib(proc.pid)
        pacer.close()
        pacer = None
        time.sleep(3)  # the last acks
        n1 = stored_readings(db)
        wal = {name: wal_frames(work / "data" / name) for name in ("appliance.db", "history_local.db",
                                                                  "history_outbox.db")}
        readings = sent1 - sent0
        commits = st1.get("committed_batches", 0) - st0.get("committed_batches", 0)
        per_thread = {k: v - th0.get(k, 0) for k, v in th1.items() if v - th0.get(k, 0) > 0}
        per_thread["(threads that ended)"] = (io1["write_bytes"] - io0["write_bytes"]) - sum(per_thread.values())
        written = io1["write_bytes"] - io0["write_bytes"] - per_thread.pop("bench-stats", 0)  # not the appliance's
        files = {str(p.relative_to(work / "data")): p.stat().st_size for p in sorted((work / "data").rglob("*"))
                 if p.is_file()}
        result = {
            "rate_msg_s": round(readings / elapsed, 1), "seconds": round(elapsed, 1), "web": web,
            "overrides": overrides.strip(), "broker_conf": broker_conf.strip(),
            "prefilled_readings": prefilled, "readings_published": readings,
            "readings_stored_in_window_approx": n1 - n0 if n0 >= 0 else None,
            "write_bytes": written, "bytes_per_reading": round(written / max(1, readings)),
            "bytes_per_hour": round(written / elapsed * 3600), "bytes_per_year": round(written / elapsed * 3600 * 8766),
            "per_thread_bytes": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
            "store_commits": commits, "store_commits_per_s": round(commits / elapsed, 1),
            "store_bytes_per_commit": round(per_thread.get("store-writer", 0) / max(1, commits)),
            "store_wal_restarts": resets, "store_wal_max_bytes": wal_max,
            "wal_now": wal,
            "data_files_bytes": files,
            "dbstat": {name: dbstat(work / "data" / name) for name in files if name.endswith(".db")},
            "rss_mib": {"steady_median": round(sorted(rss_samples)[len(rss_samples) // 2] / 1024, 1),
                        "peak_vmhwm": round(mem.get("VmHWM", 0) / 1024, 1)},
        }
        if cgroup_mib:
            result.update({"limit": how, "killed": False, "cgroup": _cgroup_events(how)})
        if poller is not None:
            result["dashboard_requests"] = {"ok": poller.ok, "failed": poller.failed}
        return result
    finally:
        if pacer is not None:
            pacer.close()
        if poller is not None:
            poller.close()
        stop_process(proc, signal.SIGTERM, 60)
        log.close()
        broker.stop()
        _remove_cgroup(how if how.startswith("/") else "")
        if os.environ.get("KEEP_WORK") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def _limit_memory(limit_mib: int, pid: int) -> str:
    """A memory cgroup if one can be made, else ``prlimit --as`` (address space, a harsher and cruder
    bound than RSS: Python and ONNX Runtime reserve more than they touch). Says which."""
    how = _cgroup(limit_mib, pid)
    if how:
        return how
    subprocess.run(["prlimit", f"--pid={pid}", f"--as={limit_mib * 1024 * 1024}"], check=True)
    return f"prlimit --as={limit_mib * 1024 * 1024} (address space)"


def _stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["subject"]:
        return subject_main(argv[1], argv[2])
    ap = parser(__doc__, RESULTS / "disk_writes.json")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--rates", default="96,1000")
    ap.add_argument("--label", default="defaults", help="the key these runs are stored under in --out")
    ap.add_argument("--set", default="", help="TOML appended to the config (e.g. '[store]\\ncommit_interval_ms = 0')")
    ap.add_argument("--prefill-readings", type=int, default=400_000,
                    help="past readings put in the store and local history before the run")
    ap.add_argument("--broker-conf", default="",
                    help="lines appended to the private Mosquitto's config (e.g. 'max_inflight_messages 1000\\n'; "
                         "the last value of an option wins)")
    ap.add_argument("--memory", action="store_true", help="dashboard on; report RSS")
    ap.add_argument("--cgroup-mib", type=int, default=0, help="run under this memory limit")
    args = ap.parse_args(argv)
    from benchmarks.peer import ensure_bundle

    runs = []
    for rate in [float(r) for r in args.rates.split(",")]:
        # The model's grid matches the sensors' rate (1 Hz at 96 msg/s, ~10 Hz at 1,000), as a deployment's would.
        period = 1.0 if rate <= len(TOPICS) * 1.5 else 0.1
        res = measure(rate, args.seconds, args.warmup, ensure_bundle(60, period), web=args.memory,
                      overrides=args.set.replace("\\n", "\n"), cgroup_mib=args.cgroup_mib,
                      prefill_readings=args.prefill_readings,
                      broker_conf=args.broker_conf.replace("\\n", "\n"))
        res["command"] = " ".join(["benchmarks/disk_writes.py"] + argv)
        runs.append(res)
        print(json.dumps({k: v for k, v in res.items() if k not in ("dbstat", "data_files_bytes")}, indent=1))
    doc = {}
    if args.out.exists():
        try:
            doc = {k: v for k, v in json.loads(args.out.read_text()).items() if k == "runs"}
        except ValueError:
            doc = {}
    doc.setdefault("runs", {})[args.label] = runs
    write_results(args.out, {"benchmark": "disk_writes", "command": " ".join(["benchmarks/disk_writes.py"] + argv),
                             **doc})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
