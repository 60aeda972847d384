"""The Sparkplug B output against Eclipse Tahu as the host, through a real Mosquitto (issue 25, items 2 and 3).

The host (``rigs/tahu/host.js``) decodes with Tahu's ``sparkplug-payload`` and prints each
message as JSON; the appliance runs end to end (JSON MQTT input, a small trained model,
the real runtime raising a real alarm). Skips without Node or ``rigs/tahu/node_modules``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from appliance.detector.train import TrainSettings, train_bundle
from tests.support.appliance import Publisher, RunningAppliance, make_config
from tests.support.detector import circle_rows
from tests.support.tahu_host import TahuHost, tahu_available
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration,  # a real Mosquitto, Node running Tahu, the appliance end to end
              pytest.mark.skipif(tahu_available() is not None, reason=str(tahu_available()))]

SENSORS = ["a", "b", "c"]
NODE = "appliance"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_bundle(circle_rows(1200), SENSORS, tmp_path_factory.mktemp("sparkplug") / "bundle",
                        TrainSettings(window=8, hidden=(16, 4), max_iter=30, seed=2))


def sparkplug_config(tmp_path, port, bundle, **sparkplug):
    keys = {f"outputs__sparkplug__{k}": v for k, v in {"enabled": True, **sparkplug}.items()}
    return make_config(tmp_path, port, bundle, **keys)


def publish_rows(pub, t0, rows, first=0, scale=1.0, asset="pump1"):
    for i, row in enumerate(rows):
        values = {s: float(v) * scale for s, v in zip(SENSORS, row)}
        pub.publish(f"plant/{asset}/telemetry", json.dumps({"ts": t0 + first + i, "values": values}))
    pub.wait_all()


def named(message) -> dict:
    """A birth's metrics by name."""
    return {m["name"]: m for m in message["payload"]["metrics"]}


def by_alias(birth, message) -> dict:
    """A DATA message's metrics by the names its birth declared for their aliases (DATA carries none)."""
    names = {m["alias"]: m["name"] for m in birth["payload"]["metrics"] if "alias" in m}
    assert all("name" not in m for m in message["payload"]["metrics"]), message
    return {names[m["alias"]]: m for m in message["payload"]["metrics"]}


def seq_runs_in_order(host, after: int) -> None:
    """From an NBIRTH on, each message's seq is the one before plus one, modulo 256 (an NDEATH carries none)."""
    seqs = [m["payload"]["seq"] for m in host.events()[after:] if m["event"] == "message" and m["kind"] != "NDEATH"
            and m["kind"] != "NCMD" and m["kind"] != "DCMD"]
    assert seqs and seqs[0] == 0, seqs
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:])), seqs


