"""The Sparkplug B host application's state: births, aliases, ``seq``, deaths and rebirth requests.

No MQTT here: :class:`SparkplugHost` takes a message (topic and payload) and
answers what it means: the readings, the dead letters, and which edge nodes to
ask for a rebirth. The connector (``connector.py``) carries messages in and the
rebirth requests (NCMD) out, so this logic is tested without a broker.

The rules (Eclipse Sparkplug 3.0, as a non-primary host application):

* A birth (NBIRTH for the node's own metrics, DBIRTH for a device's) declares
  each metric's name, alias and datatype; DATA may name a metric by its alias
  only, resolved against the birth of the same node or device. A birth whose
  aliases collide keeps its names but not the colliding aliases (a DATA metric
  using one is ignored, counted); a birth with more than ``max_metrics_per_birth``
  metrics, or one that would overfill the cache, is refused (dead-lettered).
* ``seq`` counts 0..255 over every message of an edge node but its NDEATH, from
  0 at the NBIRTH. A missing ``seq`` may still arrive for ``reorder_timeout_s``
  (its data is used whenever it comes: readings carry their own timestamps);
  once that passes it is a gap, and the node is asked to rebirth.
* DATA before any birth, an alias no birth declared, or a gap: a rebirth
  request (NCMD ``Node Control/Rebirth`` = true), at most one per node every
  ``rebirth_interval_s`` and ``max_rebirths_per_min`` in all; each counted.
  While a birth of the node stands refused for its size (it would send the same
  one again), that wait doubles with each such refusal up to
  ``max_rebirth_backoff_s`` (``rebirths_backed_off``), until the birth is taken.
* NDEATH (with the ``bdSeq`` of the node's current birth; an older one is stale
  and ignored), DDEATH, or an NBIRTH under a new ``bdSeq`` while the old session
  was never declared dead: the sensors of that node or device go silent at once.
  Each gets a bad-quality, valueless reading just after its last one, so no
  window spanning the death holds a value across it (it is not scored), and the
  connector tells the watchdog and the gap detector (:attr:`Outcome.silenced`).
* A node that births more than ``max_births_per_min`` times a minute is not read
  (its births and data are counted and dropped) until it calms down; then its
  data arrives before a birth and a rebirth is requested, at the bounded rate.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Collection

from google.protobuf.message import DecodeError

from appliance.connections.sparkplug import MessageType, Payload, Topic, TopicError, parse_topic
from appliance.connections.sparkplug.compression import COMPRESSED_UUID, CompressionError, inflate
from appliance.connections.sparkplug.metrics import (VALUE_FIELD, DataType, quality_of, signed_bits,
                                                     twos_complement, value_as)
from appliance.connectors.guard import Admission, DeadLetterBag, ValueRange, clip, dead_letter
from appliance.connectors.sparkplug.config import MappingRule, SparkplugInputConfig
from appliance.connectors.sparkplug.shape import DataShape
from appliance.core import Counters, DeadLetterCode, Quality, Reading
from appliance.core.records import new_reading

log = logging.getLogger(__name__)

REBIRTH_METRIC = "Node Control/Rebirth"
# A death's reading sits this long after the sensor's last one: the first instant it is known to be gone.
DEATH_OFFSET_S = 0.001
_SEQ_SPACE = 256
TOPIC_CACHE_SIZE = 4096
# Births of one node remembered as refused for their size (a publisher inventing device names costs no memory).
TOO_BIG_MAX = 64
_NO_TS = -math.inf
# DATA layouts learned per birth (shape.py): a few, since report by exception varies which metrics come;
# learning one costs a regular expression, so it is tried at most once per this many DATA read the slow way.
MAX_SHAPES = 4
SHAPE_LEARN_EVERY = 32
_DATA_KINDS = (MessageType.NDATA, MessageType.DDATA)


def quality_from_code(code: int) -> Quality:
    """The reading's quality from a Sparkplug ``Quality`` property (OPC DA codes, as Ignition sends them).

    >>> [quality_from_code(c).name for c in (192, 216, 64, 0, 500)]
    ['GOOD', 'GOOD', 'UNCERTAIN', 'BAD', 'BAD']
    """
    if 192 <= code <= 255:
        return Quality.GOOD
    if 64 <= code < 192:
        return Quality.UNCERTAIN
    return Quality.BAD  # 0..63 bad; 500 (Ignition's "stale") is not a current value


@dataclass(slots=True)
class MetricDef:
    """One metric of a birth: its name and datatype, the sensor it feeds (None: not a reading), and what
    reading one of its values takes, worked out once at the birth: the field its value travels in
    (``field``, None for a datatype that is not a number), how the raw value becomes a float (``bits``,
    :func:`~appliance.connections.sparkplug.metrics.signed_bits`) and the sensor's physical range."""

    name: str
    datatype: int
    sensor: str | None
    field: str | None = None
    bits: int = 0
    lo: float = -math.inf
    hi: float = math.inf
    known: bool | None = None  # the model (or the asset's sensor slots) has the sensor; None: not asked yet


