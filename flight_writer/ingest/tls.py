"""The Flight server's TLS options from ``server.tls_*`` files, read once at start."""

from __future__ import annotations

from typing import Any

import pyarrow.flight as flight

from flight_writer.config import ServerSettings


def tls_options(s: ServerSettings) -> dict[str, Any]:
    """FlightServerBase's TLS arguments from server.tls_*: a certificate, and client certificates checked
    against a CA when ``tls_client_ca_file`` is set (mutual TLS)."""
    if not s.tls_cert_file:
        return {}
    with open(s.tls_cert_file, "rb") as cert, open(s.tls_key_file, "rb") as key:
        options: dict[str, Any] = {"tls_certificates": [flight.CertKeyPair(cert.read(), key.read())]}
    if s.tls_client_ca_file:
        with open(s.tls_client_ca_file, "rb") as ca:
            options.update(verify_client=True, root_certificates=ca.read())
    return options
