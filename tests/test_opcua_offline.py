"""OPC-UA without a PLC: status codes to quality, config errors that name the key, which server
certificates are trusted, and the client certificate made once and kept.

The connector against the real PLC simulator: test_opcua_connector.py and test_opcua_security.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from asyncua import ua
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from appliance.config import ConfigError, parse_config
from appliance.connections.opcua import (UntrustedServerCertificate, check_server_certificate,
                                         ensure_client_certificate, quality_of)
from appliance.core import Quality


def test_quality_mapping():
    assert quality_of(None) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) is Quality.UNCERTAIN
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadSensorFailure)) is Quality.BAD


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"opcua": {"nodes": [{"node": "Pump1.Current", "asset": "p", "sensor": "c"}]}}})
    assert "inputs.opcua.nodes.0.node" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"opcua": {"security_policy": "Basic256Sha256", "security_mode": "None"}}})
    assert "security_mode" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"opcua": {"nodes": [
            {"node": "ns=2;s=A", "asset": "p", "sensor": "c"}, {"node": "ns=2;s=B", "asset": "p", "sensor": "c"}]}}})
    assert "mapped twice" in str(e.value)


def test_trust_by_ca_validity_and_identity():
    ca_key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(ca_key, "plant-ca", {}, [], extended=[])
    srv_key = cert_gen.generate_private_key()
    now = dt.datetime.now(dt.timezone.utc)

    def issued(not_before, not_after, issuer_key=ca_key, issuer=ca):
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plc")]))
                .issuer_name(issuer.subject).public_key(srv_key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                .not_valid_after(not_after).sign(issuer_key, hashes.SHA256()))

    good = issued(now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    der = good.public_bytes(Encoding.DER)
    assert check_server_certificate(der, [ca]) == good          # issued by a trusted CA
    assert check_server_certificate(der, [good]) == good        # pinned directly
    other_key = cert_gen.generate_private_key()
    other_ca = cert_gen.generate_self_signed_app_certificate(other_key, "plant-ca", {}, [], extended=[])
    with pytest.raises(UntrustedServerCertificate, match="not trusted"):
        check_server_certificate(der, [other_ca])               # same CA name, different key
    expired = issued(now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    with pytest.raises(UntrustedServerCertificate, match="validity"):
        check_server_certificate(expired.public_bytes(Encoding.DER), [ca])
    with pytest.raises(UntrustedServerCertificate):
        check_server_certificate(None, [ca])


def test_client_certificate_generated_once(tmp_path):
    async def run():
        c1, k1 = await ensure_client_certificate(tmp_path, "urn:a")
        b1 = c1.read_bytes()
        c2, _ = await ensure_client_certificate(tmp_path, "urn:a")
        assert c2.read_bytes() == b1
        # A different application URI makes the old certificate invalid for this client: new one.
        c3, _ = await ensure_client_certificate(tmp_path, "urn:b")
        assert c3.read_bytes() != b1
        assert "urn:b" in x509.load_der_x509_certificate(c3.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)

    asyncio.run(run())
