"""TLS on its own port: DCMTK storescu with and without a client certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import free_port
from gateway.config import DicomConfig, StorageConfig
from gateway.receive.scp import start_scp
from gateway.receive.spool import SUCCESS
from gateway.store.models import EcgInstance
from receive_helpers import storescu


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test ECG CA",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


def test_tls_requires_a_client_certificate(pki: Path, session_factory, tmp_path: Path, sample_path: Path) -> None:
    plain, tls = free_port(), free_port()
    cfg = DicomConfig(
        host="127.0.0.1",
        port=plain,
        tls_port=tls,
        min_free_disk_mb=0,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_ca=str(pki / "ca.pem"),
    )
    scp = start_scp(cfg, StorageConfig(spool_dir=str(tmp_path / "spool")), session_factory)
    try:
        assert scp.ports == [plain, tls]
        # no client certificate: the TLS handshake fails, nothing stored
        results, out = storescu(tls, [sample_path], extra=["+tla", "+cf", str(pki / "ca.pem")])
        assert results == [], out
        assert "Association Request Failed" in out, out
        with session_factory() as s:
            assert s.scalar(select(func.count()).select_from(EcgInstance)) == 0
        # with a certificate signed by the CA: stored
        results, out = storescu(
            tls,
            [sample_path],
            extra=["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")],
        )
        assert [s for _, s in results] == [SUCCESS], out
        with session_factory() as s:
            assert s.scalar(select(func.count()).select_from(EcgInstance)) == 1
    finally:
        scp.shutdown()
