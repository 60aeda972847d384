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
    client_id: str = Field("appliance-ingest", min_length=1, max_length=128,
                           description="fixed: the broker keeps the persistent session under this id")
    qos: Literal[0, 1] = 1
    topics: tuple[MqttTopic, ...] = Field((
        MqttTopic(pattern="plant/{asset}/{sensor}"),
        MqttTopic(pattern="plant/{asset}/telemetry"),
    ), min_length=1)
    status_topic: str = Field("appliance/status", min_length=1)
    max_future_skew_s: float = Field(300.0, ge=0)
    min_timestamp: float = Field(946684800.0, description="2000-01-01; older is absurd")
    max_payload_bytes: int = Field(262144, ge=64, description="larger messages are dead-lettered")


_NODEID_RE = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=.+$")
_BROWSE_SEGMENT_RE = re.compile(r"^\d+:[^/]+$")


def _check_node_ref(v: str, what: str = "node") -> str:
    """A NodeId string (``ns=2;s=Pump1.Current``) or a browse path (``0:Objects/2:Pump1/2:Current``)."""
    v = v.strip()
    if _NODEID_RE.match(v):
        return v
    segments = v.strip("/").split("/")
    if len(segments) > 1 and all(_BROWSE_SEGMENT_RE.match(s) for s in segments):
        return v
    raise ValueError(f"{what} {v!r} is neither a NodeId (ns=2;s=Pump1.Current) nor a browse path "
                     "(0:Objects/2:PumpLine/2:Pump1/2:Current)")


class OpcuaNode(Section):
    """One monitored item: a PLC variable mapped to one sensor of one asset."""

    node: str = Field(description="NodeId string (ns=2;s=...) or browse path (0:Objects/2:Pump/2:Current)")
    asset: str = Field(min_length=1)
    sensor: str = Field(min_length=1)
    deadband: float = Field(0.0, ge=0, description="0 = every change; absolute units or percent of EURange")
    deadband_type: Literal["absolute", "percent"] = "absolute"
    sampling_interval_ms: float | None = Field(None, ge=0, description="default: the connector's")

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return _check_node_ref(v)


class OpcuaEndpointConfig(Section):
    """How to reach and authenticate to one OPC-UA server (the PLC).

    Relative paths (``client_cert_dir``, ``trusted_server_certs``) are resolved
    against ``data_dir``.
    """

    endpoint: str = "opc.tcp://127.0.0.1:4840/appliance/plc"
    username: str | None = None
    password: str | None = None
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    client_cert_dir: str = Field("pki/client", description="client key+certificate, generated once")
    application_uri: str = "urn:edge-anomaly-appliance:opcua-client"
    trusted_server_certs: tuple[str, ...] = Field(
        (), description="server (or CA) certificates, files or directories of .der/.pem")
    request_timeout_s: float = Field(4.0, gt=0)
    session_timeout_s: float = Field(
        60.0, ge=5, le=3600, description="the server frees a session abandoned this long")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_ok(cls, v: str) -> str:
        if not re.match(r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$", v):
            raise ValueError(f"{v!r} is not an opc.tcp://host[:port][/path] URL")
        return v

    @model_validator(mode="after")
    def _security_consistent(self):
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError("security_policy and security_mode must both be 'None' or both set "
                             "(Basic256Sha256 with Sign or SignAndEncrypt)")
        if self.security_policy != "None" and not self.trusted_server_certs:
            raise ValueError("trusted_server_certs must list the PLC's certificate (or its CA) when "
                             "security is on; an unknown server certificate is always refused")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        return self


class OpcuaInputConfig(OpcuaEndpointConfig):
    enabled: bool = False
    sampling_interval_ms: float = Field(1000.0, ge=0)
    publishing_interval_ms: float = Field(1000.0, gt=0)
    queue_size: int = Field(10, ge=1, le=10000, description="samples the server buffers between publishes")
    timestamp: Literal["source", "server", "receive"] = Field(
        "source", description="which clock stamps readings (falls back to the next one when absent)")
    watchdog_s: float = Field(10.0, gt=0, description="no data for this long forces a full reconnect")
    reconnect: BackoffConfig = BackoffConfig()
    # Default: the PLC simulator's pump (firmware-sim/plc.py), so the demo switches to
    # OPC-UA with ``inputs.opcua.enabled = true`` alone.
    nodes: tuple[OpcuaNode, ...] = tuple(
        OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s)
        for s in ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                  "Thermocouple", "Voltage", "Volume Flow RateRMS"))

    @model_validator(mode="after")
    def _nodes_ok(self):
        seen: dict[tuple[str, str], str] = {}
        for n in self.nodes:
            key = (n.asset, n.sensor)
            if key in seen:
                raise ValueError(f"nodes: {n.asset}/{n.sensor} is mapped twice ({seen[key]!r} and {n.node!r})")
            seen[key] = n.node
        if self.watchdog_s * 1000 <= self.publishing_interval_ms:
            raise ValueError("watchdog_s must be longer than publishing_interval_ms")
        return self


