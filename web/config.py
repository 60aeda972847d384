"""``[web]``: where the dashboard listens."""

from __future__ import annotations

from pydantic import Field

from appliance.settings import Section


class WebConfig(Section):
    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(8080, ge=0, le=65535)
