"""The pump simulator as a Sparkplug B edge node, read by Eclipse Tahu's decoder as a host (issue 25, item 5).

The simulator shares the appliance's payload schema; what it publishes is held to Tahu's
``sparkplug-payload`` here, so it is right whichever of the two changes. Skips without Node
or ``rigs/tahu/node_modules``.
"""

from __future__ import annotations

import socket
import threading

import pytest

from firmware_sim.publisher import MqttPublisher, run_pump
from firmware_sim.pump import SENSORS
from tests.support.sim import run_cli
from tests.support.tahu_host import TahuHost, tahu_available
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration,  # a real Mosquitto, Node running Tahu
              pytest.mark.skipif(tahu_available() is not None, reason=str(tahu_available()))]


def named(message) -> dict:
    return {m["name"]: m for m in message["payload"]["metrics"]}


def test_the_pump_births_publishes_by_alias_rebirths_and_dies_as_sparkplug_has_it(mosquitto):
    host = TahuHost(mosquitto.port)
    samples: dict[int, dict] = {}
    stop = threading.Event()
    pub = MqttPublisher("127.0.0.1", mosquitto.port, qos=0)
    runner = threading.Thread(target=run_pump, kwargs=dict(
        port=mosquitto.port, asset="pump1", rate_hz=20, seed=3, publisher=pub, sparkplug=("plant", "pump-sim"),
        stop_event=stop, on_sample=lambda ts, v: samples.setdefault(int(ts * 1000), dict(v))))
    runner.start()
    try:
        nbirth = host.wait_message("NBIRTH", what="the simulator's NBIRTH")
        assert nbirth["node"] == "pump-sim" and nbirth["payload"]["seq"] == 0
        assert named(nbirth)["bdSeq"]["value"] == 0 and named(nbirth)["Node Control/Rebirth"]["value"] is False
        dbirth = host.wait_message("DBIRTH", device="pump1", what="the pump's DBIRTH")
        metrics = named(dbirth)
        assert list(metrics) == list(SENSORS) and {m["type"] for m in metrics.values()} == {"Double"}
        assert metrics["Current"]["value"] == samples[dbirth["payload"]["timestamp"]]["Current"]
        names = {m["alias"]: m["name"] for m in dbirth["payload"]["metrics"]}
        assert len(names) == len(SENSORS)

        host.wait_for(lambda e: len(host.messages("DDATA")) >= 20, what="20 DDATA")
        for d in host.messages("DDATA")[:20]:
            assert all("name" not in m for m in d["payload"]["metrics"])
            values = {names[m["alias"]]: m["value"] for m in d["payload"]["metrics"]}
            assert values == samples[d["payload"]["timestamp"]]
        seqs = [m["payload"]["seq"] for m in host.messages() if m["kind"] != "NDEATH"][:22]
        assert seqs == list(range(22))

        mark = host.mark()
        host.send(cmd="rebirth", node="pump-sim")
        again = host.wait_message("NBIRTH", mark, what="the NBIRTH the host asked for")
        assert named(again)["bdSeq"]["value"] == 0 and again["payload"]["seq"] == 0
        host.wait_message("DBIRTH", mark, "pump1", "the DBIRTH the host asked for")

        mark = host.mark()
        pub.client.socket().shutdown(socket.SHUT_RDWR)  # the connection drops: the broker sends the will
        death = host.wait_message("NDEATH", mark, what="the will")
        assert named(death)["bdSeq"]["value"] == 0
        reborn = host.wait_message("NBIRTH", mark, what="the next session's NBIRTH")
        assert named(reborn)["bdSeq"]["value"] == 1
        mark = host.mark()
    finally:
        stop.set()
        runner.join(30)
        pub.close(flush_timeout=0)
    death = host.wait_message("NDEATH", mark, what="a clean stop's NDEATH")
    assert named(death)["bdSeq"]["value"] == 1
    host.stop()


def test_the_cli_says_where_it_publishes_with_sparkplug(mosquitto):
    host = TahuHost(mosquitto.port)
    try:
        out = run_cli("pump", "--port", str(mosquitto.port), "--asset", "pump7", "--rate", "20", "--seconds", "1",
                      "--sparkplug", "--group", "plant", "--edge-node", "line2")
        assert out.returncode == 0, out.stderr
        assert "sparkplug=spBv1.0/plant/DDATA/line2/pump7" in out.stdout
        wait_until(lambda: host.messages("NDEATH"), what="the NDEATH of the run's end")
        assert host.messages("DBIRTH", device="pump7") and len(host.messages("DDATA", device="pump7")) >= 10
    finally:
        host.stop()


def test_names_that_are_not_one_topic_level_are_refused():
    with pytest.raises(ValueError, match="one topic level"):
        run_pump(port=1, asset="line/pump1", sparkplug=("plant", "pump-sim"), seconds=0)
