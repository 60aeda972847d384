"""The base every config section is built on, and the small pieces several share.

A section is a frozen pydantic model that forbids unknown keys (a typo in a
factory config must not be silently ignored), refuses NaN and infinity for
every float (a NaN limit would disable the guard it sets) and is strict: a
quoted ``"true"`` or ``"1883"`` is refused, not coerced (``enabled = "true"``
must not turn PLC writes on by accident). An integer is still a float. Each
plugin keeps its own section beside its code; :mod:`appliance.config` only
assembles them.

:data:`StatePath` and :data:`ReadPath` keep the appliance's folders and files out
of the system's: ``data_dir = "/proc/self"`` or ``bundle = "/etc"`` is refused.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# A day, a year: upper bounds for durations that keep a typo (an extra zero or
# three) from becoming a timer that never fires.
DAY_S = 86400.0
YEAR_S = 366 * DAY_S


# The largest magnitude a configured physical value (a range, a limit, a set value) may have:
# far beyond any plant quantity, far below where float32 scoring overflows (3.4e38).
MAX_PHYSICAL = 1e15

# Folders of the operating system. The appliance's own folders and databases may be
# none of these, nor inside the first group (config, programs, kernel interfaces).
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys",
                 "/usr")
_SYSTEM_ROOTS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var")
# A model bundle is only read, so a packaged one may sit under /usr/share or /etc: only
# the system folders themselves and the kernel's pseudo-filesystems are refused.
_PSEUDO_TREES = ("/dev", "/proc", "/sys")


def _under(path: str, trees: tuple[str, ...]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in trees)


def system_folder(path: str, *, read_only: bool = False) -> str | None:
    """Why ``path`` is a system folder (or inside one) the appliance must not use, else None.

    >>> system_folder("/proc/self"), system_folder("/var/lib/appliance"), system_folder("var")
    ('/proc/self is inside /proc, a system folder', None, None)
    >>> system_folder("/etc", read_only=True), system_folder("/usr/share/appliance/model", read_only=True)
    ('/etc is a system folder', None)
    """
    if not path.startswith("/"):
        return None  # relative to data_dir (or the working folder), which is itself checked
    norm = os.path.normpath(path).replace("//", "/")
    if norm in _SYSTEM_ROOTS or norm in _SYSTEM_TREES:
        return f"{path} is a system folder"
    trees = _PSEUDO_TREES if read_only else _SYSTEM_TREES
    for t in trees:
        if _under(norm, (t,)):
            return f"{path} is inside {t}, a system folder"
    return None


def _state_path(v: str) -> str:
    why = system_folder(v)
    if why:
        raise ValueError(f"{why}; give the appliance a folder of its own (e.g. /var/lib/appliance)")
    return v


def _read_path(v: str) -> str:
    why = system_folder(v, read_only=True)
    if why:
        raise ValueError(f"{why}; give a folder of the appliance's own")
    return v


#: A folder or database the appliance writes (data_dir, the store, outboxes, the audit log).
StatePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_state_path)]
#: A folder the appliance only reads (a model bundle).
ReadPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_read_path)]


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _arrays_are_tuples(cls, v, info: ValidationInfo):
        """A list given in Python stands for a TOML array: strict mode takes only a tuple for a tuple field."""
        if isinstance(v, (list, dict)):
            shape = repr(cls.model_fields[info.field_name].annotation)
            if "tuple" in shape and "list" not in shape:
                return _tuples(v)
        return v


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
