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

    @model_validator(mode="after")
    def _k_le_n(self):
        if self.raise_k > self.raise_n:
            raise ValueError(f"raise_k ({self.raise_k}) must be <= raise_n ({self.raise_n})")
        return self
