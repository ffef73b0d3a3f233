"""`model fetch`, `model list`, `model verify` against a real local HTTP server.

The server is Python's http.server in a thread, serving a zip of the
published layout with tiny HDF5 placeholders.  It honours Range requests, and
can cut the connection mid-body (what a real server or proxy does on a fault).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console

from gateway.infer.fetch import FetchError, fetch_archive, fetch_model
from gateway.infer.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _placeholder_hdf5(value: int) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["w"] = np.full(2000, value, dtype=np.float32)  # some bulk so a cut lands mid-body
    return buf.getvalue()


def build_archive(with_main: bool = True) -> bytes:
    """A zip with the published layout: model/, other_seeds/, other_splits/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        if with_main:
            zf.writestr("model/model.hdf5", _placeholder_hdf5(0))
        for i in range(1, 11):
            zf.writestr(f"other_seeds/model_{i}.hdf5", _placeholder_hdf5(i))
        zf.writestr("other_splits/model_date_order.hdf5", _placeholder_hdf5(99))
    return buf.getvalue()


@dataclass
class Served:
    """What the server serves and how it misbehaves; requests are logged."""

    body: bytes
    #: Cut the connection after this many body bytes, for the next ``cuts`` responses.
    cut_at: int = 0
    cuts: int = 0
    ignore_range: bool = False
    status: int = 200
    requests: list[dict[str, str | None]] = field(default_factory=list)


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            served.requests.append({"path": self.path, "range": rng})
            if served.status != 200:
                self.send_error(served.status)
                return
            body, start = served.body, 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not served.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if served.cuts > 0:
                served.cuts -= 1
                self.wfile.write(chunk[: served.cut_at])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the fault: the peer goes away mid-body
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture(scope="module")
def archive() -> bytes:
    return build_archive()