def test_births_wait_for_the_host_then_data_follows_a_real_alarm_and_rebirth_writes_and_drops(
        tmp_path, mosquitto, bundle):
    cfg = sparkplug_config(tmp_path, mosquitto.port, bundle, primary_host_id="scada")
    host = None
    pub = Publisher(mosquitto.port)
    try:
        with RunningAppliance(cfg) as ra:
            out = ra.app.output("sparkplug")
            ra.wait_until(lambda: out.status()["connected"], what="the edge node connected")
            # Connected, and no birth: the primary host has not said it is online.
            assert not out.status()["born"] and "births" not in out.status()

            host = TahuHost(mosquitto.port, host_id="scada")
            nbirth = host.wait_message("NBIRTH", what="the NBIRTH once the host is online")
            node = named(nbirth)
            bdseq = node["bdSeq"]["value"]
            assert nbirth["node"] == NODE and nbirth["payload"]["seq"] == 0
            assert node["Node Control/Rebirth"]["value"] is False and node["Model/Version"]["value"]
            assert node["Appliance/State"]["value"] == "normal"
            aliases = [m["alias"] for m in nbirth["payload"]["metrics"] if "alias" in m]
            assert len(aliases) == len(set(aliases)) == len(node) - 1  # all but bdSeq

            t0 = time.time() - 200
            publish_rows(pub, t0, circle_rows(40, seed=5))
            dbirth = host.wait_message("DBIRTH", device="pump1", what="pump1 born once scored")
            device = named(dbirth)
            assert device["Alarm/Active"]["value"] is False and device["Alarm/State"]["value"] == "normal"
            assert device["Point/Mode"]["value"] == "in_service" and device["Score/Ratio"]["type"] == "Double"
            assert not set(m["alias"] for m in dbirth["payload"]["metrics"]) & set(aliases)

            # A fault: the real runtime raises, the host reads it in DDATA by alias.
            mark = host.mark()
            publish_rows(pub, t0, circle_rows(30, seed=6), first=40, scale=6.0)
            ra.wait_until(lambda: any(e.kind == "raised" for e in ra.events), what="an alarm raised")
            raised = next(e.alarm for e in ra.events if e.kind == "raised")
            ddata = host.wait_message("DDATA", mark, "pump1", "the alarm in DDATA",
                                      where=lambda m: by_alias(dbirth, m).get("Alarm/Active", {}).get("value"))
            values = {k: m["value"] for k, m in by_alias(dbirth, ddata).items()}
            assert values["Alarm/State"] == "unacknowledged" and values["Alarm/Id"] == raised.id
            assert values["Alarm/Level"] in ("anomaly", "critical") and values["Alarm/Top Sensors"]
            ndata = host.wait_message("NDATA", mark, what="the node's state follows",
                                      where=lambda m: by_alias(nbirth, m).get("Appliance/State", {}).get("value")
                                      == "alarm")
            assert by_alias(nbirth, ndata)["Alarms/Active"]["value"] == 1
            seq_runs_in_order(host, host.events().index(nbirth))

            # The host asks for a rebirth: the same session (same bdSeq), seq from 0, current values.
            mark = host.mark()
            host.send(cmd="rebirth", node=NODE)
            again = host.wait_message("NBIRTH", mark, what="the NBIRTH the host asked for")
            assert named(again)["bdSeq"]["value"] == bdseq and again["payload"]["seq"] == 0
            dbirth = host.wait_message("DBIRTH", mark, "pump1", "pump1's DBIRTH again")
            assert named(dbirth)["Alarm/Active"]["value"] is True
            assert named(dbirth)["Alarm/Id"]["value"] == raised.id

            # Writes are refused: the alarm stays, nothing is published for them.
            host.send(cmd="dcmd", node=NODE, device="pump1",
                      metrics=[{"name": "Alarm/Active", "type": "Boolean", "value": False}])
            host.send(cmd="ncmd", node=NODE, metrics=[{"name": "Model/Version", "type": "String", "value": "x"}])
            ra.wait_until(lambda: out.status().get("writes_refused") == 2, what="both writes refused")
            assert [a for a in ra.app.status()["alarms"] if a["id"] == raised.id][0]["active"]

            # The connection drops (no DISCONNECT): the broker delivers the will, the NDEATH of this bdSeq,
            # and the next session births with the next.
            mark = host.mark()
            out.client.socket().shutdown(socket.SHUT_RDWR)
            ndeath = host.wait_message("NDEATH", mark, what="the will: NDEATH")
            assert named(ndeath)["bdSeq"]["value"] == bdseq and "seq" not in ndeath["payload"]
            reborn = host.wait_message("NBIRTH", mark, what="the next session's NBIRTH")
            assert named(reborn)["bdSeq"]["value"] == (bdseq + 1) % 256
            assert host.events().index(ndeath) < host.events().index(reborn)
            host.wait_message("DBIRTH", mark, "pump1", "pump1 born again")
            assert out.status()["disconnects"] == 1

            # The host goes offline: the node publishes its NDEATH, disconnects and waits; back online, it births.
            mark = host.mark()
            host.send(cmd="state", online=False)
            ndeath = host.wait_message("NDEATH", mark, what="the NDEATH when the host went offline")
            assert named(ndeath)["bdSeq"]["value"] == (bdseq + 1) % 256
            ra.wait_until(lambda: out.status()["connected"] and not out.status()["born"],
                          what="a new session waiting for the host")
            host.send(cmd="state", online=True)
            back = host.wait_message("NBIRTH", mark, what="births once the host is back")
            assert named(back)["bdSeq"]["value"] == (bdseq + 2) % 256
    finally:
        pub.close()
        if host is not None:
            host.stop()


