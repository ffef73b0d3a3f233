"""Orthanc from Debian's ``orthanc`` package as the real PACS of the tests:
started by the test with its own configuration (free ports, temporary
storage, no plugins), asked through its REST API what arrived."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port

ORTHANC = shutil.which("Orthanc")
AET = "TESTPACS"


class Orthanc:
    """One Orthanc process; ``start()``/``stop()`` may be called again (same ports and storage)."""

    def __init__(self, folder: Path, dicom_port: int | None = None, http_port: int | None = None) -> None:
        if ORTHANC is None:
            pytest.skip("Orthanc is not installed (./dev test installs Debian's orthanc)")
        self.folder = folder
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "ecg-gateway-test",
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "index"),
                    "DicomAet": AET,
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "DicomAlwaysAllowStore": True,
                    "Plugins": [],
                    "HttpServerEnabled": True,
                    "DicomServerEnabled": True,
                    "StorageCompression": False,
                    "ConcurrentJobs": 1,
                }
            )
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags (simplified) and Orthanc id."""
        out = []
        for oid in httpx.get(f"{self.url}/instances", timeout=10).json():
            tags = httpx.get(f"{self.url}/instances/{oid}/simplified-tags", timeout=10).json()
            out.append({"id": oid, **tags})
        return out

    def file(self, oid: str) -> bytes:
        return httpx.get(f"{self.url}/instances/{oid}/file", timeout=30).content


@contextmanager
def orthanc(folder: Path, *, start: bool = True) -> Iterator[Orthanc]:
    pacs = Orthanc(folder)
    if start:
        pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()
