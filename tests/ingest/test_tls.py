"""TLS and mutual TLS with real certificates, from pyarrow and the ADBC Flight SQL driver."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flight_writer.config import ConfigError, build_settings

from helpers import action, put, read_dataset, running


def issue(name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, server: bool = False):
    """A certificate for ``name``, signed by ``ca`` (self-signed CA when None), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca[1] if ca else key, hashes.SHA256())
    return cert, key


def pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path | bytes]:
    ca = issue("flight-writer test CA", None)
    files: dict[str, Path | bytes] = {}
    for name, (cert, key) in {
        "ca": ca,
        "server": issue("127.0.0.1", ca, server=True),
        "client": issue("producer-1", ca),
        "stranger": issue("stranger", issue("another CA", None)),
    }.items():
        cert_pem, key_pem = pem(cert, key)
        (tmp_path / f"{name}.pem").write_bytes(cert_pem)
        (tmp_path / f"{name}.key").write_bytes(key_pem)
        files[name], files[f"{name}_key"] = cert_pem, key_pem
        files[f"{name}_file"], files[f"{name}_key_file"] = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    return files


def tls_server(pki, client_ca: bool = False) -> dict[str, str]:
    server = {
        "location": "grpc+tls://127.0.0.1:0",
        "tls_cert_file": str(pki["server_file"]),
        "tls_key_file": str(pki["server_key_file"]),
    }
    if client_ca:
        server["tls_client_ca_file"] = str(pki["ca_file"])
    return server


def batch() -> pa.RecordBatch:
    return pa.record_batch({"i": pa.array(range(10), pa.int64())})


def test_tls_with_pyarrow(data_root, pki):
    with running(data_root, server=tls_server(pki)) as svc:
        assert svc.location.startswith("grpc+tls://127.0.0.1:")
        with flight.connect(svc.location, tls_root_certs=pki["ca"]) as c:
            put(c, "secure", [batch()])
            action(c, "flush")
        with flight.connect(svc.location) as c, pytest.raises(flight.FlightUnavailableError):
            action(c, "status")  # the server's certificate is not trusted without the CA
    assert read_dataset(data_root, "secure").num_rows == 10


def test_mutual_tls_needs_a_client_certificate_from_the_ca(data_root, pki):
    with running(data_root, server=tls_server(pki, client_ca=True)) as svc:
        with flight.connect(
            svc.location, tls_root_certs=pki["ca"], cert_chain=pki["client"], private_key=pki["client_key"]
        ) as c:
            assert action(c, "status")["received_seq"] == 0
        for options in ({}, {"cert_chain": pki["stranger"], "private_key": pki["stranger_key"]}):
            with (
                flight.connect(svc.location, tls_root_certs=pki["ca"], **options) as c,
                pytest.raises(flight.FlightUnavailableError),
            ):
                action(c, "status")


def test_adbc_over_tls(data_root, pki):
    import adbc_driver_flightsql.dbapi as flightsql

    with running(data_root, server=tls_server(pki)) as svc:
        options = {"adbc.flight.sql.client_option.tls_root_certs": pki["ca"].decode()}
        with flightsql.connect(svc.location, db_kwargs=options, autocommit=True) as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("secure_sql", pa.table({"a": [1, 2, 3]}), mode="create") == 3
    assert read_dataset(data_root, "secure_sql").num_rows == 3


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ({"location": "grpc+tls://127.0.0.1:0"}, "needs server.tls_cert_file and server.tls_key_file"),
        ({"tls_cert_file": "x.pem", "tls_key_file": "x.key"}, "not grpc\\+tls://"),
        (
            {"location": "grpc+tls://127.0.0.1:0", "tls_cert_file": "/nope.pem", "tls_key_file": "/nope.key"},
            "no such file",
        ),
    ],
)
def test_tls_settings_are_checked_at_startup(server, problem):
    with pytest.raises(ConfigError, match=problem):
        build_settings({"server": server})


def test_check_command_over_tls(data_root, pki):
    import subprocess
    import sys

    with running(data_root, server=tls_server(pki)) as svc:
        command = [sys.executable, "-m", "flight_writer.cli", "check", "--location", svc.location]
        done = subprocess.run([*command, "--tls-ca", str(pki["ca_file"])], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and '"received_seq": 0' in done.stdout
        assert subprocess.run(command, capture_output=True, text=True, timeout=60).returncode == 1  # untrusted
