"""The simulator's parts that need no broker: reading CSV files for replay, a clear error for an
unreachable broker, and the PLC command line refusing a bad fault before it listens.

Publishing over a real Mosquitto: test_sim_publish.py.
"""

from __future__ import annotations

import doctest
import io
from datetime import datetime, timezone

import pytest

from appliance.broker import free_port
from firmware_sim import replay
from firmware_sim.publisher import MqttPublisher, PublishError
from firmware_sim.replay import parse_speed, read_rows
from tests.support.sim import SKAB_SAMPLE, run_cli


def test_replay_doctests():
    assert doctest.testmod(replay).failed == 0


def test_read_rows_formats_and_errors():
    rows = list(read_rows(io.StringIO(SKAB_SAMPLE), "s.csv"))
    t0 = datetime(2020, 3, 9, 10, 14, 33, tzinfo=timezone.utc).timestamp()
    assert [ts for ts, _ in rows] == [t0, t0 + 1, t0 + 3]
    assert rows[2][1] == {"Accelerometer1RMS": 0.026, "Volume Flow RateRMS": 31.5}
    comma = "ts,a,b\n1700000000.5,1,2\n1700000001.5,3,nan\n"
    assert list(read_rows(io.StringIO(comma))) == [(1700000000.5, {"a": 1.0, "b": 2.0}),
                                                   (1700000001.5, {"a": 3.0})]
    with pytest.raises(ValueError, match=r"x.csv:3: column 'a': 'oops' is not a number"):
        list(read_rows(io.StringIO("ts,a\n1700000000,1\n1700000001,oops\n"), "x.csv"))
    with pytest.raises(ValueError, match=r"x.csv:2: time 'noon'"):
        list(read_rows(io.StringIO("ts,a\nnoon,1\n"), "x.csv"))
    with pytest.raises(ValueError, match="fields"):
        list(read_rows(io.StringIO("ts,a\n1700000000,1,2\n"), "x.csv"))
    with pytest.raises(ValueError, match="empty"):
        list(read_rows(io.StringIO(""), "x.csv"))
    assert parse_speed("max") == 0.0 and parse_speed(2) == 2.0
    with pytest.raises(ValueError):
        parse_speed("-1")


def test_unreachable_broker_is_a_clear_error():
    pub = MqttPublisher("127.0.0.1", free_port())
    with pytest.raises(PublishError, match="could not connect"):
        pub.connect(timeout=0.5)


@pytest.mark.parametrize("args, match", [
    (("--fault-at", "3"), "--fault-at needs --fault"),
    (("--fault", "rust", "--fault-at", "3"), "--fault: unknown fault"),
    (("--fault", "cavitation", "--fault-at", "-1"), "--fault-at must be"),
])
def test_cli_plc_refuses_a_bad_fault_before_listening(args, match):
    r = run_cli("plc", "--port", str(free_port()), "--security", "none", *args)
    assert r.returncode != 0 and match in r.stderr and "listening" not in r.stdout
