"""``[outputs.sparkplug]``: the appliance as a Sparkplug B edge node (group, node id, primary host, bdSeq file)."""

from __future__ import annotations

from pydantic import Field, field_validator

from appliance.connections.config import MqttBroker
from appliance.settings import Section, StatePath

# Characters a Sparkplug id may not hold: the topic separator and MQTT's wildcards.
_FORBIDDEN = ("/", "+", "#")


def check_sparkplug_id(v: str, what: str) -> str:
    """A group, edge node or host id: a single topic level, no wildcard.

    >>> check_sparkplug_id("plant1", "group_id")
    'plant1'
    >>> check_sparkplug_id("a/b", "group_id")
    Traceback (most recent call last):
    ...
    ValueError: group_id 'a/b' may not contain '/', '+' or '#' (it is one level of the topic)
    """
    if any(c in v for c in _FORBIDDEN):
        raise ValueError(f"{what} {v!r} may not contain '/', '+' or '#' (it is one level of the topic)")
    return v


class SparkplugOutputConfig(Section):
    enabled: bool = False
    broker: MqttBroker | None = Field(None, description="default: [connections.mqtt]")
    client_id: str = Field("appliance-sparkplug", min_length=1, max_length=128)
    group_id: str = Field("plant", min_length=1, max_length=128)
    edge_node_id: str = Field("appliance", min_length=1, max_length=128)
    primary_host_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="births wait until spBv1.0/STATE/<this> says online; None: no primary host, birth at once")
    bdseq_file: StatePath = Field("sparkplug/bdseq.json", description="the bdSeq of the last session, kept across "
                                                                       "restarts (relative to data_dir)")
    ratio_deadband: float = Field(0.05, ge=0.0, le=1000.0,
                                  description="Score/Ratio is reported when it moved at least this far")
    top_sensors: int = Field(3, ge=1, le=32, description="how many top sensors Alarm/Top Sensors names")
    rebirth_min_interval_s: float = Field(
        1.0, ge=0.0, le=3600.0, description="rebirth requests closer than this are answered by one birth")

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _one_topic_level(cls, v: str | None, info) -> str | None:
        return v if v is None else check_sparkplug_id(v, info.field_name)