@pytest.fixture
def server(archive: bytes) -> Iterator[tuple[str, Served]]:
    served = Served(body=archive)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/records/3765717/files/model.zip?download=1"
    yield url, served
    httpd.shutdown()
    httpd.server_close()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _member(archive: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return zf.read(name)


def test_fetch_main_model_with_progress_and_manifest(server, archive, tmp_path):
    url, served = server
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    files = fetch_model(url, md5_of(archive), tmp_path, include_seeds=False, progress=True, console=console)
    assert files == [tmp_path / "model.hdf5"]
    assert (tmp_path / "model.hdf5").read_bytes() == _member(archive, "model/model.hdf5")
    assert not (tmp_path / "other_seeds").exists()
    assert not (tmp_path / "model.zip").exists() and not (tmp_path / "model.zip.part").exists()
    shown = out.getvalue()
    size_kb = f"{len(archive) / 1000:.1f}"
    assert re.match(rf"model\.zip .* {size_kb}/{size_kb} kB ", shown), shown  # the finished bar
    entry = read_manifest(tmp_path)["files"]["model.hdf5"]
    assert entry["sha256"] == sha256_of(tmp_path / "model.hdf5")
    assert entry["size"] == (tmp_path / "model.hdf5").stat().st_size
    assert entry["member"] == "model/model.hdf5" and entry["archive_md5"] == md5_of(archive)
    assert [r["range"] for r in served.requests] == [None]


def test_fetch_all_extracts_the_ten_seeds(server, archive, tmp_path):
    url, _ = server
    files = fetch_model(url, md5_of(archive), tmp_path, include_seeds=True, progress=False, keep_archive=True)
    assert len(files) == 11
    for i in range(1, 11):
        path = tmp_path / "other_seeds" / f"model_{i}.hdf5"
        assert path.read_bytes() == _member(archive, f"other_seeds/model_{i}.hdf5")
    recorded = read_manifest(tmp_path)["files"]
    assert sorted(recorded) == sorted(["model.hdf5"] + [f"other_seeds/model_{i}.hdf5" for i in range(1, 11)])
    assert all(recorded[k]["sha256"] == sha256_of(tmp_path / k) for k in recorded)
    assert (tmp_path / "model.zip").read_bytes() == archive  # kept as asked
    assert not (tmp_path / "other_splits").exists()


def test_checksum_mismatch_deletes_download_and_says_so(server, tmp_path):
    url, _ = server
    wrong = "0" * 32
    with pytest.raises(FetchError, match=r"checksum mismatch .* expected 0{32}; the download was deleted"):
        fetch_model(url, wrong, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(server, archive, tmp_path):
    url, served = server
    served.cut_at, served.cuts = len(archive) // 3, 1
    files = fetch_model(url, md5_of(archive), tmp_path, progress=False, retry_delay_s=0)
    assert files[0].read_bytes() == _member(archive, "model/model.hdf5")
    assert [r["range"] for r in served.requests] == [None, f"bytes={len(archive) // 3}-"]


def test_repeated_cuts_keep_part_file_and_next_run_resumes(server, archive, tmp_path):
    url, served = server
    served.cut_at, served.cuts = 1000, 2
    with pytest.raises(FetchError, match=r"interrupted 2 times.*run `ecg-gateway model fetch` again to resume"):
        fetch_model(url, md5_of(archive), tmp_path, progress=False, attempts=2, retry_delay_s=0)
    part = tmp_path / "model.zip.part"
    assert part.stat().st_size == 2000
    assert not (tmp_path / "model.hdf5").exists()
    fetch_model(url, md5_of(archive), tmp_path, progress=False, retry_delay_s=0)
    assert [r["range"] for r in served.requests] == [None, "bytes=1000-", "bytes=2000-"]
    assert (tmp_path / "model.hdf5").read_bytes() == _member(archive, "model/model.hdf5")
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, archive, tmp_path):
    url, served = server
    served.cut_at, served.cuts, served.ignore_range = 5000, 1, True
    fetch_model(url, md5_of(archive), tmp_path, progress=False, retry_delay_s=0)
    assert [r["range"] for r in served.requests] == [None, "bytes=5000-"]
    assert (tmp_path / "model.hdf5").read_bytes() == _member(archive, "model/model.hdf5")


def test_stale_part_longer_than_archive_restarts(server, archive, tmp_path):
    url, served = server
    (tmp_path / "model.zip.part").write_bytes(b"x" * (len(archive) + 10))
    fetch_model(url, md5_of(archive), tmp_path, progress=False, retry_delay_s=0)
    assert [r["range"] for r in served.requests] == [f"bytes={len(archive) + 10}-", None]
    assert (tmp_path / "model.hdf5").read_bytes() == _member(archive, "model/model.hdf5")


def test_http_error_is_one_clear_line(server, archive, tmp_path):
    url, served = server
    served.status = 404
    with pytest.raises(FetchError, match=r"^download failed: HTTP 404 .* from http://127\.0\.0\.1"):
        fetch_model(url, md5_of(archive), tmp_path, progress=False)


def test_archive_without_main_model_is_refused(server, tmp_path):
    url, served = server
    served.body = build_archive(with_main=False)
    with pytest.raises(FetchError, match="not the published model archive: no model/model.hdf5"):
        fetch_model(url, md5_of(served.body), tmp_path, progress=False)
    assert not (tmp_path / "model.hdf5").exists()


def test_bad_md5_setting_is_refused_before_download(server, tmp_path):
    url, served = server
    with pytest.raises(FetchError, match="not an md5 digest"):
        fetch_model(url, "abc", tmp_path, progress=False)
    assert served.requests == []


# --- the command line: real subprocesses, so we also see what gets imported --------------------

_HEAVY_CHECK = (
    "import sys, runpy; sys.argv = ['ecg-gateway', *sys.argv[1:]]\n"
    "code = 0\n"
    "try:\n    runpy.run_module('gateway', run_name='__main__')\n"
    "except SystemExit as e: code = e.code or 0\n"
    "bad = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]\n"
    "print('HEAVY:' + ','.join(bad))\n"
    "sys.exit(code)\n"
)


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    full.update(
        {
            "ECG_GATEWAY_MODEL__DIR": str(tmp_path / "models"),
            "ECG_GATEWAY_MODEL__FILES": f'["{tmp_path}/models/model.hdf5"]',
            "ECG_GATEWAY_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/g.db",
        }
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", _HEAVY_CHECK, *args], capture_output=True, text=True, env=full, cwd=ROOT, timeout=120
    )


def test_cli_fetch_list_verify_without_tensorflow(server, archive, tmp_path):
    url, _ = server
    r = run_cli(
        tmp_path, "model", "fetch", "--no-progress", ECG_GATEWAY_MODEL__URL=url, ECG_GATEWAY_MODEL__MD5=md5_of(archive)
    )
    assert r.returncode == 0, r.stderr
    model = tmp_path / "models" / "model.hdf5"
    assert f"installed {model}" in r.stdout
    assert "HEAVY:\n" in r.stdout

    r = run_cli(tmp_path, "model", "list")
    assert r.returncode == 0, r.stderr
    assert sha256_of(model) in r.stdout and f"{model.stat().st_size:,}" in r.stdout and " ok " in r.stdout
    assert "HEAVY:\n" in r.stdout

    r = run_cli(tmp_path, "model", "verify")
    assert r.returncode == 0, r.stderr
    assert f"ok       {model} sha256 {sha256_of(model)}" in r.stdout
    assert "HEAVY:\n" in r.stdout

    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    r = run_cli(tmp_path, "model", "verify")
    assert r.returncode == 1
    recorded = json.loads((tmp_path / "models" / "manifest.json").read_text())["files"]["model.hdf5"]["sha256"]
    assert f"CHANGED  {model} (sha256 {sha256_of(model)}, manifest says {recorded})" in r.stderr

    model.unlink()
    r = run_cli(tmp_path, "model", "verify")
    assert r.returncode == 1 and f"MISSING  {model} (file missing: run `ecg-gateway model fetch`)" in r.stderr


def test_cli_fetch_checksum_failure_exits_1(server, tmp_path):
    url, _ = server
    r = run_cli(
        tmp_path, "model", "fetch", "--no-progress", ECG_GATEWAY_MODEL__URL=url, ECG_GATEWAY_MODEL__MD5="f" * 32
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("model fetch: checksum mismatch for http://127.0.0.1")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "models" / "model.zip").exists()


def test_verify_with_nothing_installed_says_fetch(tmp_path):
    r = run_cli(tmp_path, "model", "verify")
    assert r.returncode == 1
    assert "run `ecg-gateway model fetch`" in r.stderr


def test_internal_mirror_as_file_url(archive, tmp_path):
    mirror = tmp_path / "share" / "model.zip"
    mirror.parent.mkdir()
    mirror.write_bytes(archive)
    files = fetch_model(mirror.as_uri(), md5_of(archive), tmp_path / "models", progress=False)
    assert files[0].read_bytes() == _member(archive, "model/model.hdf5")
    assert read_manifest(tmp_path / "models")["files"]["model.hdf5"]["source_url"] == mirror.as_uri()


# --- no model yet: `serve --fetch-model` (what ./dev serve runs), offline and from a file:// mirror -----


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:  # bound and closed: nothing listens there (no network here to be offline from)
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/records/3765717/files/model.zip?download=1"


@pytest.mark.parametrize("args", [["model", "fetch"], ["serve", "--fetch-model"]])
def test_offline_is_one_line_naming_the_ways_on(tmp_path, args):
    url = _closed_port_url()
    r = run_cli(tmp_path, *args, ECG_GATEWAY_MODEL__URL=url)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"cannot download {url}: [Errno 111] Connection refused" in lines[0]
    assert "[model] url" in lines[0] and "file://" in lines[0] and "ecg-gateway demo" in lines[0]
    assert "resume" not in lines[0]
    assert "HEAVY:\n" in r.stdout
    assert not (tmp_path / "g.db").exists()  # serve stopped before touching the database


def test_missing_mirror_file_is_one_line_too(tmp_path):
    r = run_cli(tmp_path, "model", "fetch", ECG_GATEWAY_MODEL__URL=(tmp_path / "share" / "model.zip").as_uri())
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"model fetch: cannot download {(tmp_path / 'share' / 'model.zip').as_uri()}: [Errno 2] No such file or "
        f"directory: '{tmp_path / 'share' / 'model.zip'}'; set [model] url (ECG_GATEWAY_MODEL__URL) to a mirror of "
        "model.zip (file:///path/to/model.zip works too), or try the pipeline without it: ecg-gateway demo"
    ]