class MitigationTarget(Section):
    """A PLC node the appliance may write (the allow-list), with the limits every write obeys."""

    node: str
    min: float
    max: float
    max_step: float | None = Field(None, gt=0, description="largest change in one write")
    max_rate_per_min: float | None = Field(
        None, gt=0, description="largest total change written within any 60 s")
    cooldown_s: float = Field(60.0, ge=0, description="minimum time between two writes to this node")
    tolerance: float = Field(1e-6, ge=0, description="read-back must equal the written value within this")

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return _check_node_ref(v)

    @model_validator(mode="after")
    def _range_ok(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class MitigationInterlock(Section):
    """A condition read from the PLC just before a write; the write is refused unless it holds."""

    name: str = Field(min_length=1)
    node: str
    op: Literal["==", "!=", "<", "<=", ">", ">="] = "=="
    value: bool | float

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return _check_node_ref(v)


class MitigationRule(Section):
    """When an alarm on ``asset`` reaches ``min_level`` with one of ``sensors`` among its top
    contributors, write ``node``: either ``set_value`` or current value ``+ change_by``."""

    name: str = Field(min_length=1)
    asset: str = Field("*", description="asset name or fnmatch pattern")
    min_level: Literal["anomaly", "critical"] = "anomaly"
    sensors: tuple[str, ...] = Field((), description="any of these among the top sensors; empty = any")
    top_n: int = Field(3, ge=1, description="how many top contributing sensors are considered")
    node: str
    set_value: float | None = None
    change_by: float | None = None
    interlocks: tuple[MitigationInterlock, ...] = Field((), description="in addition to the global ones")
    require_approval: bool | None = Field(None, description="default: mitigation.require_approval")
    revert_after_s: float | None = Field(None, gt=0, description="restore the previous value after this")
    revert_on_clear: bool = Field(False, description="restore the previous value when the alarm clears")

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return _check_node_ref(v)

    @model_validator(mode="after")
    def _one_action(self):
        if (self.set_value is None) == (self.change_by is None):
            raise ValueError("exactly one of set_value or change_by must be given")
        return self


class MitigationConfig(Section):
    """Guarded writes to the PLC. Advise-only (proposals audited, nothing written) until armed."""

    enabled: bool = False
    armed: bool = False
    plc: OpcuaEndpointConfig | None = Field(None, description="default: the OPC-UA input's connection")
    audit_db: str = Field("mitigation_audit.db", description="append-only audit log (SQLite), in data_dir")
    actor: str = Field("appliance", min_length=1, description="who the audit log names for automatic writes")
    require_approval: bool = False
    approval_timeout_s: float = Field(900.0, gt=0)
    readback_delay_s: float = Field(0.5, ge=0, le=30, description="PLC scan time to wait before the read-back")
    targets: tuple[MitigationTarget, ...] = ()
    interlocks: tuple[MitigationInterlock, ...] = Field((), description="checked before every write")
    rules: tuple[MitigationRule, ...] = ()

    @model_validator(mode="after")
    def _unique(self):
        for what, names in (("rules", [r.name for r in self.rules]),
                            ("targets", [t.node for t in self.targets]),
                            ("interlocks", [i.name for i in self.interlocks])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what}: duplicate {', '.join(dup)}")
        return self


class InputsConfig(Section):
    mqtt: MqttInputConfig = MqttInputConfig()
    opcua: OpcuaInputConfig = OpcuaInputConfig()


class WindowConfig(Section):
    period_s: float | None = Field(None, gt=0, description="alignment grid; default from the model bundle")
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
    batch_max_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="uncompressed body limit")
    flush_interval_s: float = Field(1.0, ge=0, description="longest a point waits to fill a batch")
    retry: BackoffConfig = BackoffConfig(initial_s=1.0, max_s=60.0)

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class HistoryOutboxConfig(Section):
    path: str = Field("history_outbox.db", description="relative to data_dir")
    max_bytes: int = Field(256 * 1024 * 1024, ge=16 * 1024,
                           description="payload bound; raw readings then scores are dropped beyond it")
    max_age_s: float = Field(7 * 86400.0, gt=0, description="readings/scores older than this are dropped")
    commit_interval_s: float = Field(0.5, gt=0, le=10, description="how often buffered points are committed")
    fsync: Literal["commit", "interval"] = Field(
        "commit", description="commit: every commit survives a power cut; interval: the last "
                              "fsync_interval_s may be lost to a power cut (fewer SD-card writes)")
    fsync_interval_s: float = Field(5.0, gt=0)
    max_pending: int = Field(100_000, ge=100, description="readings (and scores) buffered in memory "
                                                         "before commit; oldest dropped beyond")


class HistoryLocalConfig(Section):
    enabled: bool = True
    path: str = Field("history_local.db", description="relative to data_dir")
    raw_retention_s: float = Field(86400.0, ge=120, description="raw readings and scores")
    rollup_retention_s: float = Field(30 * 86400.0, ge=120, description="1-minute aggregates")

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
        reserved = {"asset", "sensor", "historical", "alarm_id", "event", "level", "action", "kind", "status"}
        for k, val in v.items():
            if k in reserved:
                raise ValueError(f"tag {k!r} is set by the appliance itself")
            if not k or not val or "\n" in k + val:
                raise ValueError(f"tag {k!r}: keys and values must be non-empty single-line strings")
        return v


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
    history: HistoryConfig = HistoryConfig()
    mitigation: MitigationConfig = MitigationConfig()

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
