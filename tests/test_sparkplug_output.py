"""The Sparkplug B output without a broker: payloads, aliases, seq, bdSeq, the session's rules (fake paho client).

What a real host makes of it is ``tests/test_sparkplug_output_tahu.py`` (Eclipse Tahu, Mosquitto).
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from appliance.actions.sparkplug.bdseq import BdSeqFile
from appliance.actions.sparkplug.config import SparkplugOutputConfig
from appliance.actions.sparkplug.node import DEVICE_METRICS, NODE_METRICS, EdgeNode, set_value
from appliance.actions.sparkplug.output import SparkplugOutput
from appliance.config import ConfigError, parse_config
from appliance.connections.config import MqttBroker
from appliance.connections.sparkplug.metrics import DataType, numeric_value
from appliance.connections.sparkplug.schema import Metric, Payload
from appliance.connections.sparkplug.topics import MessageType, parse_topic
from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, Level, ModeChange, ModelChange, PointMode, Score
from appliance.store import Store


# -- the node: payloads, aliases, seq ------------------------------------------------------------------------------

def score(asset="pump1", value=0.5, t=1000.0, historical=False):
    return Score(asset, t, value, 1.0, {"a": 0.6, "b": 0.4}, "m1", historical)


def alarm(asset="pump1", state=AlarmState.UNACKED, active=True):
    return Alarm(Alarm.make_id(asset, 990.0), asset, Level.CRITICAL, state, 990.0, 2.5, ("a", "b", "c", "d"),
                 active=active)


def decode(message):
    topic, payload = message
    return parse_topic(topic), Payload.FromString(payload)


def test_births_declare_every_metric_with_a_unique_alias_and_data_refers_by_alias_alone():
    node = EdgeNode("plant", "gw", appliance_version="1.2", model_version="m1", top_sensors=2)
    node.add_asset("pump1")
    node.add_asset("pump2")
    topic, nbirth = decode(node.nbirth(bdseq=9, now_ms=5))
    assert topic.kind is MessageType.NBIRTH and nbirth.seq == 0
    names = {m.name: m for m in nbirth.metrics}
    assert set(names) == {"bdSeq"} | {n for n, _ in NODE_METRICS}
    assert numeric_value(names["bdSeq"]) == 9 and names["Model/Version"].string_value == "m1"
    births = [decode(b) for b in node.dbirths(now_ms=5)]
    assert [(t.kind, t.device, p.seq) for t, p in births] == [(MessageType.DBIRTH, "pump1", 1),
                                                               (MessageType.DBIRTH, "pump2", 2)]
    aliases = [m.alias for m in nbirth.metrics if m.HasField("alias")]
    aliases += [m.alias for _, p in births for m in p.metrics]
    assert len(aliases) == len(set(aliases)) == len(NODE_METRICS) + 2 * len(DEVICE_METRICS)
    assert [m.name for m in births[0][1].metrics] == [n for n, _ in DEVICE_METRICS]

    changes = node.on_alarm(alarm())
    assert changes["Alarm/Top Sensors"] == "a,b" and changes["Alarm/State"] == "unacknowledged"
    topic, data = decode(node.ddata("pump1", changes, ts_ms=990_000, now_ms=6))
    assert topic.kind is MessageType.DDATA and data.seq == 3
    pump1 = {m.alias: m.name for m in births[0][1].metrics}
    assert all(not m.HasField("name") and m.timestamp == 990_000 for m in data.metrics)
    assert {pump1[m.alias] for m in data.metrics} == set(changes)
    assert node.on_alarm(alarm()) == {}  # nothing changed: nothing to report


def test_seq_wraps_after_255_and_a_new_nbirth_starts_it_again():
    node = EdgeNode("g", "n", appliance_version="1", model_version="m")
    node.add_asset("p")
    node.nbirth(0, 0)
    seqs = [Payload.FromString(node.ddata("p", {"Alarm/Id": str(i)}, 0, 0)[1]).seq for i in range(300)]
    assert seqs[:3] == [1, 2, 3] and seqs[254:257] == [255, 0, 1]
    assert Payload.FromString(node.nbirth(0, 0)[1]).seq == 0
    _, death = decode(node.ndeath(4, 0))
    assert not death.HasField("seq") and [m.name for m in death.metrics] == ["bdSeq"]


def test_the_score_ratio_is_reported_by_exception_beyond_its_deadband():
    node = EdgeNode("g", "n", appliance_version="1", model_version="m", ratio_deadband=0.1)
    node.add_asset("pump1")
    assert node.on_score(score(value=0.50)) == {"Score/Ratio": 0.5, "Score/Severity": 29}
    assert node.on_score(score(value=0.55)) == {}
    assert node.on_score(score(value=0.59)) == {}  # measured from what was reported, not the last score
    assert node.on_score(score(value=0.61))["Score/Ratio"] == pytest.approx(0.61)


def test_node_state_follows_the_active_alarms():
    node = EdgeNode("g", "n", appliance_version="1", model_version="m")
    node.add_asset("pump1")
    node.on_alarm(alarm())
    assert node.node_summary() == {"Alarms/Active": 1, "Appliance/State": "alarm"}
    node.on_alarm(alarm(state=AlarmState.NORMAL, active=False))
    assert node.node_summary() == {"Alarms/Active": 0, "Appliance/State": "normal"}


@pytest.mark.parametrize("kind, value", [(DataType.Int8, -3), (DataType.Int16, -300), (DataType.Int32, -7),
                                         (DataType.Int64, -2**40), (DataType.UInt8, 200), (DataType.UInt16, 60000),
                                         (DataType.UInt32, 2**32 - 1), (DataType.UInt64, 2**63),
                                         (DataType.Float, 1.5), (DataType.Double, -2.25), (DataType.Boolean, True),
                                         (DataType.DateTime, 1_700_000_000_000)])
def test_set_value_writes_what_numeric_value_reads_back(kind, value):
    m = Metric()
    set_value(m, kind, value)
    assert numeric_value(Metric.FromString(m.SerializeToString())) == float(value)


def test_set_value_refuses_what_the_appliance_never_publishes():
    with pytest.raises(ValueError, match="DataSet"):
        set_value(Metric(), DataType.DataSet, 1)


# -- bdSeq --------------------------------------------------------------------------------------------------------

def test_bdseq_goes_on_across_restarts_wraps_and_survives_a_bad_file(tmp_path, caplog):
    f = tmp_path / "sp" / "bdseq.json"
    assert [BdSeqFile(f).take_next() for _ in range(3)] == [0, 1, 2]
    assert json.loads(f.read_text()) == {"bdseq": 2} and list(f.parent.iterdir()) == [f]
    f.write_text('{"bdseq": 255}')
    assert BdSeqFile(f).take_next() == 0
    for bad in ("{", '{"bdseq": 256}', '{"bdseq": true}', "[]"):
        f.write_text(bad)
        with caplog.at_level(logging.WARNING):
            assert BdSeqFile(f).take_next() == 0
    assert sum("bdSeq file" in r.getMessage() for r in caplog.records) == 4


# -- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["group_id", "edge_node_id", "primary_host_id"])
@pytest.mark.parametrize("bad", ["a/b", "plant+", "#"])
def test_ids_that_are_not_one_topic_level_are_refused(key, bad):
    with pytest.raises(ConfigError, match=f"outputs.sparkplug.{key}"):
        parse_config({"outputs": {"sparkplug": {"enabled": True, key: bad}}})


def test_the_output_is_off_unless_enabled_and_its_bdseq_file_is_no_system_folder():
    assert not parse_config({}).outputs.sparkplug.enabled
    with pytest.raises(ConfigError, match="outputs.sparkplug.bdseq_file"):
        parse_config({"outputs": {"sparkplug": {"bdseq_file": "/etc/bdseq"}}})


# -- the session, with a fake paho client -----------------------------------------------------------------------

class FakeClient:
    def __init__(self):
        self.published: list[tuple[str, bytes, int]] = []
        self.wills: list[tuple[str, bytes]] = []
        self.subscribed: list = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.published.append((topic, payload, qos))
        return SimpleNamespace(wait_for_publish=lambda timeout=None: None)

    def will_set(self, topic, payload, qos=0, retain=False):
        assert qos == 1 and not retain
        self.wills.append((topic, payload))

    def subscribe(self, topics):
        self.subscribed.append(topics)

    def disconnect(self):
        pass

    def loop_stop(self):
        pass

    def kinds(self):
        return [parse_topic(t).kind.value + (f"/{parse_topic(t).device}" if parse_topic(t).device else "")
                for t, _, _ in self.published]

    def take(self):
        out, self.published = self.published, []
        return out


OK = SimpleNamespace(is_failure=False)


def session(tmp_path, **cfg) -> SparkplugOutput:
    out = SparkplugOutput(SparkplugOutputConfig(enabled=True, **cfg), MqttBroker(), bdseq_path=tmp_path / "bdseq.json",
                          appliance_version="9.9", model_version="m1")
    out.client = FakeClient()
    out._arm_will(out.bdseq.take_next())
    return out


def connect(out):
    out._on_connect(out.client, None, None, OK, None)


def message(out, topic, payload: bytes):
    out._on_message(out.client, None, SimpleNamespace(topic=topic, payload=payload))


def command(*metrics) -> bytes:
    p = Payload(timestamp=1)
    for name, kind, value in metrics:
        m = p.metrics.add()
        if isinstance(name, int):
            m.alias = name
        else:
            m.name = name
        set_value(m, kind, value)
    return p.SerializeToString()


def test_without_a_primary_host_it_births_on_connect_and_reports_changes_after(tmp_path):
    out = session(tmp_path)
    out.on_score(score())  # before any session: remembered, not published
    assert out.client.published == []
    connect(out)
    assert out.client.kinds() == ["NBIRTH", "DBIRTH/pump1"]
    assert [t for sub in out.client.subscribed for t, _ in sub] == ["spBv1.0/plant/NCMD/appliance",
                                                                     "spBv1.0/plant/DCMD/appliance/+"]
    out.client.take()
    out.on_score(score("pump2"))
    out.on_alarm_event(AlarmEvent(EventKind.RAISED, alarm(), 1000.0))
    out.on_score(score(historical=True, value=5.0))
    out.on_mode_change(ModeChange("pump1", PointMode.SHELVED, PointMode.IN_SERVICE, 1001.0, "ann",
                                  alarm=alarm(state=AlarmState.SHELVED)))
    out.on_model_change(ModelChange(1002.0, "shadow_started", "m2", "m1", "update"))
    assert out.client.kinds() == ["DBIRTH/pump2", "DDATA/pump1", "NDATA", "DDATA/pump1", "NDATA", "NDATA"]
    assert all(qos == 0 for _, _, qos in out.client.published)
    status = out.status()
    assert status["born"] and status["devices"] == 2 and status["ddata"] == 2 and status["ndata"] == 3


def test_with_a_primary_host_births_wait_for_its_state(tmp_path, caplog):
    out = session(tmp_path, primary_host_id="scada")
    connect(out)
    assert out.client.published == [] and ("spBv1.0/STATE/scada", 1) in out.client.subscribed[0]
    with caplog.at_level(logging.WARNING):
        message(out, "spBv1.0/STATE/scada", b"ONLINE")  # Sparkplug 2.2's payload: not 3.0's JSON
        message(out, "spBv1.0/STATE/scada", b'{"online": "yes", "timestamp": 5}')
    assert out.client.published == [] and out.status()["state_malformed"] == 2
    message(out, "spBv1.0/STATE/scada", b'{"online": true, "timestamp": 10}')
    assert out.client.kinds() == ["NBIRTH"]
    message(out, "spBv1.0/STATE/scada", b'{"online": false, "timestamp": 9}')  # older than what was seen
    assert out.status()["state_stale"] == 1 and out.status()["born"]


def test_rebirth_by_name_or_alias_and_writes_refused_and_logged(tmp_path, caplog):
    out = session(tmp_path, rebirth_min_interval_s=0.0)
    connect(out)
    out.on_score(score())
    out.client.take()
    message(out, "spBv1.0/plant/NCMD/appliance", command(("Node Control/Rebirth", DataType.Boolean, True)))
    assert out.client.kinds() == ["NBIRTH", "DBIRTH/pump1"]
    out.client.take()
    rebirth_alias = out.node.aliases[(None, "Node Control/Rebirth")]
    message(out, "spBv1.0/plant/NCMD/appliance", command((rebirth_alias, DataType.Boolean, True)))
    assert out.client.kinds() == ["NBIRTH", "DBIRTH/pump1"]
    out.client.take()
    active = out.node.aliases[("pump1", "Alarm/Active")]
    with caplog.at_level(logging.WARNING):
        message(out, "spBv1.0/plant/DCMD/appliance/pump1", command((active, DataType.Boolean, False)))
        message(out, "spBv1.0/plant/NCMD/appliance", command(("Model/Version", DataType.String, "evil")))
        message(out, "spBv1.0/plant/NCMD/appliance", b"\xff\xff not protobuf")
    assert out.client.published == []
    assert out.status()["writes_refused"] == 2 and out.status()["commands_malformed"] == 1
    refused = [r.getMessage() for r in caplog.records if "write refused" in r.getMessage()]
    assert "device=pump1 metric='Alarm/Active'" in refused[0] and "metric='Model/Version'" in refused[1]
    assert out.node.assets["pump1"].values["Alarm/Active"] is False


def test_rebirth_requests_within_the_interval_are_answered_by_one_birth(tmp_path):
    out = session(tmp_path, rebirth_min_interval_s=3600.0)
    connect(out)
    out.client.take()
    for _ in range(100):
        out.request_rebirth()
    assert out.client.published == [] and out._rebirth_timer is not None
    assert out.status()["rebirth_requests"] == 100
    out._rebirth_due()  # what the timer does at the end of the interval
    assert out.client.kinds() == ["NBIRTH"] and out._rebirth_timer is None


def test_a_lost_session_arms_the_next_bdseq_a_clean_stop_does_not(tmp_path):
    out = session(tmp_path)
    connect(out)
    first = Payload.FromString(out.client.wills[-1][1]).metrics[0]
    birth = [p for t, p, _ in out.client.take() if "NBIRTH" in t][0]
    assert numeric_value(first) == numeric_value(Payload.FromString(birth).metrics[0]) == 0
    out._on_disconnect(out.client, None, None, "lost", None)
    assert not out.status()["born"] and out.status()["bdseq"] == 1
    assert numeric_value(Payload.FromString(out.client.wills[-1][1]).metrics[0]) == 1
    out.on_score(score())  # no session: nothing goes out
    assert out.client.published == []
    connect(out)
    assert numeric_value(Payload.FromString(out.client.take()[0][1]).metrics[0]) == 1
    out._close()
    (topic, payload, qos), = out.client.published
    assert parse_topic(topic).kind is MessageType.NDEATH and qos == 1
    assert numeric_value(Payload.FromString(payload).metrics[0]) == 1
    out._on_disconnect(out.client, None, None, "closed", None)
    assert BdSeqFile(tmp_path / "bdseq.json").last() == 1  # the next start takes 2


def test_assets_that_cannot_be_device_ids_are_counted_not_published(tmp_path, caplog):
    out = session(tmp_path)
    connect(out)
    out.client.take()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out.on_score(score("line/pump+1"))
    assert out.client.published == [] and out.status()["assets_refused"] == 3
    assert sum("not published" in r.getMessage() for r in caplog.records) == 1


def test_open_alarms_and_point_modes_in_the_store_are_born_with_their_state(tmp_path):
    store = Store(tmp_path / "store.db")
    store.start()
    store.put_alarm(alarm("pump1"))
    store.put_mode_change(ModeChange("pump2", PointMode.OUT_OF_SERVICE, PointMode.IN_SERVICE, 5.0, "ann"))
    assert store.flush()
    store.close()
    out = session(tmp_path)
    out.store_path = tmp_path / "store.db"
    out._seed_from_store()
    connect(out)
    births = {parse_topic(t).device: {m.name: m for m in Payload.FromString(p).metrics}
              for t, p, _ in out.client.published if "DBIRTH" in t}
    assert births["pump1"]["Alarm/Active"].boolean_value and births["pump1"]["Alarm/Level"].string_value == "critical"
    assert births["pump2"]["Point/Mode"].string_value == "out_of_service"
    nbirth = {m.name: m for m in Payload.FromString(out.client.published[0][1]).metrics}
    assert nbirth["Appliance/State"].string_value == "alarm"
