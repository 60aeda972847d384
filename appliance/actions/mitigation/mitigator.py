"""Guarded PLC mitigation: alarm events in, audited setpoint writes out.

Rules map an alarm (asset, level, top contributing sensors) to one write (a
value, or a change of the current value) on one PLC node. Until
``mitigation.armed`` is true nothing is written: each proposal is evaluated as
a dry run against the live PLC and audited as ``advised``, with the guard that
*would* refuse it, so an engineer can watch what the appliance would do before
arming it.

Armed, every write passes these guards, in this order; the first that fails
refuses the write and is named in the audit record:

``alarm_state``  the alarm is shelved, suppressed or out of service
``allow_list``   the node is not among ``mitigation.targets``
``cooldown``     the node was written less than ``cooldown_s`` ago
``plc_read``     the current value and interlocks could not be read
``quality``      the node's current value is not of good quality
``interlock``    an interlock read just before the write is false or not good (the detail names it)
``limits``       the new value is outside the target's ``[min, max]``
``max_step``     the change exceeds ``max_step``
``max_rate``     the changes within the last 60 s would exceed ``max_rate_per_min``
``approval``     an engineer's approval is required (proposal pending) or expired
``readback``     after the write, the PLC does not hold the written value

The audit record's ``guard`` is one of these codes (:class:`Guard`), never more:
what the guard judged (which interlock, which values) is in ``detail``.

Then: the write, the read-back verification, and, if the rule says so, an
automatic revert (after ``revert_after_s`` or when the alarm clears). A revert
passes the same guards except cooldown, rate and approval, and is refused if
someone changed the value since our write (``changed_externally``): the
appliance never overwrites an operator. Replayed (historical) alarms never act.

A revert the appliance owes is stored (in the audit database, committed before
the write is reported) until it is decided, so a restart or a power loss does
not leave the PLC at a mitigated value for good: :meth:`Mitigator.resume`
re-arms the remaining ``revert_after_s`` time and reverts at once a
``revert_on_clear`` write whose alarm ended while the appliance was down.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import operator
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from appliance.actions.mitigation.audit import AuditLog
from appliance.actions.mitigation.config import MitigationConfig, MitigationInterlock, MitigationRule, MitigationTarget
from appliance.core import AlarmEvent, AlarmState, Counters, EventKind, Level, MitigationAction, Quality
from appliance.core.compat import StrEnum

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0
# An owed revert that could not read the PLC (after a power loss the PLC often comes back after
# the gateway) stays owed and is tried again, backing off up to the maximum.
REVERT_RETRY_S = 30.0
REVERT_RETRY_MAX_S = 900.0
_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}
_LEVELS = {"anomaly": Level.ANOMALY, "critical": Level.CRITICAL}
_BLOCKING_STATES = (AlarmState.SHELVED, AlarmState.SUPPRESSED, AlarmState.OUT_OF_SERVICE)


class PlcWriter(Protocol):
    """Where mitigations go. ``read`` returns ``(value, quality)`` per node, ``None`` if not numeric."""

    async def read(self, nodes: Sequence[str]) -> list[tuple[float | None, Quality]]: ...

    async def write(self, node: str, value: float) -> None: ...


class Guard(StrEnum):
    """Why a mitigation was not done: a stable code to count and filter by (the detail says the rest)."""

    ALARM_STATE = "alarm_state"
    ALLOW_LIST = "allow_list"
    COOLDOWN = "cooldown"
    PLC_READ = "plc_read"
    QUALITY = "quality"
    INTERLOCK = "interlock"
    LIMITS = "limits"
    MAX_STEP = "max_step"
    MAX_RATE = "max_rate"
    APPROVAL = "approval"
    READBACK = "readback"
    CHANGED_EXTERNALLY = "changed_externally"  # a revert: someone changed the value since our write
    ARMED = "armed"  # a revert owed from before a restart while mitigation is no longer armed


class MitigationError(Exception):
    """A command that does not apply (unknown proposal, already decided...)."""


@dataclass(slots=True)
class _Proposal:
    id: str
    rule: MitigationRule
    asset: str
    alarm_id: str | None
    reason: str
    created_mono: float
    expires_mono: float = math.inf


@dataclass(slots=True)
class _Written:
    """A write the appliance made and may have to revert."""

    proposal: _Proposal
    node: str
    old: float
    new: float
    revert_task: asyncio.Task | None = None
    retries: int = 0
    owed_because: str = ""  # why the revert first came due, kept across retries


class _Refusal(Exception):
    """A guard said no: which guard (``code``), what it judged (``detail``) and the values."""

    def __init__(self, code: Guard, detail: str, old: float | None = None, new: float | None = None):
        super().__init__(f"{code.value}: {detail}")
        self.code, self.detail, self.old, self.new = code, detail, old, new


@dataclass(slots=True)
class _NodeHistory:
    last_write_mono: float | None = None
    changes: deque = field(default_factory=deque)  # (mono, abs change)


def _stand_in_rule(name: str, node: str, revert_on_clear: bool = False) -> MitigationRule:
    """For a rule removed from the config since a write or proposal was stored: its name and node
    for the audit, no interlocks of its own (the global ones still apply); never proposes anything."""
    return MitigationRule(name=name, node=node, set_value=0.0, revert_on_clear=revert_on_clear)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:g}"


class Mitigator:
    """Turns alarm events into guarded, audited PLC writes (or advice).

    ``plc_writer`` may be ``None`` when advise-only without a PLC connection;
    proposals are then audited without the dry-run evaluation.
    """

    def __init__(self, cfg: MitigationConfig, data_dir: str | Path, plc_writer: PlcWriter | None, *,
                 close_writer: bool = False):
        self.cfg = cfg
        self.writer = plc_writer
        self._close_writer = close_writer
        self.audit = AuditLog(Path(data_dir) / cfg.audit_db, cfg.audit_key, data_dir)
        # Checked once at start (it reads the whole log); `appliance audit verify` checks it on demand.
        self._chain_problem = self.audit.problem()
        if self._chain_problem:
            logger.error("mitigation %s", self._chain_problem)
        self.counters = Counters()
        self._targets: dict[str, MitigationTarget] = {t.node: t for t in cfg.targets}
        self._history: dict[str, _NodeHistory] = {}
        self._pending: dict[str, _Proposal] = {}
        self._written: dict[str, list[_Written]] = {}  # alarm id -> writes to revert
        self._lock = asyncio.Lock()
        self._closed = False
        # Starts as configured; an engineer may arm or disarm at run time (audited). Not kept
        # across a restart: a gateway comes back in the state its configuration says.
        self.armed = cfg.armed
        # Armed writes wait until every target's limits were found inside the range its PLC node
        # declares (EURange, or its data type's): a limit of 1e308 must never reach a valve.
        self._ranges_checked = False
        self.arm_refused: str | None = None
        for r in cfg.rules:
            if r.node not in self._targets:
                logger.warning("mitigation rule=%s node=%s is not in mitigation.targets; guard allow_list "
                               "will refuse every write it proposes", r.name, r.node)
        logger.info("mitigation ready armed=%s rules=%d targets=%d audit=%s",
                    cfg.armed, len(cfg.rules), len(cfg.targets), self.audit.path)

    # ------------------------------------------------------------------ public API

    async def on_alarm_event(self, event: AlarmEvent) -> list[MitigationAction]:
        """Act on one alarm transition; returns what was decided (also audited)."""
        if not self.cfg.enabled or self._closed:
            return []
        alarm = event.alarm
        if alarm.historical:
            return []
        records: list[MitigationAction] = []
        async with self._lock:
            records += await self._sweep_expired()
            if event.kind in (EventKind.CLEARED, EventKind.SUPERSEDED) or not alarm.active:
                records += await self._on_alarm_end(alarm.id, event.kind)
                return records
            if event.kind not in (EventKind.RAISED, EventKind.ESCALATED):
                return records
            for rule in self._matching_rules(alarm):
                p = _Proposal(id=uuid.uuid4().hex[:16], rule=rule, asset=alarm.asset, alarm_id=alarm.id,
                              reason=self._reason(event, rule), created_mono=time.monotonic())
                self.counters.inc("proposals")
                if alarm.state in _BLOCKING_STATES:
                    records.append(await self._record(p, "mitigate", "refused" if self.armed else "advised",
                                                      self.cfg.actor, rule.node, None, None, guard=Guard.ALARM_STATE,
                                                      detail=f"alarm is {alarm.state.value}"))
                    continue
                records.append(await self._execute(p, actor=self.cfg.actor, approved=False))
        return records

    async def approve(self, proposal_id: str, user: str, role: str = "engineer") -> MitigationAction:
        """A named user approves a pending proposal; all guards are evaluated again, now.

        ``role``: the approving user's role, as the audit record names it (the dashboard
        lets engineers approve)."""
        if not user or not user.strip():
            raise MitigationError("approval needs the name of the approving user")
        async with self._lock:
            await self._sweep_expired()
            p = await self._take_pending(proposal_id)
            if p is None:
                raise MitigationError(f"no pending proposal {proposal_id!r} (unknown, decided or expired)")
            user = user.strip()
            await self._record(p, "mitigate", "approved", user, p.rule.node, None, None,
                               detail=f"approved by {role or 'user'} {user}")
            return await self._execute(p, actor=user, approved=True)

    async def reject(self, proposal_id: str, user: str, note: str = "", role: str = "engineer") -> MitigationAction:
        if not user or not user.strip():
            raise MitigationError("rejection needs the name of the user")
        async with self._lock:
            await self._sweep_expired()
            p = await self._take_pending(proposal_id)
            if p is None:
                raise MitigationError(f"no pending proposal {proposal_id!r} (unknown, decided or expired)")
            return await self._record(p, "mitigate", "rejected", user.strip(), p.rule.node, None, None,
                                      detail=note or f"rejected by {role or 'user'} {user.strip()}")

    async def set_armed(self, armed: bool, user: str, note: str = "") -> MitigationAction:
        """Arm (guarded writes allowed) or disarm (advice only); audited in ``user``'s name.

        Arming is refused (:class:`MitigationError`) while a target's limits lie outside
        the range its PLC node declares."""
        async with self._lock:
            if armed:
                why = await self._ranges_refusal()
                if why is not None:
                    raise MitigationError(f"refused to arm: {why}")
            return await self._record_arming(armed, user, note)

    async def check_ranges(self) -> str | None:
        """At start: disarm (audited) if a target's limits lie outside the range its PLC node declares."""
        async with self._lock:
            return await self._disarm_unless_ranges_hold()

    async def _disarm_unless_ranges_hold(self) -> str | None:
        if not self.armed:
            return None
        why = await self._ranges_refusal()
        if why is not None:
            logger.error("mitigation refuses to arm: %s", why)
            await self._record_arming(False, self.cfg.actor, f"refused to arm: {why}")
        return why

    async def _ranges_refusal(self) -> str | None:
        """Why the targets' limits do not fit the ranges their PLC nodes declare, else None.

        A PLC that cannot be reached is no refusal: it is asked again before the next
        armed write (which it would refuse anyway)."""
        declared = getattr(self.writer, "declared_range", None)
        if self._ranges_checked or declared is None:
            return None
        problems = []
        try:
            for t in self.cfg.targets:
                rng = await declared(t.node)
                if rng is not None and (t.min < rng[0] or t.max > rng[1]):
                    problems.append(f"{t.node}: limits [{_fmt(t.min)}, {_fmt(t.max)}] are outside the range "
                                    f"the PLC declares for it [{_fmt(rng[0])}, {_fmt(rng[1])}]")
        except Exception as e:  # noqa: BLE001 - any PLC failure: not checked yet
            logger.warning("mitigation: the PLC's declared ranges could not be read yet: %r", e)
            return None
        self.arm_refused = "; ".join(problems) or None
        self._ranges_checked = not problems
        return self.arm_refused

    async def _record_arming(self, armed: bool, user: str, note: str) -> MitigationAction:
        """Arm or disarm, audited (the caller holds the lock)."""
        previous, self.armed = self.armed, bool(armed)
        kind = "arm" if self.armed else "disarm"
        rec = MitigationAction(proposal_id=f"{kind}-{uuid.uuid4().hex[:12]}", ts=time.time(), kind=kind,
                               status="armed" if self.armed else "disarmed", actor=user, rule="", asset="",
                               alarm_id=None, node="", old_value=float(previous), new_value=float(self.armed),
                               reason="operator", guard=None, detail=note, armed=self.armed)
        rec = await self._appended(rec)
        logger.warning("mitigation %s by user=%s (was armed=%s) note=%s", "armed" if self.armed else "disarmed",
                       user, previous, note)
        return rec

    def pending(self) -> list[dict]:
        now = time.monotonic()
        return [{"proposal_id": p.id, "rule": p.rule.name, "asset": p.asset, "alarm_id": p.alarm_id,
                 "node": p.rule.node, "reason": p.reason,
                 "expires_in_s": round(p.expires_mono - now, 1)} for p in self._pending.values()]

    def status(self) -> dict:
        return {
            "enabled": self.cfg.enabled,
            "armed": self.armed,
            "arm_refused": self.arm_refused,
            "rules": [r.name for r in self.cfg.rules],
            "targets": sorted(self._targets),
            "pending_approval": self.pending(),
            "pending_reverts": sum(1 for ws in self._written.values() for w in ws
                                   if w.revert_task is not None and not w.revert_task.done()),
            "counters": dict(self.counters.values),
            "audit_db": str(self.audit.path),
            "audit_chain": {"head": self.audit.head().text(), "keyed_from": self.audit.head().keyed_from,
                            "problem": self._chain_problem},
        }

    def audit_log(self, limit: int = 100) -> list[dict]:
        """Newest first."""
        return self.audit.tail(limit)

    async def resume(self, open_alarm_ids: Iterable[str]) -> list[MitigationAction]:
        """Take up what was left from before a restart (call once, after alarms are restored).

        A proposal that was waiting for approval waits again for the time it had
        left, if its rule still exists, its alarm is still open and mitigation is
        armed; otherwise it is audited as withdrawn (or expired).

        A ``revert_after_s`` timer continues with the time it had left (none
        left: reverted now); a ``revert_on_clear`` write whose alarm is no longer
        open is reverted now, else when that alarm ends. Every revert passes the
        usual revert guards, ``changed_externally`` included. If the rule was
        removed from the config meanwhile, the revert is still owed and done.
        Disarmed, nothing is written: each owed revert is audited as refused.
        """
        if not self.cfg.enabled or self._closed:
            return []
        owed = await asyncio.to_thread(self.audit.reverts_owed)
        open_ids, now, out = set(open_alarm_ids), time.time(), []
        rules = {r.name: r for r in self.cfg.rules}
        async with self._lock:
            out += await self._resume_approvals(open_ids, rules)
            out += await self._sweep_expired()
            for row in owed:
                rule = rules.get(row["rule"]) or _stand_in_rule(row["rule"], row["node"],
                                                                revert_on_clear=bool(row["revert_on_clear"]))
                p = _Proposal(id=row["proposal_id"], rule=rule, asset=row["asset"], alarm_id=row["alarm_id"],
                              reason=f"written before the restart at {row['written_at']:.0f}",
                              created_mono=time.monotonic())
                w = _Written(p, row["node"], row["old_value"], row["new_value"])
                if not self.armed:
                    out.append(await self._record(p, "revert", "refused", self.cfg.actor, w.node, w.new, w.old,
                                                  guard=Guard.ARMED, detail=f"mitigation is not armed; PLC left at "
                                                                        f"{_fmt(w.new)}"))
                    await asyncio.to_thread(self.audit.revert_settled, p.id)
                elif row["revert_on_clear"] and row["alarm_id"] not in open_ids:
                    out.append(await self._revert(w, "alarm ended while the appliance was down"))
                elif row["revert_at"] is not None and row["revert_at"] <= now:
                    out.append(await self._revert(w, "revert_after_s elapsed while the appliance was down"))
                else:
                    if row["revert_at"] is not None:
                        w.revert_task = asyncio.create_task(self._revert_later(w, row["revert_at"] - now))
                    self._track(w)
            if owed:
                logger.warning("mitigation resumed %d owed revert(s); %d decided now", len(owed), len(out))
        return out

    async def close(self) -> None:
        """Stop timers. A revert still owed stays stored and is taken up by :meth:`resume` at the next start."""
        self._closed = True
        tasks = []
        # Under the lock: a revert already writing finishes and is audited; only waiting timers are stopped.
        async with self._lock:
            for ws in self._written.values():
                for w in ws:
                    if w.revert_task is not None:
                        if w.revert_task.done():
                            continue
                        w.revert_task.cancel()
                        tasks.append(w.revert_task)
                    self._record_sync(w.proposal, "revert", "deferred", self.cfg.actor, w.node, w.new, w.old,
                                      detail=f"appliance stopping; PLC left at {_fmt(w.new)} until the "
                                             "revert is taken up at the next start")
        await asyncio.gather(*tasks, return_exceptions=True)
        self.audit.close()
        if self._close_writer and self.writer is not None and hasattr(self.writer, "close"):
            await self.writer.close()

    # ------------------------------------------------------------------ matching

    def _matching_rules(self, alarm) -> list[MitigationRule]:
        chosen: list[MitigationRule] = []
        nodes: set[str] = set()
        for r in self.cfg.rules:
            if not fnmatch.fnmatchcase(alarm.asset, r.asset):
                continue
            if alarm.level < _LEVELS[r.min_level]:
                continue
            if r.sensors and not set(alarm.top_sensors[:r.top_n]) & set(r.sensors):
                continue
            # Rules are in priority order: the first one for a node decides what it gets.
            if r.node in nodes:
                continue
            nodes.add(r.node)
            chosen.append(r)
        return chosen

    @staticmethod
    def _reason(event: AlarmEvent, rule: MitigationRule) -> str:
        a = event.alarm
        return (f"alarm {a.id} {event.kind}: asset {a.asset} level {a.level.name.lower()} "
                f"top sensors {', '.join(a.top_sensors) or '-'}; rule {rule.name}")

    # ------------------------------------------------------------------ guards

    async def _evaluate(self, p: _Proposal, approved: bool) -> tuple[float, float, MitigationTarget]:
        """Run every guard up to (not including) the write; raise :class:`_Refusal` on the first failure."""
        rule = p.rule
        target = self._targets.get(rule.node)
        if target is None:
            raise _Refusal(Guard.ALLOW_LIST, f"{rule.node} is not an allowed mitigation target")
        hist = self._history.get(rule.node)
        now = time.monotonic()
        if hist and hist.last_write_mono is not None and now - hist.last_write_mono < target.cooldown_s:
            raise _Refusal(Guard.COOLDOWN, f"{rule.node} was written {now - hist.last_write_mono:.1f}s ago; "
                                             f"cooldown is {target.cooldown_s:g}s")
        old, interlocks = await self._read_state(rule.node, list(self.cfg.interlocks) + list(rule.interlocks))
        new = rule.set_value if rule.set_value is not None else old + (rule.change_by or 0.0)
        self._check_interlocks(interlocks)
        self._check_limits(target, old, new)
        if target.max_rate_per_min is not None:
            moved = self._moved_recently(rule.node, now)
            if moved + abs(new - old) > target.max_rate_per_min + 1e-9:
                raise _Refusal(Guard.MAX_RATE, f"{rule.node} moved {moved:g} in the last {RATE_WINDOW_S:g}s; "
                                                 f"another {abs(new - old):g} exceeds {target.max_rate_per_min:g}/min",
                               old, new)
        need_approval = rule.require_approval if rule.require_approval is not None else self.cfg.require_approval
        if need_approval and not approved:
            raise _Refusal(Guard.APPROVAL, "an engineer's approval required", old, new)
        return old, new, target

    async def _read_state(self, node: str, interlocks: list[MitigationInterlock]):
        if self.writer is None:
            raise _Refusal(Guard.PLC_READ, "no PLC connection configured")
        nodes = [node] + [i.node for i in interlocks]
        try:
            values = await self.writer.read(nodes)
        except Exception as e:  # noqa: BLE001 - any failure to read means: do not write
            raise _Refusal(Guard.PLC_READ, f"reading {', '.join(nodes)} failed: {e}") from None
        old, q = values[0]
        if old is None or q is not Quality.GOOD or not math.isfinite(old):
            raise _Refusal(Guard.QUALITY, f"{node} reads {_fmt(old)} with quality {q.name}")
        return old, list(zip(interlocks, values[1:]))

    @staticmethod
    def _check_interlocks(interlocks) -> None:
        for il, (v, q) in interlocks:
            if v is None or q is not Quality.GOOD:
                raise _Refusal(Guard.INTERLOCK, f"{il.name}: {il.node} reads {_fmt(v)} with quality {q.name}")
            want = float(il.value)
            ok = (math.isclose(v, want, abs_tol=1e-9) if il.op == "==" else
                  not math.isclose(v, want, abs_tol=1e-9) if il.op == "!=" else _OPS[il.op](v, want))
            if not ok:
                raise _Refusal(Guard.INTERLOCK, f"{il.name}: {il.node} {il.op} {il.value} is false (reads {_fmt(v)})")

    @staticmethod
    def _check_limits(target: MitigationTarget, old: float, new: float) -> None:
        if not math.isfinite(new) or new < target.min or new > target.max:
            raise _Refusal(Guard.LIMITS, f"{_fmt(new)} is outside [{target.min:g}, {target.max:g}] for {target.node}",
                           old, new)
        if target.max_step is not None and abs(new - old) > target.max_step + 1e-9:
            raise _Refusal(Guard.MAX_STEP, f"change {_fmt(old)} -> {_fmt(new)} ({abs(new - old):g}) exceeds "
                                             f"max_step {target.max_step:g}", old, new)

    def _moved_recently(self, node: str, now: float) -> float:
        hist = self._history.get(node)
        if hist is None:
            return 0.0
        while hist.changes and now - hist.changes[0][0] > RATE_WINDOW_S:
            hist.changes.popleft()
        return sum(c for _, c in hist.changes)

    def _note_write(self, node: str, delta: float) -> None:
        hist = self._history.setdefault(node, _NodeHistory())
        now = time.monotonic()
        hist.last_write_mono = now
        hist.changes.append((now, abs(delta)))

    # ------------------------------------------------------------------ execution

    async def _execute(self, p: _Proposal, actor: str, approved: bool) -> MitigationAction:
        node = p.rule.node
        if self.armed and not self._ranges_checked:
            await self._disarm_unless_ranges_hold()
        armed = self.armed
        try:
            old, new, target = await self._evaluate(p, approved or not armed)
        except _Refusal as r:
            if not armed:
                self.counters.inc("advised")
                return await self._record(p, "mitigate", "advised", actor, node, r.old, r.new, guard=r.code,
                                          detail=f"advise-only; would be refused by {r.code.value}: {r.detail}")
            if r.code is Guard.APPROVAL:
                await self._hold(p, self.cfg.approval_timeout_s)
                self.counters.inc("pending_approval")
                return await self._record(p, "mitigate", "pending_approval", actor, node, r.old, r.new,
                                          guard=Guard.APPROVAL,
                                          detail=f"waiting for approval, expires in {self.cfg.approval_timeout_s:g}s")
            self.counters.inc("refused")
            self.counters.inc(f"refused_{r.code.value}")
            logger.warning("mitigation refused rule=%s node=%s guard=%s detail=%s", p.rule.name, node,
                           r.code.value, r.detail)
            return await self._record(p, "mitigate", "refused", actor, node, r.old, r.new, guard=r.code,
                                      detail=r.detail)
        if not armed:
            self.counters.inc("advised")
            need = p.rule.require_approval if p.rule.require_approval is not None else self.cfg.require_approval
            return await self._record(p, "mitigate", "advised", actor, node, old, new,
                                      detail="advise-only; would pass every guard"
                                             + (" and then wait for approval" if need else ""))
        if abs(new - old) <= target.tolerance:
            return await self._record(p, "mitigate", "unchanged", actor, node, old, new,
                                      detail="PLC already holds this value")
        rec = await self._write_verified(p, "mitigate", actor, target, old, new)
        if rec.status == "written":
            await self._remember(p, node, old, new)
        return rec

    async def _write_verified(self, p: _Proposal, kind: str, actor: str, target: MitigationTarget,
                              old: float, new: float) -> MitigationAction:
        node = target.node
        try:
            await self.writer.write(node, new)  # type: ignore[union-attr] - checked in _read_state
        except Exception as e:  # noqa: BLE001
            # It may have landed anyway: count it for cooldown and rate.
            self._note_write(node, new - old)
            self.counters.inc("write_failed")
            logger.error("mitigation write failed node=%s value=%s error=%s", node, new, e)
            return await self._record(p, kind, "failed", actor, node, old, new, detail=f"write failed: {e}")
        self._note_write(node, new - old)
        if self.cfg.readback_delay_s:
            await asyncio.sleep(self.cfg.readback_delay_s)
        try:
            (rb, q), = await self.writer.read([node])  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            rb, q = None, Quality.BAD
            detail = f"read-back failed: {e}"
        else:
            detail = f"read back {_fmt(rb)} ({q.name}), expected {_fmt(new)}"
        if rb is None or q is not Quality.GOOD or abs(rb - new) > target.tolerance:
            self.counters.inc("readback_failed")
            logger.error("mitigation read-back mismatch node=%s %s", node, detail)
            return await self._record(p, kind, "failed", actor, node, old, new, guard=Guard.READBACK, detail=detail)
        self.counters.inc("written" if kind == "mitigate" else "reverted")
        logger.warning("mitigation %s node=%s old=%s new=%s actor=%s rule=%s", kind, node, _fmt(old), _fmt(new),
                       actor, p.rule.name)
        return await self._record(p, kind, "written", actor, node, old, new, detail=f"verified: {detail}")

    async def _remember(self, p: _Proposal, node: str, old: float, new: float) -> None:
        w = _Written(p, node, old, new)
        after = p.rule.revert_after_s
        if after is None and not p.rule.revert_on_clear:
            return
        await asyncio.to_thread(self.audit.owe_revert, {
            "proposal_id": p.id, "rule": p.rule.name, "asset": p.asset, "alarm_id": p.alarm_id, "node": node,
            "old_value": old, "new_value": new, "written_at": time.time(),
            "revert_at": None if after is None else time.time() + after,
            "revert_on_clear": int(p.rule.revert_on_clear)})
        if after is not None:
            w.revert_task = asyncio.create_task(self._revert_later(w, after))
        self._track(w)

    def _track(self, w: _Written) -> None:
        """``w`` awaits its revert (a timer, its alarm's end, or a retry)."""
        self._written.setdefault(w.proposal.alarm_id or "", []).append(w)

    async def _revert_later(self, w: _Written, delay: float, why: str | None = None) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            ws = self._written.get(w.proposal.alarm_id or "", [])
            if w not in ws:
                return
            ws.remove(w)
            await self._revert(w, why or f"revert_after_s={delay:g} elapsed")

    async def _on_alarm_end(self, alarm_id: str, kind: str) -> list[MitigationAction]:
        out = []
        for pid, p in list(self._pending.items()):
            if p.alarm_id == alarm_id:
                await self._take_pending(pid)
                out.append(await self._record(p, "mitigate", "withdrawn", self.cfg.actor, p.rule.node, None, None,
                                              detail=f"alarm {kind} before approval"))
        keep = []
        for w in self._written.pop(alarm_id, []):
            if w.proposal.rule.revert_on_clear:
                if w.revert_task is not None:
                    w.revert_task.cancel()
                out.append(await self._revert(w, f"alarm {kind}"))
            else:
                keep.append(w)
        if keep:
            self._written.setdefault(alarm_id, []).extend(keep)  # beside any revert waiting to retry
        return out

    async def _revert(self, w: _Written, why: str) -> MitigationAction:
        rec = await self._try_revert(w, why)
        if rec.guard == Guard.PLC_READ and self.writer is not None and not self._closed:
            # Nothing was written and nothing decided: the PLC could not be read. Still owed.
            delay = min(REVERT_RETRY_S * 2 ** min(w.retries, 20), REVERT_RETRY_MAX_S)
            w.retries += 1
            w.owed_because = w.owed_because or why
            w.revert_task = asyncio.create_task(
                self._revert_later(w, delay, f"{w.owed_because} (retry {w.retries}, PLC was not readable)"))
            self._track(w)
            logger.warning("mitigation revert of %s postponed: PLC not readable; retry in %gs", w.proposal.id, delay)
            return rec
        # Decided (written, refused or failed; the audit log holds which): no longer owed.
        await asyncio.to_thread(self.audit.revert_settled, w.proposal.id)
        return rec

    async def _try_revert(self, w: _Written, why: str) -> MitigationAction:
        p = replace(w.proposal, reason=f"revert of {w.proposal.id}: {why}")
        target = self._targets.get(w.node)
        if target is None:
            return await self._record(p, "revert", "refused", self.cfg.actor, w.node, w.new, w.old,
                                      guard=Guard.ALLOW_LIST, detail=f"{w.node} is no longer an allowed target")
        try:
            current, interlocks = await self._read_state(
                w.node, list(self.cfg.interlocks) + list(w.proposal.rule.interlocks))
            if abs(current - w.new) > target.tolerance:
                raise _Refusal(Guard.CHANGED_EXTERNALLY,
                               f"{w.node} is {_fmt(current)}, not the {_fmt(w.new)} we wrote; leaving it", current,
                               w.old)
            self._check_interlocks(interlocks)
            self._check_limits(target, current, w.old)
        except _Refusal as r:
            self.counters.inc("revert_refused")
            logger.warning("mitigation revert refused node=%s guard=%s detail=%s", w.node, r.code.value, r.detail)
            return await self._record(p, "revert", "refused", self.cfg.actor, w.node, r.old if r.old is not None
                                      else w.new, w.old, guard=r.code, detail=r.detail)
        return await self._write_verified(p, "revert", self.cfg.actor, target, current, w.old)

    async def _hold(self, p: _Proposal, timeout_s: float) -> None:
        """Keep ``p`` waiting for approval for ``timeout_s``, stored so a restart does not lose it."""
        p.expires_mono = time.monotonic() + timeout_s
        self._pending[p.id] = p
        await asyncio.to_thread(self.audit.hold_for_approval, {
            "proposal_id": p.id, "rule": p.rule.name, "asset": p.asset, "alarm_id": p.alarm_id,
            "node": p.rule.node, "reason": p.reason, "expires_at": time.time() + timeout_s})

    async def _take_pending(self, proposal_id: str) -> _Proposal | None:
        p = self._pending.pop(proposal_id, None)
        if p is not None:
            await asyncio.to_thread(self.audit.approval_settled, proposal_id)
        return p

    async def _sweep_expired(self) -> list[MitigationAction]:
        now = time.monotonic()
        out = []
        for pid, p in list(self._pending.items()):
            if now >= p.expires_mono:
                await self._take_pending(pid)
                self.counters.inc("approval_expired")
                out.append(await self._record(p, "mitigate", "expired", self.cfg.actor, p.rule.node, None, None,
                                              guard=Guard.APPROVAL, detail="nobody approved it in time"))
        return out

    async def _resume_approvals(self, open_ids: set[str], rules: dict[str, MitigationRule]) -> list[MitigationAction]:
        """Proposals that were waiting for approval before the restart wait again, for the time they had left."""
        now, out = time.time(), []
        for row in await asyncio.to_thread(self.audit.held_for_approval):
            rule = rules.get(row["rule"])
            p = _Proposal(id=row["proposal_id"], rule=rule or _stand_in_rule(row["rule"], row["node"]),
                          asset=row["asset"], alarm_id=row["alarm_id"], reason=row["reason"],
                          created_mono=time.monotonic())
            why = ("the rule is no longer configured" if rule is None
                   else "the alarm ended while the appliance was down" if row["alarm_id"] not in open_ids
                   else "mitigation is not armed" if not self.armed else None)
            if why is not None:
                await asyncio.to_thread(self.audit.approval_settled, p.id)
                out.append(await self._record(p, "mitigate", "withdrawn", self.cfg.actor, p.rule.node, None, None,
                                              detail=f"{why}; not waiting for approval any more"))
            else:
                # Expired ones go at the next sweep, audited as expired.
                p.expires_mono = time.monotonic() + (row["expires_at"] - now)
                self._pending[p.id] = p
        return out

    # ------------------------------------------------------------------ audit

    def _make(self, p: _Proposal, kind: str, status: str, actor: str, node: str, old, new,
              guard: Guard | None, detail: str) -> MitigationAction:
        return MitigationAction(proposal_id=p.id, ts=time.time(), kind=kind, status=status, actor=actor,
                            rule=p.rule.name, asset=p.asset, alarm_id=p.alarm_id, node=node,
                            old_value=old, new_value=new, reason=p.reason, guard=guard, detail=detail,
                            armed=self.armed)

    def _record_sync(self, p: _Proposal, kind: str, status: str, actor: str, node: str, old, new,
                     guard: Guard | None = None, detail: str = "") -> MitigationAction:
        rec = self._make(p, kind, status, actor, node, old, new, guard, detail)
        seq, chain = self.audit.append(rec.to_dict())
        return replace(rec, audit_seq=seq, audit_hash=chain)

    async def _record(self, p: _Proposal, kind: str, status: str, actor: str, node: str, old, new,
                      guard: Guard | None = None, detail: str = "") -> MitigationAction:
        return await self._appended(self._make(p, kind, status, actor, node, old, new, guard, detail))

    async def _appended(self, rec: MitigationAction) -> MitigationAction:
        """``rec`` audited, carrying its row and chain value: the head every output (the uplink) sees."""
        # Off the event loop: a commit with FULL sync can take tens of ms on an SD card.
        seq, chain = await asyncio.to_thread(self.audit.append, rec.to_dict())
        return replace(rec, audit_seq=seq, audit_hash=chain)
