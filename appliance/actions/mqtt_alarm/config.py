"""``[outputs.mqtt_alarm]``: where alarm events and states are published."""

from __future__ import annotations

from pydantic import Field

from appliance.connections.config import MqttBroker
from appliance.settings import Section


class MqttAlarmConfig(Section):
    enabled: bool = True
    broker: MqttBroker | None = Field(None, description="default: [connections.mqtt]")
    client_id: str = Field("appliance-alarms", min_length=1, max_length=128)
    topic_prefix: str = Field("appliance/alarms", min_length=1, max_length=1024)
