"""``[outputs.history]``: InfluxDB behind a durable outbox, plus local history for the dashboard."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.history.lineproto import RESERVED_TAGS
from appliance.core.sqlite_pages import PageSize
from appliance.settings import BackoffConfig, Section, StatePath, TlsConfig, YEAR_S


class HistoryInfluxConfig(Section):
    """Where history goes: any server speaking the InfluxDB v2 write API.

    InfluxDB 1.8+: ``token = "user:password"`` (or empty), ``org = "-"``,
    ``bucket = "database/retention_policy"``.
    """

    url: str = "http://127.0.0.1:8086"
    token: str | None = Field(None, description="API token; None sends no Authorization header")
    org: str = "appliance"
    bucket: str = "appliance"
    tls: TlsConfig = TlsConfig()
    timeout_s: float = Field(10.0, gt=0, le=300)
    gzip: bool = True
    batch_size: int = Field(5000, ge=1, le=100_000, description="points per write request")
    batch_max_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="uncompressed body limit")
    flush_interval_s: float = Field(1.0, ge=0, le=3600, description="longest a point waits to fill a batch")
    retry: BackoffConfig = BackoffConfig(initial_s=1.0, max_s=60.0)

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class HistoryOutboxConfig(Section):
    path: StatePath = Field("history_outbox.db", description="relative to data_dir")
    max_bytes: int = Field(256 * 1024 * 1024, ge=16 * 1024, le=1024 ** 4,
                           description="payload bound; raw readings then scores are dropped beyond it")
    max_age_s: float = Field(7 * 86400.0, gt=0, le=10 * YEAR_S,
                             description="readings/scores older than this are dropped")
    commit_interval_s: float = Field(5.0, gt=0, le=10, description="how often buffered points are committed "
                                                               "(each commit is an fsync and rewrites the "
                                                               "outbox's newest pages: SD-card wear)")
    fsync: Literal["commit", "interval"] = Field(
        "commit", description="commit: every commit survives a power cut; interval: the last "
                              "fsync_interval_s may be lost to a power cut (fewer SD-card writes)")
    fsync_interval_s: float = Field(5.0, gt=0, le=3600)
    max_pending: int = Field(100_000, ge=100, le=10_000_000, description="readings (and scores) buffered in memory "
                                                         "before commit; oldest dropped beyond")
    page_size: PageSize = Field(
        1024, description="bytes per SQLite page: a commit writes each page it touches whole; a file with "
                          "other pages is rewritten when the appliance starts with the outbox empty")


class HistoryLocalConfig(Section):
    enabled: bool = True
    path: StatePath = Field("history_local.db", description="relative to data_dir")
    raw_retention_s: float = Field(86400.0, ge=120, le=10 * YEAR_S,
                                   description="raw scores (raw readings are in the store)")
    rollup_retention_s: float = Field(30 * 86400.0, ge=120, le=10 * YEAR_S, description="1-minute aggregates")
    commit_interval_s: float = Field(120.0, ge=0, le=300.0,
                                     description="minute aggregates and scores wait this long before their commit "
                                                 "(fewer SD-card writes; trends read the store's raw readings for "
                                                 "the span it holds, so only older spans lag; a crash may lose it)")
    page_size: PageSize = Field(
        1024, description="bytes per SQLite page: a commit writes each page it touches whole; a file with "
                          "other pages is rewritten once when the appliance starts")

    @model_validator(mode="after")
    def _ordered(self):
        if self.rollup_retention_s < self.raw_retention_s:
            raise ValueError("rollup_retention_s must be >= raw_retention_s")
        return self


class HistoryConfig(Section):
    """History: InfluxDB sink behind a durable outbox, plus local history for the dashboard."""

    enabled: bool = Field(True, description="forward to InfluxDB (through the outbox)")
    global_tags: dict[str, str] = Field(default_factory=dict, description="added to every point, e.g. site")
    influx: HistoryInfluxConfig = HistoryInfluxConfig()
    outbox: HistoryOutboxConfig = HistoryOutboxConfig()
    local: HistoryLocalConfig = HistoryLocalConfig()

    @field_validator("global_tags")
    @classmethod
    def _tags_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if k in RESERVED_TAGS:
                raise ValueError(f"tag {k!r} is set by the appliance itself")
            if not k or not val or "\n" in k + val:
                raise ValueError(f"tag {k!r}: keys and values must be non-empty single-line strings")
        return v
