"""One validated configuration file (TOML) with defaults that run out of the box.

Every section is a small pydantic model kept beside the part that uses it; this
module only assembles them (inputs and outputs from :mod:`appliance.registry`).
:func:`load_config` refuses a bad file with a :class:`ConfigError` whose lines
each name the offending key and the reason, never with a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, create_model

from appliance.actions.config import DecisionConfig
from appliance.connections.config import ConnectionsConfig
from appliance.connectors.guard import clip
from appliance.core.compat import tomllib
from appliance.detector.config import DetectorConfig, WindowConfig
from appliance.fleet.config import FleetConfig
from appliance.registry import INPUTS, OUTPUTS, config_sections, unmet_needs
from appliance.settings import ClockConfig, Section, StatePath
from appliance.store.config import StoreConfig
from appliance.watchdog import WatchdogConfig
from web.config import WebConfig

# A configuration file is a few kilobytes; anything near this is not one.
MAX_CONFIG_BYTES = 1024 * 1024

InputsConfig = create_model("InputsConfig", __base__=Section,
                            **{k: (c, c()) for k, c in config_sections(INPUTS).items()})
OutputsConfig = create_model("OutputsConfig", __base__=Section,
                             **{k: (c, c()) for k, c in config_sections(OUTPUTS).items()})


class Config(Section):
    site: str = Field("demo-plant", min_length=1, max_length=256)
    data_dir: StatePath = "var"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    connections: ConnectionsConfig = ConnectionsConfig()
    inputs: InputsConfig = InputsConfig()
    windows: WindowConfig = WindowConfig()
    detector: DetectorConfig = DetectorConfig()
    decision: DecisionConfig = DecisionConfig()
    outputs: OutputsConfig = OutputsConfig()
    store: StoreConfig = StoreConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    clock: ClockConfig = ClockConfig()
    web: WebConfig = WebConfig()
    fleet: FleetConfig = FleetConfig()  # the fleet server's too; the gateway's part is the registry's "fleet"

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


_OPCUA_ENDPOINT_KEYS = ("endpoint", "username", "password", "security_policy", "security_mode", "client_cert_dir",
                        "application_uri", "trusted_server_certs", "request_timeout_s", "session_timeout_s")
# Keys of earlier releases, so an old file is told where each one went.
_MOVED = {("history",): "outputs.history", ("mitigation",): "outputs.mitigation",
          ("inputs", "mqtt", "broker"): "connections.mqtt",
          **{("inputs", "opcua", k): f"connections.opcua.{k}" for k in _OPCUA_ENDPOINT_KEYS}}


def _moved_keys(data: dict) -> list[str]:
    problems = []
    for path, new in _MOVED.items():
        node = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            problems.append(f"{'.'.join(path)}: moved to [{new}]")
    return problems


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not re.fullmatch(r"function-after\[.*\]", str(p))) or "(top level)"


def _as_json(data: dict) -> str:
    """The parsed file as JSON text: validated in JSON mode, a TOML array is a tuple and nothing is coerced.

    A TOML date or time becomes its ISO text (no key takes one); from a caller in
    Python, a section already built is its data and a ``Path`` its text."""
    def other(v):
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        return v.isoformat() if hasattr(v, "isoformat") else str(v)
    return json.dumps(data, default=other)


# Type errors of a scalar given as a string: strict mode does not coerce "yes" or "1883".
_SCALAR_TYPES = ("bool_type", "int_type", "float_type", "literal_error")


def parse_config(data: dict, source: str = "<config>") -> Config:
    moved = _moved_keys(data)
    if moved:
        raise ConfigError(source, moved)
    try:
        config = Config.model_validate_json(_as_json(data))
    except RecursionError:
        raise ConfigError(source, ["(top level): nested too deeply"]) from None
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check spelling)"
            elif err["type"] == "finite_number":
                msg = "must be a finite number (not nan or inf)"
            elif err["type"] in _SCALAR_TYPES and isinstance(err.get("input"), str):
                msg += f", not the quoted text {clip(repr(err['input']), 40)} (write it without quotes)"
            problems.append(f"{_key(err['loc'])}: {msg}")
        raise ConfigError(source, problems) from None
    # A plugin that works on another's part (the fleet on the sync's windows) is refused here, not at start.
    unmet = unmet_needs(config)
    if unmet:
        raise ConfigError(source, unmet)
    return config


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), ["is a directory, not a configuration file"]) from None
    except OSError as e:
        raise ConfigError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"larger than {MAX_CONFIG_BYTES} bytes; not a configuration file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), [f"not UTF-8 text (byte {e.start}): TOML files are UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), [f"not valid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError(str(p), ["not valid TOML: nested too deeply"]) from None
    return parse_config(data, str(p))
