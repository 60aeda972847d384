"""Client TLS contexts: the one way the appliance opens a verified connection to a server.

The MQTT input and alarm notifier (a broker's ``tls`` section), the cloud uplink
(MQTT or HTTPS) and the model-update fetcher all build their context here, so
every one verifies the server the same way: the certificate chain against
``ca_file`` (or the system's store), the host name, TLS 1.2 at least, and a
client certificate when one is configured.
"""

from __future__ import annotations

import ssl


class TlsFileError(ValueError):
    """A CA bundle or a client certificate that cannot be used; one line naming the key (``broker.tls.ca_file``)."""


def client_context(ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None, *,
                   keys: str = "tls", minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                   verify: bool = True) -> ssl.SSLContext:
    """A client context checking the server's chain (``ca_file``, None: the system's CAs) and host name.

    ``cert_file``/``key_file``: the client certificate, when the server asks for one
    (``key_file`` None: the key is in ``cert_file``; a key without a certificate is
    refused). ``verify=False`` checks neither chain nor name: only for a broker's
    explicit ``insecure_skip_verify``. ``keys`` is where the files are configured,
    so a :class:`TlsFileError` names the key to fix.

    >>> client_context().minimum_version is ssl.TLSVersion.TLSv1_2
    True
    >>> client_context(key_file="client.key", keys="broker.tls")
    Traceback (most recent call last):
    ...
    appliance.connections.tls.TlsFileError: broker.tls.cert_file: required when key_file is set
    """
    if key_file and not cert_file:
        raise TlsFileError(f"{keys}.cert_file: required when key_file is set")
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise TlsFileError(f"{keys}.ca_file: cannot load {ca_file}: {e}") from None
    ctx.minimum_version = minimum_version
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsFileError(f"{keys}.cert_file/key_file: cannot load the client certificate {cert_file}: {e}") \
                from None
    if not verify:
        ctx.check_hostname = False  # before verify_mode: Python refuses CERT_NONE while names are checked
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
