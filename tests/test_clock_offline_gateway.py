"""A gateway without a real-time clock, offline (issue 22, item 8), end to end through Mosquitto.

The appliance's clock is set back a day and the system says it is unsynchronised; three
pumps publish readings stamped with the true time. Nothing may be dead-lettered, every
window is scored, the status and /metrics say the data's time is in use. Then the clock
is stepped to the true time and marked synchronised: the estimate is dropped and the
readings that follow are accepted, with no reading lost and no window scored twice.
"""

from __future__ import annotations

import json
import time

import pytest

from appliance.detector.train import TrainSettings, train_bundle
from appliance.runtime import gateway_clock
from appliance.store.store import StoreReader
from tests.support.appliance import Publisher, RunningAppliance, make_config
from tests.support.detector import circle_rows
from web.metrics import render, status_registry

pytestmark = pytest.mark.integration  # a real Mosquitto, the appliance end to end

DAY = 86400.0
SENSORS = ["a", "b", "c"]
ASSETS = ["pump1", "pump2", "pump3"]
WINDOW = 8
ROWS = 60  # per asset and phase, one a second


class WrongClock:
    """The gateway's wall clock, ``behind_s`` behind the true one, and what the system says of it."""

    def __init__(self, behind_s: float):
        self.behind_s = behind_s
        self.synced = False

    def wall(self) -> float:
        return time.time() - self.behind_s

    def synchronised(self) -> bool:
        return self.synced


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_bundle(circle_rows(1200), SENSORS, tmp_path_factory.mktemp("clock") / "bundle",
                        TrainSettings(window=WINDOW, hidden=(16, 4), max_iter=30, seed=2))


def publish_rows(pub: Publisher, t0: float, first: int, n: int) -> None:
    """Rows ``first .. first + n - 1`` of every asset, stamped with the true time ``t0 + row``."""
    rows = circle_rows(first + n, seed=5)
    for i in range(first, first + n):
        for asset in ASSETS:
            values = {s: float(v) for s, v in zip(SENSORS, rows[i])}
            pub.publish(f"plant/{asset}/telemetry", json.dumps({"ts": t0 + i, "values": values}))
    pub.wait_all()


def windows_for(rows: int) -> int:
    return len(ASSETS) * (rows - WINDOW + 1)


def test_a_day_behind_and_unsynchronised_then_stepped_and_synchronised(tmp_path, mosquitto, bundle):
    cfg = make_config(tmp_path, mosquitto.port, bundle)
    wrong = WrongClock(behind_s=DAY)
    clock = gateway_clock(cfg, wall=wrong.wall, synchronised=wrong.synchronised, check_every_s=0.2)
    t0 = float(int(time.time()) - 300)  # true time: what the pumps' clocks say
    with RunningAppliance(cfg, clock=clock) as ra:
        pub = Publisher(mosquitto.port)
        try:
            # -- a day behind, unsynchronised: the data's time stands in for the clock
            publish_rows(pub, t0, 0, ROWS)
            ra.wait_until(lambda: ra.counter("windows_scored") == windows_for(ROWS), what="every window scored")
            assert ra.counter("readings") == len(ASSETS) * ROWS * len(SENSORS)
            assert ra.counter("dead_letters") == 0 and ra.app.status()["dead_letters_by_reason"] == {}
            st = ra.app.status()["clock"]
            assert st["synchronised"] is False and st["data_time"] and st["sources"] == len(ASSETS)
            assert st["offset_s"] == pytest.approx(DAY, abs=600)  # the readings are up to 5 min old
            assert st["message"].startswith("gateway clock unsynchronised; using time from data (offset +2")
            metrics = render(status_registry(ra.app.status)).decode()
            assert "appliance_clock_synchronised 0.0" in metrics
            assert "appliance_clock_data_offset_seconds 8" in metrics  # 86,0xx s

            # -- stepped to the true time and synchronised: the estimate is dropped
            wrong.behind_s, wrong.synced = 0.0, True
            ra.wait_until(lambda: ra.app.status()["clock"]["synchronised"] is True, what="synchronised")
            st = ra.app.status()["clock"]
            assert not st["data_time"] and st["offset_s"] == 0 and st["message"] is None
            assert st["estimates_dropped"] == 1
            publish_rows(pub, t0, ROWS, ROWS)
            ra.wait_until(lambda: ra.counter("windows_scored") == windows_for(2 * ROWS),
                          what="the windows after the step")
            assert ra.counter("readings") == len(ASSETS) * 2 * ROWS * len(SENSORS)
            assert ra.counter("dead_letters") == 0
            assert "appliance_clock_synchronised 1.0" in render(status_registry(ra.app.status)).decode()
            assert ra.app.store.flush()
        finally:
            pub.close()
    # Nothing lost, nothing doubled, every reading with its own timestamp.
    reader = StoreReader(cfg.path(cfg.store.path))
    counts = reader.counts()
    assert counts["readings"] == len(ASSETS) * 2 * ROWS * len(SENSORS)
    assert counts["scores"] == windows_for(2 * ROWS) and counts["dead_letters"] == 0
    for asset in ASSETS:
        stamps = sorted({r["ts"] for r in reader.readings(asset=asset, sensor="a", limit=1000)})
        assert stamps == [t0 + i for i in range(2 * ROWS)]
        ends = [s["t_end"] for s in reader.scores(asset=asset, limit=1000)]
        assert len(ends) == len(set(ends)) == 2 * ROWS - WINDOW + 1


def test_without_data_time_the_same_readings_are_dead_lettered(tmp_path, mosquitto, bundle):
    """The control: with ``[clock] data_time = false`` the clock a day behind refuses them all."""
    cfg = make_config(tmp_path, mosquitto.port, bundle, clock={"data_time": False})
    wrong = WrongClock(behind_s=DAY)
    clock = gateway_clock(cfg, wall=wrong.wall, synchronised=wrong.synchronised)
    with RunningAppliance(cfg, clock=clock) as ra:
        pub = Publisher(mosquitto.port)
        try:
            publish_rows(pub, float(int(time.time())), 0, 10)
            ra.wait_until(lambda: ra.counter("dead_letters") == 10 * len(ASSETS), what="every message refused")
            assert ra.app.status()["dead_letters_by_reason"] == {"ts_in_future": 10 * len(ASSETS)}
            assert ra.counter("readings") == 0 and ra.app.status()["clock"]["message"] is None
        finally:
            pub.close()
