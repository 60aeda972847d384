"""The gateway's own health for the system page: this process's CPU and memory, the host's load and memory."""

from __future__ import annotations

import os
import threading
import time


class ProcessMeter:
    """CPU use of this process between two calls (percent of one core), its resident memory, the host's."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> dict:
        now, cpu = time.monotonic(), _cpu_seconds()
        with self._lock:
            t0, c0 = self._last
            self._last = (now, cpu)
        dt = now - t0
        mem = _meminfo()
        out = {
            "process_cpu_percent": round(100.0 * (cpu - c0) / dt, 1) if dt > 0.5 else None,
            "process_rss_bytes": _rss_bytes(),
            "process_threads": threading.active_count(),
            "cores": os.cpu_count(),
            "load_1m": None,
            "memory_total_bytes": mem.get("MemTotal"),
            "memory_available_bytes": mem.get("MemAvailable"),
        }
        try:
            out["load_1m"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        return out


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out
