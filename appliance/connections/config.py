"""``[connections.mqtt]`` and ``[connections.opcua]``: where the broker and the PLC are."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings import BackoffConfig, Section, StatePath, TlsConfig


class MqttBroker(Section):
    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: TlsConfig = TlsConfig()
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect: BackoffConfig = BackoffConfig()


_NODEID_RE = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?[isgb]=.+$")
_BROWSE_SEGMENT_RE = re.compile(r"^\d+:[^/]+$")


def check_node_ref(v: str, what: str = "node") -> str:
    """A NodeId string (``ns=2;s=Pump1.Current``) or a browse path (``0:Objects/2:Pump1/2:Current``).

    >>> check_node_ref("ns=2;s=Pump1.Current")
    'ns=2;s=Pump1.Current'
    >>> check_node_ref("Pump1.Current")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: node 'Pump1.Current' is neither a NodeId (ns=2;s=Pump1.Current) nor a browse path (0:Objects/...)
    """
    v = v.strip()
    if _NODEID_RE.match(v):
        return v
    segments = v.strip("/").split("/")
    if len(segments) > 1 and all(_BROWSE_SEGMENT_RE.match(s) for s in segments):
        return v
    raise ValueError(f"{what} {v!r} is neither a NodeId (ns=2;s=Pump1.Current) nor a browse path "
                     "(0:Objects/2:PumpLine/2:Pump1/2:Current)")


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
    client_cert_dir: StatePath = Field("pki/client", description="client key+certificate, generated once")
    application_uri: str = "urn:edge-anomaly-appliance:opcua-client"
    trusted_server_certs: tuple[str, ...] = Field(
        (), description="server (or CA) certificates, files or directories of .der/.pem")
    request_timeout_s: float = Field(4.0, gt=0, le=300)
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


class ConnectionsConfig(Section):
    """The broker and the PLC, shared by the inputs and outputs that use them."""

    mqtt: MqttBroker = MqttBroker()
    opcua: OpcuaEndpointConfig = OpcuaEndpointConfig()