@dataclass(slots=True)
class Birth:
    """The metrics one NBIRTH or DBIRTH declared, by alias and by name, and the asset they map to."""

    asset: str | None
    by_name: dict[str, MetricDef] = field(default_factory=dict)
    by_alias: dict[int, MetricDef] = field(default_factory=dict)
    ambiguous: frozenset[int] = frozenset()
    alias0: bool = False  # alias 0 is declared: a DATA metric's alias 0 may then be "no alias" (proto2 default)
    readable: bool = False  # some metric is a number that feeds a sensor
    last_ts: float = _NO_TS  # the newest live reading's timestamp: a death silences the sensors just after it
    shapes: list[DataShape] = field(default_factory=list)  # DATA layouts read without protobuf, newest first
    slow_reads: int = 0  # DATA messages read through protobuf
    shape_tries: int = 0

    def __len__(self) -> int:
        return len(self.by_name)


class SeqTracker:
    """An edge node's ``seq``: which numbers are missing, and since when.

    >>> t = SeqTracker(); t.reset(0)
    >>> t.observe(1, now=0.0), t.observe(4, now=0.0), sorted(t.missing)
    ('ok', 'skip', [2, 3])
    >>> t.observe(2, now=1.0), t.expired(now=1.5, timeout=2.0), t.expired(now=2.5, timeout=2.0)
    ('late', 0, 1)
    >>> t.observe(4, now=3.0)
    'stale'
    """

    __slots__ = ("expected", "missing")

    def __init__(self) -> None:
        self.expected: int | None = None
        self.missing: dict[int, float] = {}  # seq -> when its absence was noticed

    def reset(self, seq: int) -> None:
        self.expected = (seq + 1) % _SEQ_SPACE
        self.missing.clear()

    def observe(self, seq: int, now: float) -> str:
        """``ok`` (the next one), ``late`` (a missing one arrived), ``skip`` (some are missing) or ``stale``."""
        expected = self.expected
        if expected is None or seq == expected:
            self.expected = (seq + 1) % _SEQ_SPACE
            return "ok"
        if self.missing.pop(seq, None) is not None:
            return "late"
        ahead = (seq - expected) % _SEQ_SPACE
        if ahead >= _SEQ_SPACE // 2:
            return "stale"  # behind: a repeat, or older than anything still awaited
        for k in range(ahead):
            self.missing[(expected + k) % _SEQ_SPACE] = now
        self.expected = (seq + 1) % _SEQ_SPACE
        return "skip"

    def expired(self, now: float, timeout: float) -> int:
        """How many missing numbers waited past ``timeout`` (they are forgotten: one gap each time)."""
        if not self.missing:
            return 0
        gone = [s for s, since in self.missing.items() if now - since >= timeout]
        for s in gone:
            del self.missing[s]
        return len(gone)


class Node:
    """One edge node: its current session (``bdSeq``), births, ``seq`` and how often it births."""

    __slots__ = ("group", "node", "bdseq", "birth", "devices", "seq", "births", "muted_until", "last_rebirth",
                 "alive", "too_big", "refusals")

    def __init__(self, group: str, node: str):
        self.group = group
        self.node = node
        self.bdseq: int | None = None
        self.birth: Birth | None = None
        self.devices: dict[str, Birth] = {}
        self.seq = SeqTracker()
        self.births: deque[float] = deque()
        self.muted_until = 0.0
        self.last_rebirth = -math.inf
        self.alive = False
        self.too_big: set[str | None] = set()  # whose births stand refused for their size (None: the node's)
        self.refusals = 0  # births refused for their size since none stood refused: the backoff's exponent

    def metrics(self) -> int:
        return (len(self.birth) if self.birth is not None else 0) + sum(len(d) for d in self.devices.values())