def test_file_mirror_ignores_a_stale_part_file(archive, tmp_path):
    mirror = tmp_path / "share" / "model.zip"
    mirror.parent.mkdir()
    mirror.write_bytes(archive)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.zip.part").write_bytes(archive[:1000])  # left by an earlier HTTP attempt
    files = fetch_model(mirror.as_uri(), md5_of(archive), tmp_path / "models", progress=False)
    assert files[0].read_bytes() == _member(archive, "model/model.hdf5")


@pytest.mark.slow
def test_serve_fetch_model_from_a_file_mirror_then_serves(tmp_path, demo_model):
    """No model installed, [model] url a file:// mirror holding the archive
    with a (demo) model: serve fetches it, checks the md5, and starts."""
    import signal
    import socket
    import time

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(demo_model, "model/model.hdf5")
    mirror = tmp_path / "share" / "model.zip"
    mirror.parent.mkdir()
    mirror.write_bytes(buf.getvalue())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full = {k: v for k, v in os.environ.items() if not k.startswith("ECG_GATEWAY_")}
    full.update(
        {
            "ECG_GATEWAY_MODEL__DIR": str(tmp_path / "models"),
            "ECG_GATEWAY_MODEL__FILES": f'["{tmp_path}/models/model.hdf5"]',
            "ECG_GATEWAY_MODEL__URL": mirror.as_uri(),
            "ECG_GATEWAY_MODEL__MD5": md5_of(buf.getvalue()),
            "ECG_GATEWAY_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/g.db",
            "ECG_GATEWAY_STORAGE__SPOOL_DIR": str(tmp_path / "spool"),
            "ECG_GATEWAY_DICOM__PORT": str(port),
            "ECG_GATEWAY_DICOM__MIN_FREE_DISK_MB": "1",
        }
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--fetch-model", "--components", "scp,worker"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "gateway started: scp, worker" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "gateway started: scp, worker" in text
    assert f"installed {tmp_path / 'models' / 'model.hdf5'} (md5-checked archive from {mirror.as_uri()})" in text
    assert (tmp_path / "models" / "model.hdf5").read_bytes() == demo_model.read_bytes()
    assert read_manifest(tmp_path / "models")["files"]["model.hdf5"]["source_url"] == mirror.as_uri()


def test_a_cut_download_names_the_command_that_resumes_it(server, archive, tmp_path):
    url, served = server
    served.cut_at, served.cuts = 1000, 2
    with pytest.raises(FetchError, match=r"interrupted 2 times.*run `ecg-gateway validate --fetch` again to resume"):
        fetch_archive(
            url,
            tmp_path / "data.zip",
            md5_of(archive),
            settings="validate.url and validate.md5",
            progress=False,
            attempts=2,
            retry_delay_s=0,
            again="ecg-gateway validate --fetch",
        )
    assert (tmp_path / "data.zip.part").stat().st_size == 2000
