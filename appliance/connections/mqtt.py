"""MQTT session settings shared by the MQTT input and the MQTT alarm notifier."""

from __future__ import annotations

import ssl

from appliance.connections.config import MqttBroker
from appliance.settings import TlsConfig


def build_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSL context from a broker's ``tls`` section; ValueError names the bad key."""
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"broker.tls.ca_file: cannot load {tls.ca_file!r}: {e}") from None
    if tls.cert_file or tls.key_file:
        if not tls.cert_file:
            raise ValueError("broker.tls.cert_file: required when key_file is set")
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"broker.tls.cert_file/key_file: cannot load client certificate "
                             f"{tls.cert_file!r}: {e}") from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def configure_paho(client, broker: MqttBroker, tls_context: ssl.SSLContext | None = None) -> None:
    """Apply credentials and TLS from a broker section to a paho ``Client``."""
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls.enabled:
        client.tls_set_context(tls_context or build_tls_context(broker.tls))