class Outcome:
    """What one message meant: readings and dead letters to store, nodes to ask for a rebirth, and the
    ``(asset, sensor)`` a death silenced."""

    __slots__ = ("readings", "dead", "rebirths", "silenced")

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.dead: list = []
        self.rebirths: list[tuple[str, str]] = []  # (group, node)
        self.silenced: list[tuple[str, str]] = []


class AssetMap:
    """``<group>/<edge node>[/<device>]`` and a metric name to asset and sensor, by the configured rules."""

    def __init__(self, rules: tuple[MappingRule, ...], node_asset: str, ignore: tuple[str, ...]):
        self.rules = [(_glob(r.group), _glob(r.node), _glob(r.device) if r.device else None, r) for r in rules]
        self.node_asset = node_asset
        self._ignore = re.compile("|".join(fnmatch.translate(p) for p in ignore)) if ignore else None

    def rule(self, group: str, node: str, device: str | None) -> tuple[str, str]:
        """``(asset template, sensor template)`` for a node (``device`` None) or a device."""
        for g, n, d, r in self.rules:
            if g(group) and n(node) and ((device is None) == (d is None)) and (d is None or d(device)):
                return r.asset, r.sensor
        return (self.node_asset if device is None else "{device}"), "{metric}"

    def asset(self, template: str, group: str, node: str, device: str | None) -> str:
        return template.format(group=group, node=node, device=device or "")

    def sensor(self, template: str, metric: str, group: str, node: str, device: str | None) -> str | None:
        if self._ignore is not None and self._ignore.match(metric):
            return None
        if template == "{metric}":
            return metric
        return template.format(metric=metric, leaf=metric.rsplit("/", 1)[-1], group=group, node=node,
                               device=device or "")


def _glob(pattern: str) -> Callable[[str], bool]:
    if pattern == "*":
        return lambda name: True
    rx = re.compile(fnmatch.translate(pattern))
    return lambda name: rx.match(name) is not None


