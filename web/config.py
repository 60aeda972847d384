"""``[web]``: where the dashboard listens, who may reach it, and how long a sign-in lasts."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from appliance.settings import DAY_S, Section, StatePath
from appliance.store.kpis import KpiThresholds

#: Host names the dashboard always answers to (the Host header is checked: DNS rebinding).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_HOST_RE = re.compile(r"\.?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


class KpiConfig(Section):
    """``[web.kpis]``: the thresholds of the alarm-system KPIs (ISA-18.2 / IEC 62682, EEMUA 191) the dashboard's
    KPI page, its banner and ``/metrics`` report (:mod:`appliance.store.kpis`)."""

    chatter_count: int = Field(3, ge=2, le=100, description="raise-and-clear cycles of one asset that make it "
                                                              "chattering, within chatter_window_s")
    chatter_window_s: float = Field(600.0, ge=10, le=DAY_S)
    flood_count: int = Field(10, ge=2, le=10_000, description="alarms across the gateway within flood_window_s "
                                                                "that make a flood (EEMUA 191: 10 in 10 min)")
    flood_window_s: float = Field(600.0, ge=10, le=DAY_S)
    stale_s: float = Field(DAY_S, ge=60, le=365 * DAY_S, description="an alarm active longer is stale")
    bad_actors: int = Field(5, ge=1, le=100, description="assets listed as the top alarm sources")
    cache_s: float = Field(10.0, ge=0, le=3600, description="a KPI report is reused this long by /metrics and "
                                                              "the pages (0: computed at every request)")

    def thresholds(self) -> KpiThresholds:
        return KpiThresholds(self.chatter_count, self.chatter_window_s, self.flood_count, self.flood_window_s,
                             self.stale_s, self.bad_actors)


class WebConfig(Section):
    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, max_length=253,
                      description="address to listen on; for a tablet, the gateway's LAN address (or 0.0.0.0), "
                                  "and its name or address in trusted_hosts")
    port: int = Field(8080, ge=0, le=65535)
    accounts: StatePath | None = Field(None, description="accounts file, relative to data_dir "
                                                   "(default: accounts.db beside the store)")
    trusted_hosts: list[str] = Field(
        default_factory=list, max_length=64,
        description="names and addresses the browser may use to reach the dashboard, besides localhost and the "
                    "listening address; '.example.com' also accepts every subdomain")
    idle_timeout_s: float = Field(1800.0, ge=60, le=DAY_S, description="sign out after this long without use")
    session_max_s: float = Field(12 * 3600.0, ge=300, le=7 * DAY_S, description="sign out this long after signing in")
    secure_cookies: bool = Field(False, description="always mark the session cookie Secure (it is anyway when the "
                                                    "request came over TLS)")
    trusted_proxy: str | None = Field(None, description="address of a TLS-terminating reverse proxy whose "
                                                        "X-Forwarded-Proto/-For headers are believed")
    metrics_token_file: str | None = Field(None, description="file holding a bearer token a scraper sends to "
                                                             "/metrics (relative to data_dir)")
    metrics_public: bool = Field(False, description="serve /metrics to anyone who reaches the port (site, model "
                                                    "version, threshold); by default only to the bearer token or "
                                                    "a signed-in user")
    threads: int = Field(8, ge=1, le=64, description="requests worked on at once (more get a quick 503)")
    live_streams: int = Field(8, ge=0, le=64, description="live-update connections (server-sent events) at once")
    kpis: KpiConfig = KpiConfig()

    @field_validator("trusted_hosts")
    @classmethod
    def _hosts_ok(cls, v: list[str]) -> list[str]:
        for h in v:
            if not (_HOST_RE.fullmatch(h) or _is_ip(h)):
                raise ValueError(f"{h!r} is not a host name or IP address (no port, no scheme)")
            if h.startswith(".") and h.strip(".").count(".") < 1:
                raise ValueError(f"{h!r} would accept every host under a top-level domain; give the site's "
                                 "own domain, e.g. '.plant.example.com'")
        return v

    @model_validator(mode="after")
    def _timeouts_ordered(self):
        if self.idle_timeout_s > self.session_max_s:
            raise ValueError("idle_timeout_s must be <= session_max_s")
        return self

    def allowed_hosts(self) -> list[str]:
        """Every Host the dashboard answers to: localhost, the listening address, ``trusted_hosts``."""
        hosts = list(LOCAL_HOSTS)
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.append(self.host)
        hosts += self.trusted_hosts
        return list(dict.fromkeys(hosts))


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h.strip("[]"))
    except ValueError:
        return False
    return True
