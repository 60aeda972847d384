"""One validated configuration file (TOML) with defaults that run out of the box.

Every section is a small pydantic model owned by the part that uses it; this
module only assembles them. ``load_config`` turns validation failures into a
:class:`ConfigError` whose lines name the offending key and the reason.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Section(BaseModel):
    # Unknown keys are errors: a typo in a factory config must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(Section):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


class BackoffConfig(Section):
    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class MqttTopic(Section):
    """Maps an MQTT topic pattern to asset and sensor.

    ``pattern`` uses ``{asset}`` and ``{sensor}`` placeholders for whole topic
    levels, e.g. ``plant/{asset}/{sensor}`` (one reading per message) or
    ``plant/{asset}/telemetry`` (a ``values`` object with several sensors). A
    fixed ``asset`` may be given instead of the placeholder.
    """

    pattern: str
    asset: str | None = None
    historical: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern_ok(cls, v: str) -> str:
        for level in v.split("/"):
            if "{" in level and level not in ("{asset}", "{sensor}"):
                raise ValueError(f"level {level!r}: placeholders must fill a whole level "
                                 "and be {asset} or {sensor}")
            if level in ("+", "#"):
                raise ValueError("use {asset}/{sensor} placeholders instead of MQTT wildcards")
        return v

    @model_validator(mode="after")
    def _asset_known(self):
        if "{asset}" not in self.pattern and not self.asset:
            raise ValueError("pattern has no {asset} level, so 'asset' must be set")
        return self


class MqttBroker(Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: TlsConfig = TlsConfig()
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect: BackoffConfig = BackoffConfig()


class MqttInputConfig(Section):
    enabled: bool = True
    broker: MqttBroker = MqttBroker()
    client_id: str = "appliance-ingest"
    qos: Literal[0, 1] = 1
    topics: tuple[MqttTopic, ...] = (
        MqttTopic(pattern="plant/{asset}/{sensor}"),
        MqttTopic(pattern="plant/{asset}/telemetry"),
    )
    status_topic: str = "appliance/status"
    max_future_skew_s: float = Field(300.0, ge=0)
    min_timestamp: float = Field(946684800.0, description="2000-01-01; older is absurd")


class OpcuaNode(Section):
    node: str = Field(description="NodeId string (ns=2;s=...) or browse path (0:Objects/2:Pump/2:Current)")
    asset: str
    sensor: str
    deadband: float = Field(0.0, ge=0)


class OpcuaInputConfig(Section):
    enabled: bool = False
    endpoint: str = "opc.tcp://127.0.0.1:4840/appliance/plc"
    username: str | None = None
    password: str | None = None
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    client_cert_dir: str = "pki/client"
    trusted_server_certs: tuple[str, ...] = ()
    sampling_interval_ms: float = Field(1000.0, gt=0)
    publishing_interval_ms: float = Field(1000.0, gt=0)
    watchdog_s: float = Field(10.0, gt=0)
    reconnect: BackoffConfig = BackoffConfig()
    nodes: tuple[OpcuaNode, ...] = ()


class InputsConfig(Section):
    mqtt: MqttInputConfig = MqttInputConfig()
    opcua: OpcuaInputConfig = OpcuaInputConfig()


class WindowConfig(Section):
    period_s: float = Field(1.0, gt=0, description="alignment grid of every asset")
    staleness_s: float = Field(5.0, gt=0, description="a held value older than this is missing")
    lateness_s: float = Field(2.0, ge=0, description="how long a grid row waits for late readings")
    stride: int | None = Field(None, ge=1, description="rows between windows; default from the model bundle")


class DetectorConfig(Section):
    bundle: str = "model"
    precision: Literal["int8", "fp32"] = "int8"
    threads: int = Field(1, ge=1, le=8)


class DecisionConfig(Section):
    raise_k: int = Field(3, ge=1, description="windows over threshold among the last raise_n to raise")
    raise_n: int = Field(5, ge=1)
    clear_n: int = Field(5, ge=1, description="consecutive windows under clear_ratio*threshold to clear")
    clear_ratio: float = Field(0.8, gt=0, le=1)
    critical_ratio: float = Field(2.0, gt=1)

    @model_validator(mode="after")
    def _k_le_n(self):
        if self.raise_k > self.raise_n:
            raise ValueError(f"raise_k ({self.raise_k}) must be <= raise_n ({self.raise_n})")
        return self


class MqttAlarmOutput(Section):
    enabled: bool = True
    broker: MqttBroker | None = Field(None, description="default: the MQTT input's broker")
    client_id: str = "appliance-alarms"
    topic_prefix: str = "appliance/alarms"


class OutputsConfig(Section):
    mqtt_alarm: MqttAlarmOutput = MqttAlarmOutput()


class StoreConfig(Section):
    path: str = "appliance.db"
    retention_days: float = Field(7.0, gt=0)
    max_readings: int = Field(5_000_000, ge=1000)
    max_dead_letters: int = Field(100_000, ge=100)
    max_in_flight: int = Field(20_000, ge=10, description="readings accepted but not yet on disk")


class WatchdogConfig(Section):
    silence_s: float = Field(10.0, gt=0, description="a sensor silent this long is reported")


class WebConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class Config(Section):
    site: str = Field("demo-plant", min_length=1)
    data_dir: str = "var"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    inputs: InputsConfig = InputsConfig()
    windows: WindowConfig = WindowConfig()
    detector: DetectorConfig = DetectorConfig()
    decision: DecisionConfig = DecisionConfig()
    outputs: OutputsConfig = OutputsConfig()
    store: StoreConfig = StoreConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    web: WebConfig = WebConfig()

    def path(self, p: str) -> Path:
        """Resolve a configured path relative to ``data_dir``."""
        q = Path(p)
        return q if q.is_absolute() else Path(self.data_dir) / q


class ConfigError(Exception):
    """Invalid configuration; ``problems`` are ``key: reason`` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n" + "\n".join(f"  {p}" for p in problems))


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not re.fullmatch(r"function-after\[.*\]", str(p))) or "(top level)"


def parse_config(data: dict, source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check spelling)"
            problems.append(f"{_key(err['loc'])}: {msg}")
        raise ConfigError(source, problems) from None


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), [f"not valid TOML: {e}"]) from None
    return parse_config(data, str(p))
