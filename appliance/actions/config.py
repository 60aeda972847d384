"""``[decision]``: how scores become alarms (debounce, hysteresis, escalation)."""

from __future__ import annotations

from pydantic import Field, model_validator

from appliance.settings import Section


class DecisionConfig(Section):
    raise_k: int = Field(3, ge=1, le=10_000, description="windows over threshold among the last raise_n to raise")
    raise_n: int = Field(5, ge=1, le=10_000)
    clear_n: int = Field(5, ge=1, le=10_000, description="consecutive windows under clear_ratio*threshold to clear")
    clear_ratio: float = Field(0.8, gt=0, le=1)
    critical_ratio: float = Field(2.0, gt=1, le=1e6)
    # "Operating point not seen in training" (appliance/actions/operating_point.py): entered like an alarm is
    # raised (k of n windows outside the bundle's envelope), left after unseen_leave_n windows back inside.
    unseen_enter_k: int = Field(3, ge=1, le=10_000, description="windows outside the envelope among the last "
                                "unseen_enter_n to enter the status")
    unseen_enter_n: int = Field(5, ge=1, le=10_000)
    unseen_leave_n: int = Field(30, ge=1, le=100_000, description="consecutive windows inside the envelope to leave")
    unseen_holds_alarms: bool = Field(True, description="while the status is on, judge anomalies against "
                                      "unseen_rise x the episode's running score level instead of the bundle's "
                                      "threshold alone (windows not raised are counted on the episode)")
    unseen_rise: float = Field(2.0, gt=1, le=1e6, description="how many times the episode's running score level "
                               "a window must reach to raise an anomaly while the operating point is unseen")

    @model_validator(mode="after")
    def _k_le_n(self):
        if self.raise_k > self.raise_n:
            raise ValueError(f"raise_k ({self.raise_k}) must be <= raise_n ({self.raise_n})")
        if self.unseen_enter_k > self.unseen_enter_n:
            raise ValueError(f"unseen_enter_k ({self.unseen_enter_k}) must be <= unseen_enter_n "
                             f"({self.unseen_enter_n})")
        return self