class SparkplugHost:
    """The host application's state of every edge node it reads (see the module doc). One thread."""

    def __init__(self, cfg: SparkplugInputConfig, *, source: str = "sparkplug", admission: Admission | None = None,
                 value_range: ValueRange | None = None, known_sensors: Collection[str] = (),
                 observe_ts: Callable[[str, float], float] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.source = source
        self.admission = admission or Admission(cfg.assets, cfg.max_assets, cfg.max_sensors_per_asset,
                                                cfg.asset_idle_s)
        self.value_range = value_range or ValueRange(cfg.max_abs_value, cfg.ranges)
        self.known = frozenset(known_sensors)
        self._observe_ts = observe_ts
        self._clock = clock
        self.map = AssetMap(cfg.rules, cfg.node_asset, cfg.ignore_metrics)
        self.nodes: dict[tuple[str, str], Node] = {}
        self.cached_metrics = 0
        self.counters = Counters()
        self.rebirths_by_reason = Counters()
        self.ignored_by_type = Counters()
        self._requests: deque[float] = deque()  # when rebirth requests went out, for the global bound
        self._topics: dict[str, Topic] = {}  # parsed topics: a plant's are few and repeat

    # -- one message ----------------------------------------------------------

    def handle(self, topic: str, payload: bytes, now: float) -> Outcome:
        """Take one message (``now``: the gateway's wall time, for timestamps the payload leaves out)."""
        out = Outcome()
        t = self._topics.get(topic)
        if t is None:
            try:
                t = parse_topic(topic)
            except TopicError as e:
                out.dead.append(self._dead(topic, payload, now, DeadLetterCode.BAD_TOPIC, str(e)))
                return out
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()  # a publisher inventing topics costs parsing, never memory
            self._topics[topic] = t
        if t.kind in (MessageType.STATE, MessageType.NCMD, MessageType.DCMD):
            self.counters.inc("commands_seen")  # other hosts' state and commands: not ours to read
            return out
        if t.kind in _DATA_KINDS and self._fast_data(t, topic, payload, now, out):
            return out
        try:
            p = Payload.FromString(payload)
        except (DecodeError, ValueError) as e:
            why = f"{t.kind.value} payload is not a Sparkplug B protobuf: {e or type(e).__name__}"
            out.dead.append(self._dead(topic, payload, now, DeadLetterCode.BAD_PROTOBUF, why))
            return out
        if p.uuid == COMPRESSED_UUID:
            p = self._inflated(t, p, topic, payload, now, out)
            if p is None:
                return out
        mono = self._clock()
        node = self._node(t.group, t.node)
        if node is None:
            return out
        if t.kind is MessageType.NDEATH:
            self._ndeath(node, p, now, out)
            return out
        if mono < node.muted_until:
            self.counters.inc("muted_messages")
            return out
        if t.kind is MessageType.NBIRTH:
            self._nbirth(node, p, topic, payload, now, mono, out)
            return out
        if not node.alive:
            self._before_birth(node, out, mono)
            return out
        self._sequence(node, p.seq if p.HasField("seq") else None, mono, out)
        if t.kind is MessageType.DBIRTH:
            self._dbirth(node, t.device, p, topic, payload, now, out)
        elif t.kind is MessageType.DDEATH:
            self._ddeath(node, t.device, out)
        elif t.kind is MessageType.NDATA:
            self._data(node, None, node.birth, p, topic, payload, now, mono, out)
        else:
            self._data(node, t.device, node.devices.get(t.device), p, topic, payload, now, mono, out)
        return out

    def _inflated(self, t: Topic, p, topic: str, payload: bytes, now: float, out: Outcome):
        """The payload a compressed one carries (``connections/sparkplug/compression.py``), inflated no
        further than ``max_payload_bytes``; None once dead-lettered (too large, corrupt, or compressed twice)."""
        self.counters.inc("compressed_payloads")
        try:
            inner = Payload.FromString(inflate(p, self.cfg.max_payload_bytes))
            if inner.uuid == COMPRESSED_UUID:
                raise CompressionError("a compressed payload inside a compressed payload")
            return inner
        except CompressionError as e:
            code = DeadLetterCode.TOO_LARGE if e.too_large else DeadLetterCode.BAD_PROTOBUF
            why = f"{t.kind.value} compressed payload: {e} (max_payload_bytes)" if e.too_large else \
                f"{t.kind.value} compressed payload: {e}"
        except (DecodeError, ValueError) as e:
            code, why = DeadLetterCode.BAD_PROTOBUF, (f"{t.kind.value} compressed payload's body is not a Sparkplug "
                                                      f"B protobuf: {e or type(e).__name__}")
        out.dead.append(self._dead(topic, payload, now, code, why))
        return None

    def tick(self) -> Outcome:
        """Missing ``seq`` numbers whose reorder wait is over: the nodes to ask for a rebirth (call ~1/s)."""
        mono = self._clock()
        out = Outcome()
        for node in self.nodes.values():
            if node.seq.missing:
                self._gaps(node, mono, out)
        return out

    # -- nodes, births, deaths --------------------------------------------------

    def _node(self, group: str, name: str) -> Node | None:
        node = self.nodes.get((group, name))
        if node is None:
            if len(self.nodes) >= self.cfg.max_nodes:
                self.counters.inc("nodes_refused")
                return None
            node = self.nodes[(group, name)] = Node(group, name)
        return node

    def _nbirth(self, node: Node, p, topic: str, payload: bytes, now: float, mono: float, out: Outcome) -> None:
        self.counters.inc("births")
        if self._birth_flood(node, mono):
            self._kill(node, out, devices=True)
            node.alive = False
            node.muted_until = mono + 60.0
            self.counters.inc("births_over_rate")
            log.warning("sparkplug birth_flood group=%s node=%s births_per_min=%d: not read for 60 s",
                        node.group, node.node, len(node.births))
            return
        bdseq = _bdseq(p)
        if node.alive and node.bdseq is not None and bdseq is not None and bdseq != node.bdseq:
            # The old session ended without a death we saw (its will lost, or yet to come): it died.
            self.counters.inc("deaths_implied")
            self._kill(node, out, devices=True)
        else:
            # A rebirth of the same session: values go on; the devices birth again right after.
            self._drop(node, devices=True)
        node.bdseq = bdseq
        node.seq.reset(p.seq if p.HasField("seq") else 0)
        birth = self._birth(node, None, p, topic, payload, now, out)
        node.birth = birth
        node.alive = birth is not None
        if birth is not None:
            self._data_metrics(node, None, birth, p, topic, payload, now, out)

    def _dbirth(self, node: Node, device: str, p, topic: str, payload: bytes, now: float, out: Outcome) -> None:
        self.counters.inc("device_births")
        old = node.devices.pop(device, None)
        if old is not None:
            self.cached_metrics -= len(old)
        birth = self._birth(node, device, p, topic, payload, now, out)
        if birth is not None:
            node.devices[device] = birth
            self._data_metrics(node, device, birth, p, topic, payload, now, out)

    def _birth(self, node: Node, device: str | None, p, topic: str, payload: bytes, now: float,
               out: Outcome) -> Birth | None:
        n = len(p.metrics)
        cfg = self.cfg
        if n > cfg.max_metrics_per_birth:
            why = f"a birth with {n} metrics; the limit is {cfg.max_metrics_per_birth} (max_metrics_per_birth)"
        elif self.cached_metrics + n > cfg.max_cached_metrics:
            why = (f"the birth cache holds {self.cached_metrics} metrics; {n} more would pass "
                   f"{cfg.max_cached_metrics} (max_cached_metrics)")
        else:
            why = None
        if why is not None:
            self.counters.inc("births_refused")
            self._refused_for_size(node, device)
            out.dead.append(self._dead(topic, payload, now, DeadLetterCode.BAD_BIRTH, why))
            return None
        if node.too_big:
            self._birth_taken(node, device)
        asset_t, sensor_t = self.map.rule(node.group, node.node, device)
        asset = self.map.asset(asset_t, node.group, node.node, device)
        birth = Birth(asset)
        seen_alias: dict[int, int] = {}
        g, nn, amap, vr = node.group, node.node, self.map, self.value_range
        for m in p.metrics:
            name = m.name
            if not name:
                continue  # a birth names every metric; one without a name cannot be resolved later
            d = MetricDef(name, m.datatype, amap.sensor(sensor_t, name, g, nn, device))
            d.field = VALUE_FIELD.get(d.datatype)
            d.bits = signed_bits(d.datatype)
            if d.sensor is not None:
                d.lo, d.hi = vr.bounds(asset, d.sensor)
            birth.by_name[name] = d
            if m.HasField("alias"):
                a = m.alias
                seen_alias[a] = seen_alias.get(a, 0) + 1
                birth.by_alias[a] = d
        birth.alias0 = 0 in seen_alias
        birth.readable = any(d.sensor is not None and d.field is not None for d in birth.by_name.values())
        clashes = frozenset(a for a, k in seen_alias.items() if k > 1)
        if clashes:
            for a in clashes:
                del birth.by_alias[a]
            birth.ambiguous = clashes
            self.counters.inc("alias_collisions", len(clashes))
            shown = ", ".join(str(a) for a in sorted(clashes)[:5])
            out.dead.append(self._dead(topic, payload, now, DeadLetterCode.BAD_BIRTH,
                                       f"{len(clashes)} aliases declared by more than one metric ({shown}"
                                       f"{', ...' if len(clashes) > 5 else ''}): DATA using them is ignored"))
        self.cached_metrics += len(birth)
        return birth

    def _ndeath(self, node: Node, p, now: float, out: Outcome) -> None:
        bdseq = _bdseq(p)
        if bdseq is not None and node.bdseq is not None and bdseq != node.bdseq:
            self.counters.inc("stale_deaths")  # an older session's will, arriving after the new birth
            return
        self.counters.inc("deaths")
        self._kill(node, out, devices=True)
        node.alive = False
        node.too_big.clear()  # its next session births afresh
        node.refusals = 0

    def _ddeath(self, node: Node, device: str, out: Outcome) -> None:
        self.counters.inc("device_deaths")
        birth = node.devices.pop(device, None)
        if birth is not None:
            self.cached_metrics -= len(birth)
            self._silence(birth, out)

    def _kill(self, node: Node, out: Outcome, devices: bool) -> None:
        """The node (and its devices) died: their sensors go silent, their births are forgotten."""
        for birth in ([node.birth] if node.birth is not None else []) + list(node.devices.values()):
            self._silence(birth, out)
        self._drop(node, devices)

    def _drop(self, node: Node, devices: bool) -> None:
        if node.birth is not None:
            self.cached_metrics -= len(node.birth)
            node.birth = None
        if devices:
            self.cached_metrics -= sum(len(d) for d in node.devices.values())
            node.devices.clear()

    def _silence(self, birth: Birth, out: Outcome) -> None:
        """Each sensor that gave a reading: a valueless bad one just after the newest, and silent."""
        if not birth.asset or birth.last_ts == _NO_TS:
            return
        at = birth.last_ts + DEATH_OFFSET_S
        for d in birth.by_name.values():
            if d.known:
                out.readings.append(Reading(birth.asset, d.sensor, at, math.nan, Quality.BAD, self.source))
                out.silenced.append((birth.asset, d.sensor))
                self.counters.inc("sensors_silenced")
        birth.last_ts = _NO_TS

    def _birth_flood(self, node: Node, mono: float) -> bool:
        births = node.births
        births.append(mono)
        while births and mono - births[0] > 60.0:
            births.popleft()
        return len(births) > self.cfg.max_births_per_min

    # -- sequence and rebirth requests -------------------------------------------

    def _sequence(self, node: Node, seq: int | None, mono: float, out: Outcome) -> None:
        if seq is None:
            return
        verdict = node.seq.observe(seq % _SEQ_SPACE, mono)
        if verdict != "ok":
            self.counters.inc(f"seq_{verdict}")
        if verdict == "skip" and self.cfg.reorder_timeout_s == 0:
            self._gaps(node, mono, out)

    def _gaps(self, node: Node, mono: float, out: Outcome) -> None:
        lost = node.seq.expired(mono, self.cfg.reorder_timeout_s)
        if lost:
            self.counters.inc("seq_gaps")
            self.counters.inc("seq_lost", lost)
            self._request_rebirth(node, "seq_gap", mono, out)

    def _before_birth(self, node: Node, out: Outcome, mono: float) -> None:
        self.counters.inc("before_birth")
        self._request_rebirth(node, "data_before_birth", mono, out)

    def _refused_for_size(self, node: Node, device: str | None) -> None:
        """A birth of ``node`` (or of its ``device``) refused for its size: its rebirth requests back off."""
        if len(node.too_big) < TOO_BIG_MAX:
            node.too_big.add(device)
        node.refusals += 1

    def birth_too_large(self, topic: str) -> None:
        """The session refused a message on ``topic`` for its size (over ``max_payload_bytes``, from its MQTT header
        or once read): a birth's backs off its node's rebirth requests; anything else is no birth."""
        try:
            t = parse_topic(topic)
        except TopicError:
            return
        if t.kind in (MessageType.NBIRTH, MessageType.DBIRTH):
            node = self._node(t.group, t.node)
            if node is not None:
                self._refused_for_size(node, t.device)

    def _birth_taken(self, node: Node, device: str | None) -> None:
        node.too_big.discard(device)
        if not node.too_big:
            node.refusals = 0

    def _rebirth_wait(self, node: Node) -> float:
        """How long after its last rebirth request the node may be asked again: ``rebirth_interval_s``, doubled
        for each birth refused for its size after the first, up to ``max_rebirth_backoff_s``."""
        cfg = self.cfg
        if not node.too_big:
            return cfg.rebirth_interval_s
        doubled = cfg.rebirth_interval_s * 2.0 ** min(node.refusals - 1, 40)
        return max(cfg.rebirth_interval_s, min(doubled, cfg.max_rebirth_backoff_s))

    def _request_rebirth(self, node: Node, reason: str, mono: float, out: Outcome) -> None:
        """Ask the node to rebirth, unless asked too recently (it, or all nodes together)."""
        cfg = self.cfg
        since = mono - node.last_rebirth
        if since < cfg.rebirth_interval_s or (node.group, node.node) in out.rebirths:
            self.counters.inc("rebirths_held")
            return
        if since < self._rebirth_wait(node):
            self.counters.inc("rebirths_backed_off")
            return
        req = self._requests
        while req and mono - req[0] >= 60.0:
            req.popleft()
        if len(req) >= cfg.max_rebirths_per_min:
            self.counters.inc("rebirths_held")
            return
        req.append(mono)
        node.last_rebirth = mono
        self.counters.inc("rebirth_requests")
        self.rebirths_by_reason.inc(reason)
        out.rebirths.append((node.group, node.node))

    # -- data ---------------------------------------------------------------------

    def _data(self, node: Node, device: str | None, birth: Birth | None, p, topic: str, payload: bytes,
              now: float, mono: float, out: Outcome) -> None:
        if birth is None:
            self._before_birth(node, out, mono)
            return
        if self._data_metrics(node, device, birth, p, topic, payload, now, out):
            self._request_rebirth(node, "unknown_alias", mono, out)
        elif birth.readable:
            self._learn_shape(birth, payload)

    def _fast_data(self, t: Topic, topic: str, payload: bytes, now: float, out: Outcome) -> bool:
        """A DATA message of a layout its birth learned (``shape.py``), read from its bytes: True once read;
        False for anything else (no such node, device or layout): protobuf reads it, as before."""
        node = self.nodes.get((t.group, t.node))
        if node is None or not node.alive:
            return False
        birth = node.birth if t.kind is MessageType.NDATA else node.devices.get(t.device)
        if birth is None or not birth.shapes:
            return False
        for shape in birth.shapes:
            read = shape.read(payload)
            if read is not None:
                break
        else:
            return False
        mono = self._clock()
        if mono < node.muted_until:
            return False
        ts_ms, seq, items = read
        self._sequence(node, seq, mono, out)
        asset = self._admitted(birth, topic, payload, now, out)
        if asset is not None:
            self._readings(birth, asset, ts_ms, items, topic, payload, now, out)
        return True

    def _learn_shape(self, birth: Birth, payload: bytes) -> None:
        """After a DATA message was read through protobuf: learn its layout, at a bounded rate."""
        birth.slow_reads += 1
        if birth.slow_reads < birth.shape_tries * SHAPE_LEARN_EVERY:
            return
        birth.shape_tries += 1
        shape = DataShape.learn(payload, birth.by_alias)
        if shape is not None:
            birth.shapes = [shape, *birth.shapes[:MAX_SHAPES - 1]]
            self.counters.inc("data_shapes_learned")

    def _admitted(self, birth: Birth, topic: str, payload: bytes, now: float, out: Outcome) -> str | None:
        """The asset of a birth's readings, if it can have any and the admission lets it in."""
        asset = birth.asset
        if not asset or not birth.readable:
            return None  # nothing in it can be a reading (a node's control metrics): no asset to admit
        why = self.admission.asset(asset)  # also tells the admission the asset is alive
        if why is not None:
            self.counters.inc("unadmitted_messages")
            out.dead.append(self._dead(topic, payload, now, DeadLetterCode.UNKNOWN_ASSET, why))
            return None
        return asset

    def _data_metrics(self, node: Node, device: str | None, birth: Birth, p, topic: str, payload: bytes,
                      now: float, out: Outcome) -> bool:
        """The readings of a birth's or DATA's metrics, read through protobuf; True when an alias was not known.

        What can be worked out at the birth was (:class:`MetricDef`), and a metric that needs a closer
        look (no alias, a value in another field, properties) leaves the common path for the slow one.
        """
        asset = self._admitted(birth, topic, payload, now, out)
        if asset is None:
            return False
        by_alias, alias0 = birth.by_alias, birth.alias0
        items: list[tuple[MetricDef, float, int, bool, int | None]] = []
        unknown_alias = False
        for m in p.metrics:
            d = by_alias.get(m.alias)
            if d is None or (alias0 and not m.alias and not m.HasField("alias")):
                d = self._resolve(birth, m)
                if d is None:
                    unknown_alias = unknown_alias or not (m.HasField("alias") and m.alias in birth.ambiguous)
                    continue
            if d.known is not True and not self._usable(asset, d):
                continue
            kind = m.WhichOneof("value")
            if kind is not None and kind == d.field:  # a null metric carries no value: the slow path
                raw = getattr(m, kind)
                bits = d.bits
                value = raw if bits < 0 else float(raw) if bits == 0 else float(twos_complement(raw, bits))
            else:
                value = value_as(m, d.datatype)  # null, or a value in another field than the datatype's
                if value is None:
                    self.ignored_by_type.inc(_type_name(d.datatype))
                    continue
            items.append((d, value, m.timestamp, m.is_historical,
                          quality_of(m) if m.HasField("properties") else None))
        self._readings(birth, asset, p.timestamp, items, topic, payload, now, out)
        return unknown_alias

    def _readings(self, birth: Birth, asset: str, ts_ms: int | None, items, topic: str, payload: bytes,
                  now: float, out: Outcome) -> None:
        """Readings of the metrics of one message, ``(def, value, timestamp ms, historical, quality code)``
        each (a timestamp 0 or None: the message's, else arrival; a quality code None: good): bounds checked,
        refusals dead-lettered (one letter per reason), the birth's newest live timestamp kept.

        The hot path of the input (a plant's DATA, eight metrics a message in the benchmark).
        """
        base_ts = ts_ms / 1000.0 if ts_ms else now
        readings = out.readings
        source = self.source
        min_ts = self.cfg.min_timestamp
        limit: float | None = None  # the latest live timestamp accepted, once a live metric asks
        bag: DeadLetterBag | None = None
        good = Quality.GOOD
        newest = _NO_TS  # the newest live reading of this message: where a death would silence them
        for d, value, mts, historical, code in items:
            ts = mts / 1000.0 if mts else base_ts
            if not historical and limit is None:
                live_now = self._observe_ts(asset, ts) if self._observe_ts is not None else now
                limit = live_now + self.cfg.max_future_skew_s
            quality = good
            if not (d.lo <= value <= d.hi and ts >= min_ts and (historical or ts <= limit)):
                refused = self._refusal(asset, d, value, ts, historical, limit)
                if refused is not None:
                    if bag is None:
                        bag = DeadLetterBag(topic, payload, now)
                    bag.add(refused[0], refused[1], subject=d.name)
                    continue
                quality = Quality.BAD  # NaN: a null metric, a value that is missing
            elif code is not None:
                quality = quality_from_code(code)
            readings.append(new_reading(asset, d.sensor, ts, value, quality, source, historical))
            if not historical and ts > newest:
                newest = ts
        if newest > birth.last_ts:
            birth.last_ts = newest
        if bag:
            out.dead.extend(bag.letters())

    def _resolve(self, birth: Birth, m) -> MetricDef | None:
        """A metric that is not found by its alias: by its name, else counted (unknown or ambiguous alias)."""
        if m.HasField("alias"):
            d = birth.by_alias.get(m.alias)
            if d is not None:
                return d
        d = birth.by_name.get(m.name) if m.name else None
        if d is None:
            ambiguous = m.HasField("alias") and m.alias in birth.ambiguous
            self.counters.inc("ambiguous_alias" if ambiguous else "unknown_alias")
        return d

    def _usable(self, asset: str, d: MetricDef) -> bool:
        """Whether the metric gives readings: a sensor, a number, one the model (or the slots) knows."""
        if d.sensor is None:
            return False  # a control or info metric (ignore_metrics)
        if d.field is None:
            self.ignored_by_type.inc(_type_name(d.datatype))
            return False
        if d.known is None:
            d.known = d.sensor in (self.known or self.admission.sensors(asset))
        if not d.known:
            self.counters.inc("unknown_sensor")
        return d.known

    def _refusal(self, asset: str, d: MetricDef, value: float, ts: float, historical: bool,
                 limit: float | None) -> tuple[DeadLetterCode, str] | None:
        """Why a value that left the common path is refused, or None (a null metric: a missing value)."""
        name = clip(d.name, 60)
        if not (ts >= self.cfg.min_timestamp):
            return DeadLetterCode.TS_TOO_OLD, f"metric {name!r}: timestamp {ts:.3f} is before min_timestamp"
        if not historical and limit is not None and ts > limit:
            ahead = ts - (limit - self.cfg.max_future_skew_s)
            return DeadLetterCode.TS_IN_FUTURE, f"metric {name!r}: timestamp {ts:.3f} is {ahead:.0f} s ahead of " \
                                                "the gateway's clock"
        if value != value:
            return None
        outside = self.value_range.check(asset, d.sensor, value)
        return None if outside is None else (DeadLetterCode.OUT_OF_RANGE, f"metric {name!r}: {outside}")

    def _dead(self, topic: str, payload: bytes, now: float, code: DeadLetterCode, why: str):
        return dead_letter(topic, payload, code, why, now)

    # -- status --------------------------------------------------------------------

    def status(self, top: int = 10) -> dict:
        nodes = list(self.nodes.values())
        busiest = sorted(nodes, key=lambda n: -len(n.births))[:top]
        return {
            **dict(self.counters.values),
            "rebirth_requests_by_reason": dict(self.rebirths_by_reason.values),
            "ignored_non_numeric": dict(self.ignored_by_type.values),
            "nodes": len(nodes),
            "nodes_online": sum(n.alive for n in nodes),
            "devices_online": sum(len(n.devices) for n in nodes if n.alive),
            "cached_metrics": self.cached_metrics,
            "offline": [f"{n.group}/{n.node}" for n in nodes if not n.alive][:top],
            "births_last_min": {f"{n.group}/{n.node}": len(n.births) for n in busiest if n.births},
        }


def _bdseq(p) -> int | None:
    for m in p.metrics:
        if m.name == "bdSeq":
            field_name = m.WhichOneof("value")
            if field_name in ("int_value", "long_value"):
                return int(getattr(m, field_name))
    return None


def _type_name(datatype: int) -> str:
    try:
        return DataType(datatype).name
    except ValueError:
        return f"type_{datatype}"
