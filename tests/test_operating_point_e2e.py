"""The next run, end to end over a real Mosquitto: a model commissioned on SKAB valve1/0's normal head sees
valve1/1, a run at an operating point it never saw. The appliance says so once (its own status on its own MQTT
topics, in the store, counted per day) instead of raising anomaly alarms on every window.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from threadpoolctl import threadpool_limits

from appliance.detector.train import read_csv
from appliance.store.store import StoreReader
from tests.support.appliance import RunningAppliance, make_config

pytestmark = pytest.mark.integration  # a real Mosquitto, the appliance end to end, a model trained on SKAB


def normal_head(src, out):
    """SKAB file ``src``'s rows before its first anomaly, labels kept (the replay drops them), as ``out``."""
    with open(src) as f:
        rows = list(csv.reader(f, delimiter=";"))
    label = [float(r[rows[0].index("anomaly")]) > 0 for r in rows[1:]]
    with open(out, "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows(rows[:1 + label.index(True)])
    return out


def test_a_run_at_an_unseen_operating_point_is_one_status_not_an_alarm_flood(tmp_path, mosquitto, skab_dir):
    from appliance.detector.train import train_bundle
    from firmware_sim.replay import replay_csv

    sensors, ts, rows, labels = read_csv(skab_dir / "valve1" / "0.csv")
    head = int(np.argmax(labels["anomaly"] > 0))
    with threadpool_limits(1):
        bundle = train_bundle(rows[:head], sensors, tmp_path / "bundle", ts=ts[:head])
    next_head = normal_head(skab_dir / "valve1" / "1.csv", tmp_path / "next.csv")
    cfg = make_config(tmp_path, mosquitto.port, bundle)
    messages = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-watcher-op")
    sub.on_message = lambda c, u, m: messages.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("appliance/alarms/#", qos=1)
    sub.loop_start()
    try:
        with RunningAppliance(cfg) as ra:
            replay_csv(next_head, host="127.0.0.1", port=mosquitto.port, asset="pump1", speed=0)
            n_rows = sum(1 for _ in open(next_head)) - 1
            ra.wait_until(lambda: ra.counter("readings") == n_rows * len(sensors), what="all readings")
            ra.wait_until(lambda: any(t.endswith("/operating_point/state") for t, _ in messages),
                          what="the retained operating-point status")
            held = ra.counter("windows_held_unseen_operating_point")
            scored = ra.counter("windows_scored")
            entered = ra.counter("operating_point_entered")
            raised = [e for e in ra.events if getattr(e, "kind", None) == "raised"]
            status = ra.app.status()
    finally:
        sub.loop_stop()
        sub.disconnect()
    # The model scored nearly every window over its threshold; none of them became an anomaly alarm.
    assert held > 0.8 * scored
    assert raised == []
    assert entered == 1 and status["operating_points"]["pump1"]["sensors"]
    events = [d for t, d in messages if t == "appliance/alarms/pump1/operating_point/events"]
    assert [e["event"] for e in events] == ["operating_point_entered"]
    assert events[0]["status"] == "operating point not seen in training"
    assert not [t for t, _ in messages if t in ("appliance/alarms/pump1/events", "appliance/alarms/pump1/state")]
    reader = StoreReader(cfg.path(cfg.store.path))
    (episode,) = reader.operating_points("pump1")
    assert episode["active"] and episode["sensors"] == events[0]["sensors"]
    assert [d["episodes"] for d in reader.operating_points_per_day("pump1", now=episode["since"])] == [1]
    assert reader.alarms() == []
