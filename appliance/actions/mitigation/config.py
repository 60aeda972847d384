"""``[outputs.mitigation]``: the allow-list, limits, interlocks and rules of guarded PLC writes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from appliance.actions.mitigation.audit import default_key_path
from appliance.connections.config import OpcuaEndpointConfig, check_node_ref
from appliance.settings import DAY_S, MAX_PHYSICAL, Section, StatePath


class MitigationTarget(Section):
    """A PLC node the appliance may write (the allow-list), with the limits every write obeys.

    ``min``/``max`` must lie inside ``engineering_range``, the node's range in
    engineering units (default 0..100: a percent, as valve positions and speed
    setpoints are); at start the mitigation also checks them against the range the
    PLC declares for the node (its EURange) and refuses to arm if they are outside.
    """

    node: str
    min: float = Field(ge=-MAX_PHYSICAL, le=MAX_PHYSICAL)
    max: float = Field(ge=-MAX_PHYSICAL, le=MAX_PHYSICAL)
    engineering_range: tuple[float, float] = Field(
        (0.0, 100.0), description="[low, high] of the node in engineering units; min and max lie inside")
    max_step: float | None = Field(None, gt=0, le=MAX_PHYSICAL, description="largest change in one write")
    max_rate_per_min: float | None = Field(
        None, gt=0, le=MAX_PHYSICAL, description="largest total change written within any 60 s")
    cooldown_s: float = Field(60.0, ge=0, le=DAY_S, description="minimum time between two writes to this node")
    tolerance: float = Field(1e-6, ge=0, le=MAX_PHYSICAL,
                             description="read-back must equal the written value within this")

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return check_node_ref(v)

    @model_validator(mode="after")
    def _range_ok(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        lo, hi = self.engineering_range
        if not (-MAX_PHYSICAL <= lo < hi <= MAX_PHYSICAL):
            raise ValueError(f"engineering_range [{lo:g}, {hi:g}] must be [low, high] with low < high, "
                             f"within ±{MAX_PHYSICAL:g}")
        if self.min < lo or self.max > hi:
            raise ValueError(f"limits [{self.min:g}, {self.max:g}] are outside the engineering_range "
                             f"[{lo:g}, {hi:g}] of {self.node} (set engineering_range to the node's range)")
        return self


class MitigationInterlock(Section):
    """A condition read from the PLC just before a write; the write is refused unless it holds."""

    name: str = Field(min_length=1)
    node: str
    op: Literal["==", "!=", "<", "<=", ">", ">="] = "=="
    value: bool | Annotated[float, Field(ge=-MAX_PHYSICAL, le=MAX_PHYSICAL)]

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return check_node_ref(v)


class MitigationRule(Section):
    """When an alarm on ``asset`` reaches ``min_level`` with one of ``sensors`` among its top
    contributors, write ``node``: either ``set_value`` or current value ``+ change_by``."""

    name: str = Field(min_length=1)
    asset: str = Field("*", description="asset name or fnmatch pattern")
    min_level: Literal["anomaly", "critical"] = "anomaly"
    sensors: tuple[str, ...] = Field((), description="any of these among the top sensors; empty = any")
    top_n: int = Field(3, ge=1, le=1000, description="how many top contributing sensors are considered")
    node: str
    set_value: float | None = Field(None, ge=-MAX_PHYSICAL, le=MAX_PHYSICAL)
    change_by: float | None = Field(None, ge=-MAX_PHYSICAL, le=MAX_PHYSICAL)
    interlocks: tuple[MitigationInterlock, ...] = Field((), description="in addition to the global ones")
    require_approval: bool | None = Field(None, description="default: mitigation.require_approval")
    revert_after_s: float | None = Field(None, gt=0, le=30 * DAY_S, description="restore the previous value after this")
    revert_on_clear: bool = Field(False, description="restore the previous value when the alarm clears")

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return check_node_ref(v)

    @model_validator(mode="after")
    def _one_action(self):
        if (self.set_value is None) == (self.change_by is None):
            raise ValueError("exactly one of set_value or change_by must be given")
        return self


class MitigationConfig(Section):
    """Guarded writes to the PLC. Advise-only (proposals audited, nothing written) until armed."""

    enabled: bool = False
    armed: bool = False
    plc: OpcuaEndpointConfig | None = Field(None, description="default: [connections.opcua]")
    audit_db: StatePath = Field("mitigation_audit.db", description="append-only audit log (SQLite), in data_dir")
    audit_key: str = Field(default_factory=default_key_path, min_length=1,
                           description="HMAC key of the audit chain, an absolute path outside data_dir (made "
                                       "0600 if absent; default $EDGE_ANOMALY_AUDIT_KEY or "
                                       "/etc/edge-anomaly/audit.key); its head file goes beside it")
    actor: str = Field("appliance", min_length=1, description="who the audit log names for automatic writes")
    require_approval: bool = False
    approval_timeout_s: float = Field(900.0, gt=0, le=7 * DAY_S)
    readback_delay_s: float = Field(0.5, ge=0, le=30, description="PLC scan time to wait before the read-back")
    targets: tuple[MitigationTarget, ...] = ()
    interlocks: tuple[MitigationInterlock, ...] = Field((), description="checked before every write")
    rules: tuple[MitigationRule, ...] = ()

    @field_validator("audit_key")
    @classmethod
    def _key_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path, outside data_dir (whoever can rewrite the log must "
                             "not be able to read the key)")
        return v

    @model_validator(mode="after")
    def _unique(self):
        for what, names in (("rules", [r.name for r in self.rules]),
                            ("targets", [t.node for t in self.targets]),
                            ("interlocks", [i.name for i in self.interlocks])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what}: duplicate {', '.join(dup)}")
        return self
