"""``[outputs.sync]``: the cloud uplink (anomaly episodes, sent in connectivity windows).

The section is checked by ``appliance config check`` without touching the network
or the key files: that a key file exists and is private is checked when the
appliance starts (:func:`appliance.sync.uplink.build`), where a refusal stops it
with one line.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings import DAY_S, YEAR_S, BackoffConfig, Section, StatePath
from appliance.lifecycle.config import BacktestBounds
from appliance.lifecycle.shadow import ShadowBounds
from appliance.sync.updates_config import ModelUpdatesConfig

KIB = 1024
MIB = 1024 * KIB

# MQTT topic names may not hold wildcards; {site} is the one placeholder.
_TOPIC_RE = re.compile(r"^[^#+\x00]+$")


def parse_cron(expr: str, tz="UTC"):
    """An APScheduler ``CronTrigger`` from 5 crontab fields, or 6 with seconds first, in zone ``tz``.

    Six fields (``"*/10 * * * * *"``: every 10 s) exist for accelerated tests and
    demos; a factory uses the usual five (``"0 2 * * *"``: 02:00 every day).
    ValueError says what is wrong.

    >>> parse_cron("0 2 * * *").fields[5].name, str(parse_cron("0 2 * * *").fields[5])
    ('hour', '2')
    >>> parse_cron("0 2 * *")
    Traceback (most recent call last):
    ...
    ValueError: cron '0 2 * *' has 4 fields; give 5 (minute hour day month weekday) or 6 (second first)
    """
    # Imported here: checking a config file with no sync window must not load the scheduler.
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron {expr!r} has {len(fields)} fields; give 5 (minute hour day month weekday) "
                         "or 6 (second first)")
    if len(fields) == 5:
        fields = ["0", *fields]
    second, minute, hour, day, month, dow = fields
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
                           timezone=tz)
    except ValueError as e:
        raise ValueError(f"cron {expr!r}: {e}") from None


class SyncWindowConfig(Section):
    """One recurring connectivity window: ``cron`` or ``every_s``, each open for ``duration_s``."""

    cron: str | None = Field(None, description="crontab, e.g. '0 2 * * *' (02:00 daily); 6 fields: seconds first")
    every_s: float | None = Field(None, ge=1, le=YEAR_S, description="a window every so many seconds")
    duration_s: float = Field(1800.0, ge=1, le=DAY_S, description="how long each window stays open")

    @field_validator("cron")
    @classmethod
    def _cron_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parse_cron(v)
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of cron or every_s")
        return self


class SyncQueueConfig(Section):
    path: StatePath = Field("sync_queue.db", description="relative to data_dir")
    max_bytes: int = Field(64 * MIB, ge=64 * KIB, le=1024 ** 4,
                           description="compressed bytes waiting; context goes first, then the oldest alarms")
    fsync: Literal["commit", "interval"] = Field(
        "commit", description="commit: every queued episode survives a power cut; interval: fewer SD-card writes")


class SyncMqttConfig(Section):
    """The cloud broker: MQTT over TLS (always), QoS 1, a persistent session, client certificates.

    Key and password files must not be readable by group or others.
    """

    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(8883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = Field(None, min_length=1, max_length=128,
                                  description="fixed id of the persistent session; default appliance-<site>")
    topic: str = Field("appliance/{site}/uplink", min_length=1, max_length=1024)
    ca_file: str | None = Field(None, description="CA that signed the broker's certificate; default: system CAs")
    cert_file: str | None = Field(None, description="client certificate (PEM)")
    key_file: str | None = Field(None, description="client private key (PEM), mode 0600 or stricter")
    username: str | None = Field(None, max_length=1024)
    password_file: str | None = Field(None, description="file holding the password (first line), mode 0600")
    keepalive_s: int = Field(60, ge=5, le=3600)
    connect_timeout_s: float = Field(30.0, gt=0, le=600)
    session_expiry_s: int = Field(7 * 86400, ge=0, le=2 ** 32 - 1,
                                  description="MQTT 5: how long the broker keeps the session offline")
    max_inflight: int = Field(4, ge=1, le=64, description="batches published and not yet acknowledged")
    reconnect: BackoffConfig = BackoffConfig(initial_s=1.0, max_s=60.0)

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, v: str) -> str:
        if not _TOPIC_RE.match(v):
            raise ValueError("a topic to publish on may not hold the wildcards + or #")
        return v

    @model_validator(mode="after")
    def _pairs(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username")
        return self


class SyncHttpsConfig(Section):
    """Optional HTTPS transport: each batch POSTed with an ``Idempotency-Key`` header."""

    url: str | None = Field(None, description="https:// endpoint receiving batches")
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = Field(None, description="bearer token (first line), mode 0600")
    timeout_s: float = Field(30.0, gt=0, le=600)
    retry: BackoffConfig = BackoffConfig(initial_s=1.0, max_s=60.0)

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an https:// URL")
        return v

    @model_validator(mode="after")
    def _pairs(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class SyncConfig(Section):
    """The cloud uplink: alarm episodes with their context, sent only inside connectivity windows."""

    enabled: bool = False
    transport: Literal["mqtt", "https"] = "mqtt"
    windows: tuple[SyncWindowConfig, ...] = Field((), max_length=64,
                                                   description="[[outputs.sync.windows]]; none: only sync_now")
    timezone: str | None = Field(None, description="IANA zone of the cron windows; default: the system's")
    sync_now_s: float = Field(600.0, ge=1, le=DAY_S, description="how long a 'sync now' window stays open")
    start_jitter_s: float = Field(0.0, ge=0, le=3600,
                                  description="random delay before connecting, so a fleet does not connect at once")
    close_grace_s: float = Field(5.0, ge=0, le=600,
                                 description="at a window's end, how long to wait for acknowledgements in flight")
    budget_bytes_per_window: int = Field(
        8 * MIB, ge=0, le=1024 ** 4, description="bytes published per window; 0: no budget")
    max_message_bytes: int = Field(256 * KIB, ge=4 * KIB, le=128 * MIB, description="one batch on the wire")
    max_rate_bytes_per_s: int = Field(0, ge=0, le=10 * 1024 ** 3, description="pace on a shared link; 0: no pacing")
    context_before_s: float = Field(60.0, ge=0, le=DAY_S, description="raw readings kept before the alarm")
    context_after_s: float = Field(30.0, ge=0, le=DAY_S, description="raw readings kept after it cleared")
    context_max_readings: int = Field(50_000, ge=100, le=10_000_000,
                                      description="per episode; a longer span is thinned evenly")
    context_max_scores: int = Field(10_000, ge=10, le=1_000_000, description="per episode; thinned evenly beyond")
    significant_digits: int = Field(
        4, ge=0, le=17, description="context values kept to this many significant digits; 0: exact")
    settle_s: float = Field(2.0, ge=0, le=600, description="wait for the store to commit the last context")
    queue: SyncQueueConfig = SyncQueueConfig()
    mqtt: SyncMqttConfig = SyncMqttConfig()
    https: SyncHttpsConfig = SyncHttpsConfig()
    updates: ModelUpdatesConfig = ModelUpdatesConfig()
    shadow: ShadowBounds = ShadowBounds()
    backtest: BacktestBounds = BacktestBounds()

    @field_validator("timezone")
    @classmethod
    def _zone_ok(cls, v: str | None) -> str | None:
        if v is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from None
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.budget_bytes_per_window and self.budget_bytes_per_window < self.max_message_bytes:
            raise ValueError("budget_bytes_per_window must be 0 (no budget) or >= max_message_bytes, "
                             "or a full batch could never be sent")
        if self.enabled and self.transport == "https" and self.https.url is None:
            raise ValueError("transport 'https' needs https.url")
        return self