APPLIANCE_MAIN = """
import sys
from appliance.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_a_killed_appliance_leaves_its_ndeath_and_the_next_start_births_with_the_next_bdseq(
        tmp_path, mosquitto, bundle):
    cfg_file = tmp_path / "appliance.toml"
    cfg_file.write_text(f"""
data_dir = "{tmp_path / 'data'}"
log_level = "WARNING"
[connections.mqtt]
port = {mosquitto.port}
[detector]
bundle = "{bundle}"
[web]
enabled = false
[outputs.history]
enabled = false
[outputs.sparkplug]
enabled = true
""")
    host = TahuHost(mosquitto.port)
    procs = []

    def start():
        procs.append(subprocess.Popen([sys.executable, "-c", APPLIANCE_MAIN, str(cfg_file)], cwd=os.getcwd()))
        return procs[-1]

    try:
        first = start()
        birth = host.wait_message("NBIRTH", what="the first start's NBIRTH")
        bdseq = named(birth)["bdSeq"]["value"]
        mark = host.mark()
        os.kill(first.pid, signal.SIGKILL)  # no goodbye: only the broker can tell
        first.wait()
        death = host.wait_message("NDEATH", mark, what="the will of the killed session")
        assert named(death)["bdSeq"]["value"] == bdseq
        second = start()
        reborn = host.wait_message("NBIRTH", mark, what="the restart's NBIRTH")
        assert named(reborn)["bdSeq"]["value"] == (bdseq + 1) % 256
        mark = host.mark()
        second.send_signal(signal.SIGTERM)  # a clean stop publishes its NDEATH itself
        assert second.wait(60) == 0
        death = host.wait_message("NDEATH", mark, what="the NDEATH of a clean stop")
        assert named(death)["bdSeq"]["value"] == (bdseq + 1) % 256
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        host.stop()
    assert json.loads((tmp_path / "data" / "sparkplug" / "bdseq.json").read_text()) == {"bdseq": (bdseq + 1) % 256}


def test_after_a_broker_restart_the_node_births_again_with_the_next_bdseq(tmp_path, mosquitto, bundle):
    cfg = sparkplug_config(tmp_path, mosquitto.port, bundle, primary_host_id="scada", rebirth_min_interval_s=0.0)
    host = TahuHost(mosquitto.port, host_id="scada")
    try:
        with RunningAppliance(cfg) as ra:
            out = ra.app.output("sparkplug")
            bdseq = named(host.wait_message("NBIRTH", what="the first NBIRTH"))["bdSeq"]["value"]
            mark = host.mark()
            mosquitto.restart(down_s=1.0)
            # Both come back on their own; the host says it is online again (its STATE, retained).
            host.wait_for(lambda e: e["event"] == "ready", after=mark, what="the host back")
            ra.wait_until(lambda: out.status()["born"] and out.status()["sessions"] == 2, what="born again")
            assert out.status()["bdseq"] == (bdseq + 1) % 256
            # What it birthed while the host was away, it births again when asked: the new bdSeq.
            mark = host.mark()
            host.send(cmd="rebirth", node=NODE)
            assert named(host.wait_message("NBIRTH", mark, what="the NBIRTH"))["bdSeq"]["value"] == (bdseq + 1) % 256
    finally:
        host.stop()
