"""The Sparkplug B input against Mosquitto and Eclipse Tahu's own edge node (sparkplug-client from npm).

The appliance runs as ``appliance run`` builds it, with only ``[inputs.sparkplug]``
enabled; the edge node is ``rigs/tahu/edge_node.js`` (Tahu 3.2.4), one process per
session. Skipped, saying why, where Node.js or ``rigs/tahu/node_modules`` is missing
(CI installs both: ``scripts/setup.sh --test``). The last two tests need no Tahu (a QoS 1
publisher of our own: Tahu publishes at QoS 0, and cannot send a birth too large) and always run. The state
logic alone, with no broker: tests/test_sparkplug_host.py.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from appliance.connections.config import MqttBroker
from appliance.connections.sparkplug import DataType, Payload
from appliance.connectors.sparkplug.config import SparkplugInputConfig
from appliance.connectors.sparkplug.connector import SparkplugConnector
from appliance.detector.train import TrainSettings, train_bundle
from appliance.settings import BackoffConfig
from appliance.store.store import StoreReader
from rigs.tahu_edge import TahuEdgeNode, tahu_missing
from tests.support.appliance import Publisher, RunningAppliance, make_config
from tests.support.detector import circle_rows
from tests.support.fakes import MemorySink
from tests.support.loop import on_loop
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
needs_tahu = pytest.mark.skipif(tahu_missing() is not None, reason=str(tahu_missing()))

SENSORS = ["a", "b", "c"]
T0_MS = int((time.time() - 3600) * 1000) // 1000 * 1000  # an hour ago, whole seconds


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_bundle(circle_rows(1200), SENSORS, tmp_path_factory.mktemp("sparkplug") / "bundle",
                        TrainSettings(window=8, hidden=(16, 4), max_iter=30, seed=2))


@contextlib.contextmanager
def running(tmp_path, port, bundle):
    cfg = make_config(tmp_path, port, bundle, inputs__mqtt__enabled=False,
                      inputs__sparkplug__enabled=True, inputs__sparkplug__reorder_timeout_s=0.5,
                      inputs__sparkplug__rebirth_interval_s=1.0,
                      watchdog__silence_s=3600)  # only a death can make a sensor silent within the test
    with RunningAppliance(cfg) as ra:
        ra.wait_until(lambda: sparkplug(ra)["subscribed"], what="sparkplug input subscribed")
        yield ra


@pytest.fixture
def appliance(tmp_path, mosquitto, bundle):
    with running(tmp_path, mosquitto.port, bundle) as ra:
        yield ra


@pytest.fixture
def edge_nodes(mosquitto):
    started: list[TahuEdgeNode] = []

    def start(**kw) -> TahuEdgeNode:
        node = TahuEdgeNode(mosquitto.port, **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


def sparkplug(ra) -> dict:
    return ra.app.status()["inputs"]["sparkplug"]


def counters(ra) -> dict:
    return sparkplug(ra)["sparkplug"]


def stored(ra, asset: str, sensor: str) -> list[dict]:
    return StoreReader(ra.app.store.path).readings(asset=asset, sensor=sensor, limit=1000)


def values_at(ra, asset: str, sensor: str) -> dict[float, float]:
    return {r["ts"]: r["value"] for r in stored(ra, asset, sensor)}


def send_rows(node: TahuEdgeNode, start_ms: int, rows: int, device: str = "pump3") -> None:
    for k in range(rows):
        node.data(device, {s: float(10 * k + j) for j, s in enumerate(SENSORS)}, start_ms + 1000 * k)


@needs_tahu
def test_readings_from_a_tahu_edge_node_arrive_in_the_store_under_the_mapped_asset_and_sensor(appliance, edge_nodes):
    node = edge_nodes(devices=("pump3", "pump4"))
    node.wait_event("birth")
    appliance.wait_until(lambda: counters(appliance).get("device_births", 0) >= 2, what="both device births")
    node.data("pump3", {"a": 1.5, "b": -2.25, "c": 3.0}, T0_MS)
    node.data("pump4", {"a": 7.0}, T0_MS + 250)
    appliance.wait_until(lambda: T0_MS / 1000 + 0.25 in values_at(appliance, "pump4", "a"), what="pump4/a stored")
    appliance.wait_until(lambda: T0_MS / 1000 in values_at(appliance, "pump3", "c"), what="pump3/c stored")
    assert values_at(appliance, "pump3", "a")[T0_MS / 1000] == 1.5
    assert values_at(appliance, "pump3", "b")[T0_MS / 1000] == -2.25
    assert values_at(appliance, "pump4", "a")[T0_MS / 1000 + 0.25] == 7.0
    s = counters(appliance)
    assert s["nodes_online"] == 1 and s["devices_online"] == 2 and "unknown_alias" not in s
    # The node's own Uptime is not one of the model's sensors: counted, not stored, not dead-lettered.
    assert s.get("unknown_sensor", 0) >= 1 and sparkplug(appliance)["dead_letters_total"] == 0


@needs_tahu
def test_data_tahu_compressed_is_inflated_and_stored(appliance, edge_nodes):
    node = edge_nodes()
    node.wait_event("birth")
    appliance.wait_until(lambda: counters(appliance).get("device_births", 0) >= 1, what="the device birth")
    for k, how in enumerate((True, "DEFLATE", "GZIP")):
        node.data("pump3", {"a": 1.0 + k}, T0_MS + 1000 * k, compress=how)
    sent = {T0_MS / 1000 + k: 1.0 + k for k in range(3)}
    appliance.wait_until(lambda: sent.keys() <= values_at(appliance, "pump3", "a").keys(),
                         what="three compressed DDATA stored")
    assert {ts: v for ts, v in values_at(appliance, "pump3", "a").items() if ts in sent} == sent
    assert counters(appliance)["compressed_payloads"] == 3 and sparkplug(appliance)["dead_letters_total"] == 0
    assert "seq_skip" not in counters(appliance)  # the seq travels inside the compressed body


@needs_tahu
def test_data_before_any_birth_asks_for_a_rebirth_and_tahu_honours_it(tmp_path, mosquitto, bundle, edge_nodes):
    # The node was born before the appliance started (its births are QoS 0, not retained): the first
    # DATA the appliance sees comes before any birth it knows, as after the appliance's restart.
    node = edge_nodes()
    node.wait_event("birth")
    with running(tmp_path, mosquitto.port, bundle) as ra:
        node.data("pump3", {"a": 5.0, "b": 5.0, "c": 5.0}, T0_MS)
        node.wait_event("rebirth_requested")
        node.wait_event("birth", 2)
        ra.wait_until(lambda: counters(ra).get("device_births", 0) >= 1, what="the rebirth's device birth")
        assert counters(ra)["rebirth_requests_by_reason"] == {"data_before_birth": 1}
        assert counters(ra)["before_birth"] == 1
        node.data("pump3", {"a": 6.0, "b": 6.0, "c": 6.0}, T0_MS + 1000)
        ra.wait_until(lambda: values_at(ra, "pump3", "a").get(T0_MS / 1000 + 1) == 6.0,
                      what="data after the rebirth read")
        assert T0_MS / 1000 not in values_at(ra, "pump3", "a")  # no birth, no datatype: not read


@needs_tahu
def test_a_seq_gap_asks_for_a_rebirth_and_tahu_honours_it(appliance, edge_nodes):
    node = edge_nodes()
    node.wait_event("birth")
    appliance.wait_until(lambda: counters(appliance).get("device_births", 0) >= 1, what="device birth")
    send_rows(node, T0_MS, 3)
    node.send(cmd="skip", n=3)  # three seq numbers never sent
    node.wait_event("skipped")
    node.data("pump3", {"a": 99.0}, T0_MS + 10_000)
    node.wait_event("rebirth_requested")  # after the reorder wait (0.5 s), from the ticker
    node.wait_event("birth", 2)
    s = counters(appliance)
    assert s["seq_gaps"] == 1 and s["seq_lost"] == 3 and s["rebirth_requests_by_reason"] == {"seq_gap": 1}
    # The data after the gap was read at once, and the rebirth's values too.
    assert values_at(appliance, "pump3", "a")[T0_MS / 1000 + 10] == 99.0
    node.data("pump3", {"a": 100.0}, T0_MS + 11_000)
    appliance.wait_until(lambda: values_at(appliance, "pump3", "a").get(T0_MS / 1000 + 11) == 100.0,
                         what="data after the rebirth")
    assert counters(appliance)["seq_gaps"] == 1  # the rebirth restarted the sequence: no second gap


@needs_tahu
def test_a_death_shows_the_sensors_silent_at_once_and_no_window_spans_it(appliance, edge_nodes):
    node = edge_nodes()
    node.wait_event("birth")
    appliance.wait_until(lambda: counters(appliance).get("device_births", 0) >= 1, what="device birth")
    send_rows(node, T0_MS, 12)
    appliance.wait_until(lambda: len(values_at(appliance, "pump3", "c")) >= 12, what="rows stored")
    node.stop()  # NDEATH from the node itself
    silent = lambda: {(s["asset"], s["sensor"]) for s in appliance.app.status()["silent_sensors"]}  # noqa: E731
    # [watchdog] silence_s is an hour: only the death can show them silent now.
    appliance.wait_until(lambda: {("pump3", s) for s in SENSORS} <= silent(), what="sensors silent after NDEATH")
    gaps = sparkplug(appliance)["gaps"]
    assert {(g["asset"], g["sensor"]) for g in gaps["interrupted"]} >= {("pump3", s) for s in SENSORS}
    rows = stored(appliance, "pump3", "a")
    last = max(r["ts"] for r in rows if r["value"] is not None)  # the birth's value, stamped now
    marks = [(r["ts"], r["quality"]) for r in rows if r["value"] is None]
    assert marks == [(pytest.approx(last + 0.001), 2)]  # just after the last reading: bad, valueless
    assert counters(appliance)["deaths"] == 1


@needs_tahu
def test_a_tahu_edge_node_that_restarts_under_a_new_bdseq_is_read_again(appliance, edge_nodes):
    first = edge_nodes(bdseq=0)
    first.wait_event("birth")
    appliance.wait_until(lambda: counters(appliance).get("device_births", 0) >= 1, what="device birth")
    send_rows(first, T0_MS, 4)
    appliance.wait_until(lambda: len(values_at(appliance, "pump3", "a")) >= 4, what="first session stored")
    first.kill()  # no word from the node: the broker sends its will, the NDEATH of bdSeq 0
    second = edge_nodes(bdseq=1)
    second.wait_event("birth")
    send_rows(second, T0_MS + 60_000, 2)
    appliance.wait_until(lambda: T0_MS / 1000 + 61 in values_at(appliance, "pump3", "a"), what="second session")
    s = counters(appliance)
    # The old session is dead however the will and the new birth crossed: by its NDEATH, or by the
    # new birth's bdSeq (and then its NDEATH, arriving late, is stale).
    assert s.get("deaths", 0) + s.get("deaths_implied", 0) == 1
    assert s.get("deaths_implied", 0) == s.get("stale_deaths", 0) or s.get("deaths", 0) == 1
    assert s["nodes_online"] == 1 and s["sensors_silenced"] == 3
    assert appliance.app.inputs[0].host.nodes[("plant1", "gw7")].bdseq == 1
    # The silence closed with the second session's readings, and the gap detector counted it.
    appliance.wait_until(lambda: sparkplug(appliance)["gaps"]["interrupted_count"] == 0, what="interruption closed")
    assert sparkplug(appliance)["gaps"]["gaps"] >= 3


def test_a_qos1_message_is_acknowledged_only_once_stored_and_comes_again_if_it_was_not(mosquitto):
    # Tahu publishes at QoS 0; some edge nodes (and bridges) use QoS 1: then the JSON input's guarantee holds.
    broker = MqttBroker(host="127.0.0.1", port=mosquitto.port, keepalive_s=5,
                        reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    cfg = SparkplugInputConfig(enabled=True, client_id="sp-ack-test")

    def connector(sink):
        conn = SparkplugConnector(cfg, broker, known_sensors=SENSORS)
        on_loop(conn.start(sink))
        wait_until(lambda: conn.status()["subscribed"], what="sparkplug input subscribed")
        return conn

    held = MemorySink(ack=False)  # never stored: nothing may be acknowledged
    conn = connector(held)
    pub = Publisher(mosquitto.port, client_id="sp-qos1-node")
    birth = Payload(timestamp=T0_MS, seq=0)
    birth.metrics.add(name="bdSeq", datatype=DataType.UInt64, long_value=0)
    pub.publish("spBv1.0/plant1/NBIRTH/gw7", birth.SerializeToString())
    dbirth = Payload(timestamp=T0_MS, seq=1)
    dbirth.metrics.add(name="a", alias=1, datatype=DataType.Double, double_value=1.0)
    pub.publish("spBv1.0/plant1/DBIRTH/gw7/pump3", dbirth.SerializeToString())
    data = Payload(timestamp=T0_MS + 1000, seq=2)
    data.metrics.add(alias=1, datatype=DataType.Double, double_value=2.0)
    pub.publish("spBv1.0/plant1/DDATA/gw7/pump3", data.SerializeToString())
    pub.wait_all()
    wait_until(lambda: len(held.readings) == 2, what="birth and data read")
    assert conn.status()["acks"] == 0 and conn.status()["acks_pending"] == 3
    on_loop(conn.stop())
    stored = MemorySink(ack=True)
    conn = connector(stored)  # the broker delivers the three unacknowledged messages again, in order
    try:
        wait_until(lambda: [r.value for r in stored.readings] == [1.0, 2.0], what="redelivered and read")
        wait_until(lambda: conn.status()["acks"] == 3, what="acknowledged once stored")
        assert "before_birth" not in conn.status()["sparkplug"]
    finally:
        on_loop(conn.stop())
        pub.close()


def test_a_birth_refused_from_its_header_backs_off_its_nodes_rebirth_requests(mosquitto):
    # A birth over max_payload_bytes never reaches the host's parser: the session tells the host, so the
    # node's rebirth requests back off as for a birth with too many metrics (tests/test_sparkplug_host.py).
    broker = MqttBroker(host="127.0.0.1", port=mosquitto.port, keepalive_s=5,
                        reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    cfg = SparkplugInputConfig(enabled=True, client_id="sp-big-birth-test", max_payload_bytes=1024)
    sink = MemorySink(ack=True)
    conn = SparkplugConnector(cfg, broker, known_sensors=SENSORS)
    on_loop(conn.start(sink))
    pub = Publisher(mosquitto.port, client_id="sp-big-node")
    try:
        wait_until(lambda: conn.status()["subscribed"], what="sparkplug input subscribed")
        birth = Payload(timestamp=T0_MS, seq=0)
        for i in range(3000):  # refused from the header past max_payload_bytes + the largest topic's bytes
            birth.metrics.add(name=f"line3/pump/metric-{i:04d}", alias=i, datatype=DataType.Double, double_value=1.0)
        assert len(birth.SerializeToString()) > cfg.max_payload_bytes + 65539
        pub.publish("spBv1.0/plant1/NBIRTH/gw8", birth.SerializeToString())
        data = Payload(timestamp=T0_MS + 1000, seq=1)
        data.metrics.add(alias=1, datatype=DataType.Double, double_value=2.0)
        pub.publish("spBv1.0/plant1/NDATA/gw8", data.SerializeToString())
        pub.wait_all()
        wait_until(lambda: conn.status()["sparkplug"].get("before_birth", 0) == 1, what="the data before a birth",
                   detail=lambda: (conn.status(), sink.dead))
        node = conn.host.nodes[("plant1", "gw8")]
        assert node.too_big == {None} and node.refusals == 1
        assert [d.code.value for d in sink.dead] == ["too_large"]
    finally:
        on_loop(conn.stop())
        pub.close()
