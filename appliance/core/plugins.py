"""The two interfaces every plugin implements: :class:`Input` and :class:`Output`.

An input (MQTT, OPC-UA) turns a protocol into :class:`~appliance.core.Reading`
records and hands them to an :class:`IngestSink`. An output (the store, InfluxDB
history, the MQTT alarm notifier, PLC mitigation) receives what the detection
path produced through a handful of ``on_*`` hooks. The runtime calls the hooks
on its one event loop, so a hook must return at once: an output that talks to
disk or network queues the work (its own thread, or a task through
:class:`OutputContext`). A hook an output does not override costs nothing: the
runtime only calls the ones that are overridden.

Plugins are listed in :mod:`appliance.registry`; each is a folder with its code,
its config section and a README.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Collection, Coroutine, Mapping, Protocol, Sequence

from appliance.core.detector import Detector
from appliance.core.timebase import GatewayClock
from appliance.core.records import (Alarm, AlarmEvent, DeadLetter, MitigationAction, ModeChange, ModelChange,
                                    OperatingPointChange, Reading, Score)

AckCallback = Callable[[], None]


class PluginError(RuntimeError):
    """A plugin cannot run as configured; the message is one line naming the key and the reason."""


class IngestSink(Protocol):
    """Where inputs hand what they received. Must be safe to call from any thread.

    ``on_stored`` is called once everything in the batch is durably stored; an
    input uses it to acknowledge the message to its source (MQTT PUBACK), so a
    crash before that point means the source delivers again.
    """

    def submit(self, readings: Sequence[Reading], dead_letters: Sequence[DeadLetter] = (),
               on_stored: AckCallback | None = None) -> None: ...


class Input(abc.ABC):
    """An input plugin: start delivering to a sink, stop, report. ``start`` and ``stop`` are required."""

    name: str = "input"

    @abc.abstractmethod
    async def start(self, sink: IngestSink) -> None:
        """Begin delivering readings; returns once started (not necessarily connected)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop delivering and release the connection."""

    def asset_proven(self, asset: str) -> None:
        """``asset`` produced a complete window or has an alarm (any thread): an input bounding assets keeps it."""

    def evicted_assets(self) -> list[str]:
        """Assets this input stopped admitting since the last call, whose state downstream can go."""
        return []

    def silenced(self) -> list[tuple[str, str]]:
        """``(asset, sensor)`` its source declared gone since the last call (a Sparkplug death): the
        watchdog reports them silent at once, not after ``silence_s``."""
        return []

    def ready(self) -> bool:
        """True once connected and receiving (MQTT: every subscription acknowledged)."""
        return True

    def status(self) -> dict:
        """Counters and connection state for the status API."""
        return {}


class ModelDesk(Protocol):
    """What an output may ask of the model's lifecycle (:mod:`appliance.lifecycle`): the sync hands it
    verified candidates and reports every update pass, refusals included."""

    def begin_shadow(self, candidate: Detector, bounds: Any, user: str = "appliance") -> None:
        """Run ``candidate`` in shadow; raises ValueError with the reason if it cannot run."""
        ...

    async def consider(self, candidate: Detector, bounds: Any, history: Any = None, user: str = "appliance") -> None:
        """Back-test ``candidate`` on the labelled history (``history``: the bounds), then run it in shadow;
        raises ValueError with the one-line reason if it is refused."""
        ...

    def note_update(self, outcome: str, line: str) -> None:
        """How an update pass ended (``installed``, ``up_to_date``, ``refused`` ...), as one line."""
        ...

    def note_refusal(self, reason: str, kind: str, stage: str) -> None:
        """A release was refused: by the updater before install, or after it (``stage``)."""
        ...


@dataclass(frozen=True)
class OutputContext:
    """What the runtime gives an output when it starts.

    ``open_alarm_ids``: alarms still open from before a restart. ``publish_action``
    hands a mitigation record to every output (the store's audit, history).
    ``spawn`` runs a coroutine as a background task that the runtime awaits on
    shutdown, so slow work (a PLC write) never sits on the detection path.
    ``models`` is the model's lifecycle (a :class:`ModelDesk`): a verified
    candidate goes to its shadow run, and every update and refusal is recorded there.
    """

    open_alarm_ids: frozenset[str]
    publish_action: Callable[[MitigationAction], None]
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    models: ModelDesk | None = None


Command = Callable[..., Awaitable[list]]


class Output:
    """An output plugin. Override the hooks it needs; each must return at once."""

    name: str = "output"

    async def start(self, ctx: OutputContext) -> None:
        """Open connections or threads; never waits for a far side to answer."""

    async def stop(self) -> None:
        """Flush what can be flushed and release resources."""

    def on_reading(self, reading: Reading) -> None:
        """A reading accepted from an input."""

    def on_dead_letter(self, dead: DeadLetter) -> None:
        """Input that could not be accepted."""

    def on_score(self, score: Score) -> None:
        """A window was scored."""

    def on_alarm_event(self, event: AlarmEvent) -> None:
        """An alarm occurrence changed (raised, escalated, cleared, acknowledged, superseded)."""

    def on_alarm_peak(self, alarm: Alarm) -> None:
        """The open alarm's peak rose (between events; frequent while a fault grows)."""

    def on_mode_change(self, change: ModeChange) -> None:
        """An alarm point was shelved, suppressed, taken out of or returned to service."""

    def on_action(self, action: MitigationAction) -> None:
        """A mitigation step (proposed, written, refused, reverted ...)."""

    def on_model_change(self, change: ModelChange) -> None:
        """The scoring model changed or a candidate was judged (shadow, promotion, rollback)."""

    def on_operating_point(self, change: OperatingPointChange) -> None:
        """An asset entered or left "operating point not seen in training" (a status, not an alarm)."""

    def commands(self) -> Mapping[str, Command]:
        """Operator commands this output answers (``approve_action`` ...), run on the event loop."""
        return {}

    def status(self) -> dict:
        """Counters and state for the status API (its section ``outputs.<name>``)."""
        return {}

    def metrics_text(self) -> bytes:
        """Prometheus text lines of its own for ``/metrics`` beside the status ones (history's outbox)."""
        return b""


HOOKS = ("on_reading", "on_dead_letter", "on_score", "on_alarm_event", "on_alarm_peak", "on_mode_change",
         "on_action", "on_model_change", "on_operating_point")


def overrides(output: Output, hook: str) -> bool:
    """True if ``output`` implements ``hook`` itself (the base's hooks do nothing)."""
    return getattr(type(output), hook) is not getattr(Output, hook)


@dataclass(frozen=True)
class PluginEnv:
    """What a plugin factory may use besides its own section.

    ``config`` is the whole validated configuration (for the shared
    ``connections``); ``data_dir`` resolves relative paths; ``sensors`` lists the
    model's sensors (an input may refuse others early); ``needs`` holds what the
    plugin's registry entry asked of outputs built before it (the fleet
    participant: the sync's connectivity ``windows``); ``clock`` is the gateway's
    :class:`~appliance.core.timebase.GatewayClock`, the one an input reads "now" from
    and shows its readings' timestamps to (None: the wall clock as it is);
    ``model_version`` is the version of the model the appliance starts scoring with
    (later ones arrive as :class:`~appliance.core.ModelChange`).
    """

    config: Any
    data_dir: Path
    sensors: Collection[str]
    needs: Mapping[str, Any] = field(default_factory=dict)
    clock: GatewayClock | None = None
    model_version: str = ""

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.data_dir / q
