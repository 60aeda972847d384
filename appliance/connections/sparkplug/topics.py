"""Sparkplug B topic names: ``spBv1.0/<group>/<message type>/<edge node>[/<device>]`` and the host's STATE topic.

>>> t = parse_topic("spBv1.0/plant1/DDATA/gw7/pump3")
>>> t.group, t.kind, t.node, t.device, t.kind.is_data
('plant1', <MessageType.DDATA: 'DDATA'>, 'gw7', 'pump3', True)
>>> str(t), node_topic("plant1", MessageType.NCMD, "gw7")
('spBv1.0/plant1/DDATA/gw7/pump3', 'spBv1.0/plant1/NCMD/gw7')
>>> parse_topic("spBv1.0/STATE/scada").host
'scada'
>>> parse_topic("spBv1.0/plant1/NDATA/gw7/extra")
Traceback (most recent call last):
...
appliance.connections.sparkplug.topics.TopicError: NDATA carries no device: 'spBv1.0/plant1/NDATA/gw7/extra'
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.core.compat import StrEnum

NAMESPACE = "spBv1.0"


class TopicError(ValueError):
    """A topic that is not a Sparkplug B topic the appliance understands."""


class MessageType(StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"
    STATE = "STATE"

    @property
    def is_device(self) -> bool:
        return self in (MessageType.DBIRTH, MessageType.DDEATH, MessageType.DDATA, MessageType.DCMD)

    @property
    def is_data(self) -> bool:
        return self in (MessageType.NDATA, MessageType.DDATA)

    @property
    def is_birth(self) -> bool:
        return self in (MessageType.NBIRTH, MessageType.DBIRTH)

    @property
    def is_death(self) -> bool:
        return self in (MessageType.NDEATH, MessageType.DDEATH)


@dataclass(frozen=True)
class Topic:
    """A parsed topic; ``host`` is set for ``spBv1.0/STATE/<host>`` only, ``device`` for device messages."""

    kind: MessageType
    group: str = ""
    node: str = ""
    device: str | None = None
    host: str | None = None

    def __str__(self) -> str:
        if self.kind is MessageType.STATE:
            return state_topic(self.host or "")
        tail = f"/{self.device}" if self.device is not None else ""
        return f"{NAMESPACE}/{self.group}/{self.kind.value}/{self.node}{tail}"


def parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != NAMESPACE:
        raise TopicError(f"not a Sparkplug B topic: {topic!r}")
    if parts[1] == MessageType.STATE.value and len(parts) == 3:
        return Topic(MessageType.STATE, host=parts[2])
    if len(parts) not in (4, 5):
        raise TopicError(f"not a Sparkplug B topic: {topic!r}")
    try:
        kind = MessageType(parts[2])
    except ValueError:
        raise TopicError(f"unknown Sparkplug message type {parts[2]!r}: {topic!r}") from None
    device = parts[4] if len(parts) == 5 else None
    if kind.is_device != (device is not None):
        need = "needs a device" if kind.is_device else "carries no device"
        raise TopicError(f"{kind.value} {need}: {topic!r}")
    if not parts[1] or not parts[3] or device == "":
        raise TopicError(f"empty group, edge node or device: {topic!r}")
    return Topic(kind, parts[1], parts[3], device)


def node_topic(group: str, kind: MessageType, node: str, device: str | None = None) -> str:
    return str(Topic(kind, group, node, device))


def state_topic(host: str) -> str:
    """The primary host application's STATE topic (Sparkplug 3.0)."""
    return f"{NAMESPACE}/STATE/{host}"
