"""``[sync.updates]``: where signed model releases come from and where they go.

Kept apart from :mod:`appliance.sync.updates` so that loading the config never
imports python-tuf.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from appliance.settings import DAY_S, Section, StatePath


class ModelUpdatesConfig(Section):
    """Model updates through TUF. Paths are relative to ``data_dir`` unless absolute."""

    enabled: bool = False
    source: str = Field("", description="https://host/path of the published repository, or a folder "
                                        "(absolute path or file:// URL) holding one, e.g. a USB stick")
    trusted_root: str = Field("tuf/root.json", min_length=1,
                              description="the repository's root.json, installed on the gateway out of band")
    state_dir: StatePath = Field("updates", description="TUF metadata cache, partial downloads, state")
    bundles_dir: StatePath = Field("releases", description="verified bundles, one directory per version")
    model_name: str | None = Field(None, description="which model of the repository this gateway runs "
                                                     "(default: the only one published)")
    ca_file: str | None = Field(None, description="CA bundle for the repository host (default: system store)")
    cert_file: str | None = None
    key_file: str | None = None
    socket_timeout_s: float = Field(30.0, gt=0, le=600)
    attempts: int = Field(3, ge=1, le=100, description="failures in a row, without new bytes, before a "
                                                       "download waits for the next window")
    max_archive_mb: float = Field(512.0, gt=0, le=2048, description="a model bundle is a few MB; at most 2 GB")
    clock_tolerance_s: float = Field(300.0, ge=0, le=DAY_S,
                                     description="how far the clock may lag the newest signed time seen")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v and not (v.startswith("https://") or v.startswith("file://") or v.startswith("/")):
            raise ValueError("must be an https:// URL, a file:// URL or an absolute folder path "
                             "(plain http is refused: use TLS to the repository host)")
        return v

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,47}", v):
            raise ValueError("must be lower-case letters, digits and underscores (at most 48)")
        return v

    @model_validator(mode="after")
    def _complete(self):
        if self.enabled and not self.source:
            raise ValueError("source is required when model updates are enabled")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self
