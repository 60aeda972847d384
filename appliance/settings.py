"""The base every config section is built on, and the small pieces several share.

A section is a frozen pydantic model that forbids unknown keys (a typo in a
factory config must not be silently ignored) and refuses NaN and infinity for
every float (a NaN limit would disable the guard it sets). Each plugin keeps its
own section beside its code; :mod:`appliance.config` only assembles them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A day, a year: upper bounds for durations that keep a typo (an extra zero or
# three) from becoming a timer that never fires.
DAY_S = 86400.0
YEAR_S = 366 * DAY_S


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackoffConfig(Section):
    """Reconnect delays: exponential with full jitter, from ``initial_s`` up to ``max_s``."""

    initial_s: float = Field(0.5, gt=0, le=3600)
    max_s: float = Field(30.0, gt=0, le=DAY_S)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class TlsConfig(Section):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


class ClockConfig(Section):
    """``[clock]``: the gateway's time while its clock is unsynchronised (:mod:`appliance.core.timebase`).

    ``data_time``: while the system says the clock is not synchronised and the data's
    timestamps are ahead of it by more than ``min_offset_s``, take "now" from the data
    (the median offset over the last ``window`` readings of each source, then over the
    sources). False: the wall clock is trusted as it is, synchronised or not.
    """

    data_time: bool = True
    min_offset_s: float = Field(300.0, ge=1, le=DAY_S, description="data ahead by more: the clock is behind")
    window: int = Field(32, ge=1, le=4096, description="readings per source the offset is the median of")
