"""``[windows]`` and ``[detector]``: how readings are aligned and which model scores them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from appliance.settings import DAY_S, ReadPath, Section


class WindowConfig(Section):
    period_s: float | None = Field(None, ge=0.001, le=DAY_S,
                                   description="alignment grid; default from the model bundle")
    staleness_s: float = Field(5.0, gt=0, le=7 * DAY_S,
                               description="a held value older than this is missing; unset: this or the model's, "
                                           "whichever is longer")
    lateness_s: float = Field(2.0, ge=0, le=DAY_S,
                              description="how long a grid row waits for late readings")
    stride: int | None = Field(None, ge=1, le=100_000,
                               description="rows between windows; default from the model bundle")


class DetectorConfig(Section):
    bundle: ReadPath = Field("model", description="model bundle directory, relative to data_dir")
    precision: Literal["int8", "fp32"] = "int8"
    threads: int = Field(1, ge=1, le=8)
