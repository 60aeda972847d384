"""PLC mitigation as an :class:`~appliance.core.Output`.

The :class:`~appliance.actions.mitigation.mitigator.Mitigator` decides and
audits; this adapter runs it off the detection path (each alarm event becomes a
background task) and hands every record it makes to the other outputs.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Iterable, Mapping

from appliance.actions.mitigation.mitigator import Mitigator
from appliance.core import AlarmEvent, MitigationAction, Output, OutputContext
from appliance.core.plugins import Command

log = logging.getLogger(__name__)


class MitigationOutput(Output):
    name = "mitigation"

    def __init__(self, mitigator: Mitigator):
        self.mitigator = mitigator
        self._ctx: OutputContext | None = None

    async def start(self, ctx: OutputContext) -> None:
        self._ctx = ctx
        # Reverts owed from before a restart; off the start path, the PLC may be slow or away.
        ctx.spawn(self._publish(self.mitigator.resume(ctx.open_alarm_ids), "resuming owed reverts"))
        # Limits outside the range the PLC declares for a node: disarmed, audited, said in the log.
        ctx.spawn(self.mitigator.check_ranges())

    async def stop(self) -> None:
        await self.mitigator.close()

    def on_alarm_event(self, event: AlarmEvent) -> None:
        if self._ctx is not None:
            self._ctx.spawn(self._publish(self.mitigator.on_alarm_event(event),
                                          f"mitigation for alarm {event.alarm.id}"))

    async def _publish(self, records: Awaitable[Iterable[MitigationAction]], what: str) -> None:
        try:
            for rec in await records or ():
                self._ctx.publish_action(rec)
        except Exception:
            log.exception("%s failed", what)

    def commands(self) -> Mapping[str, Command]:
        return {"approve_action": self._approve, "reject_action": self._reject, "set_armed": self._set_armed}

    async def _set_armed(self, armed: bool, user: str, note: str = "") -> list[MitigationAction]:
        return self._published(await self.mitigator.set_armed(armed, user=user, note=note))

    async def _approve(self, proposal_id: str, user: str, role: str = "engineer") -> list[MitigationAction]:
        return self._published(await self.mitigator.approve(proposal_id=proposal_id, user=user, role=role))

    async def _reject(self, proposal_id: str, user: str, note: str = "",
                      role: str = "engineer") -> list[MitigationAction]:
        return self._published(await self.mitigator.reject(proposal_id=proposal_id, user=user, note=note,
                                                           role=role))

    def _published(self, record: MitigationAction) -> list[MitigationAction]:
        if self._ctx is not None:
            self._ctx.publish_action(record)
        return [record]

    def status(self) -> dict:
        return self.mitigator.status()
