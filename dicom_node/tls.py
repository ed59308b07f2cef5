"""TLS contexts for DICOM TLS (PS3.15 Annex B, Basic TLS Secure Transport, as updated
by the BCP 195 profiles): TLS 1.2 or later, certificates on both sides.

``server_context`` is the SCP's (``node.tls``); ``client_context`` the sender's
(``destinations.<name>.tls``). A file that cannot be read is an ``OSError`` or
``ssl.SSLError`` naming it, raised when the node starts.
"""

from __future__ import annotations

import ssl

from dicom_node.settings import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """Our certificate and key; clients verified against ``ca_file`` (required when
    ``require_client_certificate``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.certificate is not None and tls.key is not None  # checked by the settings
    context.load_cert_chain(tls.certificate, tls.key)
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else (
        ssl.CERT_OPTIONAL if tls.ca_file is not None else ssl.CERT_NONE)  # fmt: skip
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The destination's certificate verified against ``ca_file`` (or the system's
    CAs); ours presented when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    else:
        context.load_default_certs()
    if tls.certificate is not None and tls.key is not None:
        context.load_cert_chain(tls.certificate, tls.key)
    return context
