"""MQTT session settings shared by the MQTT input and the MQTT alarm notifier."""

from __future__ import annotations

import ssl

from appliance.connections.config import MqttBroker
from appliance.connections.tls import client_context
from appliance.settings import TlsConfig


def build_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSL context from a broker's ``tls`` section; :class:`TlsFileError` (a ValueError) names the bad key."""
    return client_context(tls.ca_file, tls.cert_file, tls.key_file, keys="broker.tls",
                          verify=not tls.insecure_skip_verify)


def configure_paho(client, broker: MqttBroker, tls_context: ssl.SSLContext | None = None) -> None:
    """Apply credentials and TLS from a broker section to a paho ``Client``."""
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls.enabled:
        client.tls_set_context(tls_context or build_tls_context(broker.tls))
