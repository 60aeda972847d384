"""``[outputs.sync.backtest]``: how a new model is judged on the gateway's own labelled history.

Beside ``[outputs.sync.shadow]`` because both judge the same candidates (signed
releases, and so a commissioned bundle or a fleet model released the same way);
commissioning reads the same section to say whether a release of its bundle would
pass. Imports nothing heavy: ``appliance config check`` reads it.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from appliance.settings import DAY_S, Section


class BacktestBounds(Section):
    """What a candidate may do worse than the current model on the same recorded history.

    The counts are alarm *episodes*: labelled fault episodes the candidate's replay
    does not alarm on ("missed"), and its false alarms (alarms on episodes labelled
    ``false_alarm`` plus alarms where the live model raised none).
    """

    enabled: bool = Field(True, description="back-test every candidate before its shadow run")
    days: float = Field(14.0, gt=0, le=366, description="the history judged: the last N days of readings")
    min_labelled: int = Field(1, ge=1, le=10_000,
                              description="episodes with a fault or false_alarm verdict needed to judge; "
                                          "fewer: shadow alone decides")
    min_history_s: float = Field(3600.0, ge=0, le=366 * DAY_S,
                                 description="readings replayed needed to judge; less: shadow alone decides")
    max_extra_missed_faults: int = Field(0, ge=0, le=10_000,
                                         description="fault episodes the candidate may miss beyond the current's")
    max_false_alarm_factor: float = Field(1.0, ge=0, le=100,
                                          description="candidate false alarms <= factor x current's ...")
    max_extra_false_alarms: int = Field(1, ge=0, le=10_000, description="... + this many")
    match_s: float = Field(300.0, ge=0, le=DAY_S,
                           description="a replayed alarm this close to an episode (before its start, after its "
                                       "end) is an alarm on that episode")
    named_max: int = Field(3, ge=1, le=100, description="episodes named in a rejection's line, then 'and N more'")

    @model_validator(mode="after")
    def _history_fits(self):
        if self.min_history_s > self.days * DAY_S:
            raise ValueError(f"min_history_s {self.min_history_s:g} is longer than the {self.days:g} days judged")
        return self
