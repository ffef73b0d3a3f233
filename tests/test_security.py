"""What a hostile network peer can do (issue #9, item 5); see docs/security.md.

The DICOM listener runs with small timeouts so that stalled peers are seen
being dropped; each test ends by checking the SCP still answers C-ECHO.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import warnings
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import func, select

import fuzz_helpers as fh
from admin_helpers import web_login
from gateway.config import Config, DicomConfig, StorageConfig
from gateway.receive.spool import CANNOT_UNDERSTAND_INVALID_UID, SUCCESS, IncomingInstance, StoreContext, store_instance
from gateway.store.models import EcgInstance
from gateway.store.spool import Spool
from receive_helpers import ecg_bytes, storescu, write

# the hostile peer is the subject: SQLite only, but for the SQL test (every_db)
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.one_db("sqlite")]
TIMEOUT_S = 1.0  # acse/network timeout of the SCP under test
TOKEN = "test-token-0123456789"
SQL_NAME = "O'Brien'); DROP TABLE ecg_instances;--^Robert"
HTML_NAME = '<script>alert("x")</script><img src=x onerror=alert(1)>^Eve'
SQL_ID = "' OR '1'='1"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def scp(session_factory, spool: Path, port: int):  # type: ignore[no-untyped-def]
    from gateway.receive.scp import start_scp

    dicom = DicomConfig(
        port=port,
        host="127.0.0.1",
        min_free_disk_mb=0,
        max_associations=2,
        acse_timeout=TIMEOUT_S,
        network_timeout=TIMEOUT_S,
        pdu_timeout=TIMEOUT_S,
        dimse_timeout=5,
    )
    server = start_scp(dicom, StorageConfig(spool_dir=str(spool)), session_factory)
    yield server
    server.shutdown()


def _echo(port: int) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="ECHO")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGGW")
    assert assoc.is_established
    status = assoc.send_c_echo().Status
    assoc.release()
    return status


def _closed_by_peer(sock: socket.socket, limit_s: float = 6.0) -> bytes:
    """Read until the gateway closes the connection; returns what it sent.
    Fails if it is still open after ``limit_s`` (a generous bound, many
    times the configured timeout: this is not a timing assertion)."""
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {limit_s} s (received {received[:32]!r})")
    return received


def _associate_rq_absurd() -> bytes:
    """An A-ASSOCIATE-RQ whose application-context item claims 65535 bytes."""
    body = struct.pack(">HH", 1, 0) + b"ECGGW".ljust(16) + b"EVIL".ljust(16) + bytes(32)
    body += struct.pack(">BBH", 0x10, 0, 0xFFFF) + b"1.2.840.10008.3.1.1.1"
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


MALFORMED = {
    "garbage": b"\x00GARBAGE\xff" * 10,
    "http-on-dicom-port": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown-pdu-type": struct.pack(">BBI", 0x09, 0, 4) + b"abcd",
    "p-data-before-association": struct.pack(">BBI", 0x04, 0, 6) + struct.pack(">IBB", 2, 1, 3),
    "associate-rq-absurd-item-length": _associate_rq_absurd(),
    "associate-rq-length-zero": struct.pack(">BBI", 0x01, 0, 0),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_pdu_is_dropped_and_scp_stays_up(scp, port: int, name: str, session_factory) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(MALFORMED[name])
        reply = _closed_by_peer(sock)
    # nothing, or an A-ASSOCIATE-RJ / A-ABORT: never an accepted association
    assert reply == b"" or reply[0] in (0x03, 0x07), reply[:16]
    assert _echo(port) == SUCCESS
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 0


def test_huge_pdu_length_does_not_grow_memory_and_is_dropped(scp, port: int) -> None:
    """A P-DATA PDU claiming 4 GiB: the bytes that never come are never
    allocated, and the stalled connection is dropped after network_timeout."""
    rss = fh.rss_kib()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF) + bytes(64 * 1024))
        _closed_by_peer(sock)
    assert fh.rss_kib() - rss < 64 * 1024
    assert _echo(port) == SUCCESS


@pytest.mark.parametrize(
    "stall_after",
    [
        pytest.param(b"", id="silent"),
        pytest.param(b"\x01\x00\x00", id="half-pdu-header"),
        pytest.param(_associate_rq_absurd()[:40], id="partial-associate-rq"),
    ],
)
def test_slow_loris_on_the_dicom_listener_is_dropped(scp, port: int, stall_after: bytes) -> None:
    """Connect, send a few bytes (or none), stall: dropped after the ACSE/network timeout."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if stall_after:
            sock.sendall(stall_after)
        _closed_by_peer(sock)
    assert _echo(port) == SUCCESS


def _wait_for(check, limit_s: float = 15.0):  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it returns a truthy value (a generous bound; not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not (result := check()):
        if time.monotonic() > deadline:
            return result
        time.sleep(0.1)
    return result


def test_stalled_peers_do_not_lock_carts_out(scp, port: int, tmp_path: Path, sample_path: Path) -> None:
    """``max_associations`` peers stalled inside a PDU hold every slot only
    until ``pdu_timeout``: then a cart's storescu gets through, and the
    stalled connections' threads are gone."""
    threads_before = threading.active_count()
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # max_associations = 2
    for sock in stalled:
        sock.sendall(_associate_rq_absurd()[:40])
    path = write(tmp_path / "in" / "cart.dcm", ecg_bytes(sample_path))
    # each refused storescu run costs seconds on a loaded machine: a generous bound
    results = _wait_for(lambda: [r for r in storescu(port, [path])[0] if r[1] == SUCCESS], limit_s=60)
    assert [status for _, status in results] == [SUCCESS]
    for sock in stalled:
        _closed_by_peer(sock)
        sock.close()
    assert _wait_for(lambda: threading.active_count() <= threads_before, limit_s=60), threading.enumerate()


def test_a_peer_dripping_one_pdu_is_dropped(scp, port: int) -> None:
    """One byte at a time keeps a per-read socket timeout happy forever; the
    PDU deadline still drops the peer long before the PDU is complete."""
    pdu = _associate_rq_absurd()
    sent, closed = 0, False
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.3)  # the pace: one byte, then 0.3 s listening for the close
        while sent < len(pdu) and not closed:  # ~30 s for the whole PDU
            try:
                sock.sendall(pdu[sent : sent + 1])
                sent += 1
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
    assert closed and sent < len(pdu) // 2, sent
    assert sent < len(pdu) // 2, sent
    assert _echo(port) == SUCCESS


def test_a_stream_behind_a_huge_pdu_length_is_not_read(scp, port: int) -> None:
    """4 GiB announced and bytes keep coming: the SCP refuses to read the body
    at all (length above max(max_pdu, 256 KiB)), so it never buffers it."""
    rss = fh.rss_kib()
    pushed = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF))
            while pushed < 256 * 1024 * 1024:
                sock.sendall(bytes(1024 * 1024))
                pushed += 1024 * 1024
        except (ConnectionError, TimeoutError):
            pass
    assert pushed < 256 * 1024 * 1024, "the SCP swallowed 256 MiB of one PDU"
    assert fh.rss_kib() - rss < 64 * 1024
    assert _echo(port) == SUCCESS


class SteadyProxy:
    """Forwards one connection to the SCP, cart -> SCP in ``chunk`` bytes
    every ``pause`` seconds: a slow but steady link."""

    def __init__(self, target_port: int, chunk: int, pause: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port, self.chunk, self.pause = target_port, chunk, pause
        self.chunks = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        try:
            while data := src.recv(self.chunk):
                dst.sendall(data)
                if throttle:
                    self.chunks += 1
                    time.sleep(self.pause)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self) -> None:
        cart, _ = self.listener.accept()
        scp_side = socket.create_connection(("127.0.0.1", self.target_port))
        back = threading.Thread(target=self._pipe, args=(scp_side, cart, False), daemon=True)
        back.start()
        self._pipe(cart, scp_side, True)
        back.join(10)
        cart.close()
        scp_side.close()
        self.listener.close()


def test_slow_but_steady_cart_is_served(scp, port: int, tmp_path: Path, sample_path: Path, session_factory) -> None:
    """A transfer that takes several times ``pdu_timeout`` (and the network
    timeout) as a whole, each PDU well within it, is stored."""
    # at least ceil(291 kB / 4 kB) = 72 pauses (2.1 s) however recv splits it; at 8 kB a loaded
    # machine's full reads gave 36 x 0.04 s = 1.44 s, under the check below
    proxy = SteadyProxy(port, chunk=4096, pause=0.03)
    path = write(tmp_path / "in" / "slow.dcm", ecg_bytes(sample_path))
    results, out = storescu(proxy.port, [path])
    assert [status for _, status in results] == [SUCCESS], out
    proxy.thread.join(10)
    assert proxy.chunks * proxy.pause > 1.5 * TIMEOUT_S  # the link, not a clock: the transfer was throttled that long
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 1


@pytest.fixture
def tls_scp(session_factory, spool: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The SCP with its TLS listener (a self-signed certificate); yields (plain, TLS) ports."""
    from conftest import free_port
    from deliver_helpers import self_signed_cert
    from gateway.receive.scp import start_scp

    cert, key = self_signed_cert(tmp_path, "gw")
    dicom = DicomConfig(
        port=free_port(),
        tls_port=free_port(),
        host="127.0.0.1",
        min_free_disk_mb=0,
        tls_cert=str(cert),
        tls_key=str(key),
        max_associations=4,
        acse_timeout=TIMEOUT_S,
        network_timeout=TIMEOUT_S,
        pdu_timeout=TIMEOUT_S,
        dimse_timeout=5,
    )
    server = start_scp(dicom, StorageConfig(spool_dir=str(spool)), session_factory)
    yield server.ports
    server.shutdown()


def _tls_echo(port: int) -> int:
    import ssl

    from pynetdicom import AE

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed: encryption is what is tested
    ae = AE(ae_title="TLSCART")
    ae.connection_timeout = ae.acse_timeout = 5  # the handshake runs under connection_timeout: fail, never hang
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGGW", tls_args=(context, None))
    assert assoc.is_established
    status = assoc.send_c_echo().Status
    assoc.release()
    return status


def test_a_silent_peer_on_the_tls_port_does_not_block_tls_carts(tls_scp: list[int]) -> None:
    """pynetdicom does the TLS handshake in its one accept thread: a TCP peer
    that never sends a ClientHello blocked every TLS cart.  The handshake now
    happens in the connection's own thread, bounded by pdu_timeout."""
    _, tls_port = tls_scp
    with (
        socket.create_connection(("127.0.0.1", tls_port)) as silent,
        socket.create_connection(("127.0.0.1", tls_port)) as not_tls,
    ):
        not_tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a ClientHello
        assert _tls_echo(tls_port) == SUCCESS  # while both are still connected
        assert _closed_by_peer(not_tls) == b""
        _closed_by_peer(silent)
    assert _tls_echo(tls_port) == SUCCESS


def test_association_flood_beyond_max_associations(scp, port: int) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="FLOOD")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", port, ae_title="ECGGW") for _ in range(2)]
    assert all(a.is_established for a in held)
    extra = [ae.associate("127.0.0.1", port, ae_title="ECGGW") for _ in range(3)]
    assert all(a.is_rejected for a in extra)  # A-ASSOCIATE-RJ, not a hang
    for a in held:
        a.release()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the released slots free up
        try:
            assert _echo(port) == SUCCESS
            break
        except AssertionError:
            time.sleep(0.2)
    else:
        pytest.fail("the SCP did not accept an association after the flood")


@pytest.mark.parametrize("uid", ["../../../tmp/evil", "/tmp/ecg-gateway-evil", "1.2.3/../../4", "..", "1.2.3\\..\\4"])
def test_path_like_uids_never_become_paths(
    scp, port: int, uid: str, tmp_path: Path, spool: Path, sample_path: Path, session_factory
) -> None:
    before = set(tmp_path.rglob("*"))
    path = write(tmp_path / "in" / "evil.dcm", ecg_bytes(sample_path, uid=uid))
    results, out = storescu(port, [path])
    assert [status for _, status in results] == [CANNOT_UNDERSTAND_INVALID_UID], out
    assert not Path("/tmp/ecg-gateway-evil").exists() and not Path("/tmp/evil").exists()
    # the only new files: the one sent, and a quarantine copy named by content hash under rejected/
    new_files = {p for p in set(tmp_path.rglob("*")) - before if p.is_file() and not p.name.startswith("gateway.db")}
    kept = new_files - {path}
    assert len(kept) == 1 and next(iter(kept)).parent == spool / "rejected" and len(next(iter(kept)).stem) == 64, (
        new_files
    )
    with session_factory() as s:
        [row] = s.scalars(select(EcgInstance))
    assert row.status == "rejected" and spool / row.spool_path == next(iter(kept))


def test_path_like_meta_uid_with_a_valid_data_set_uid(session_factory, spool: Path, sample_path: Path) -> None:
    """The file meta UID names the early spool placement: a path-like one is ignored."""
    ds = dcmread(sample_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta.MediaStorageSOPInstanceUID = "../../../../tmp/ecg-gateway-meta"
    outcome = store_instance(
        IncomingInstance.from_file(fh.encode(ds), calling_ae="X", peer_address="127.0.0.1"),
        StoreContext(session_factory, Spool(spool)),
    )
    assert outcome.status == SUCCESS
    assert not list(Path("/tmp").glob("ecg-gateway-meta*"))
    [stored] = [p for p in spool.rglob("*.dcm")]
    assert stored.name.startswith(str(ds.SOPInstanceUID)) and spool in stored.parents


# -- the admin listener ---------------------------------------------------------------------------


def _admin_cfg(db_url: str, tmp_path: Path, token: str = TOKEN) -> Config:
    return Config.model_validate(
        {"storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")}, "admin": {"token": token}}
    )


def _store_hostile_names(session_factory, spool: Path, sample_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, pid in ((SQL_NAME, SQL_ID), (HTML_NAME, "P<b>2</b>")):
        ds = fh.variants.new_uids(dcmread(sample_path))
        ds.PatientName, ds.PatientID = name, pid
        out = store_instance(
            IncomingInstance.from_file(fh.encode(ds), calling_ae="X", peer_address="127.0.0.1"),
            StoreContext(session_factory, Spool(spool)),
        )
        assert out.status == SUCCESS


@pytest.mark.every_db
def test_sql_and_html_in_patient_values_are_data(db_url, session_factory, tmp_path: Path, sample_path: Path) -> None:
    _store_hostile_names(session_factory, tmp_path / "spool", sample_path)
    client = TestClient(create_app_for(db_url, tmp_path, session_factory))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # the injection text is a value to match, not SQL: only the row that has it
    r = client.get("/api/ecgs", params={"patient_id": SQL_ID}, headers=auth)
    assert r.status_code == 200 and [i["patient_name"] for i in r.json()["items"]] == [SQL_NAME]
    assert client.get("/api/ecgs", params={"patient_id": "' OR 1=1 --"}, headers=auth).json()["total"] == 0
    with session_factory() as s:  # the table is still there, with both rows
        assert s.scalar(select(func.count()).select_from(EcgInstance)) == 2
    assert web_login(client, TOKEN).status_code == 200
    page = client.get("/ecgs").text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>2</b>" not in page
    # the list shows the name's first PN component group: '=' in "src=x" starts the next group
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src" in page
    assert "O&#39;Brien&#39;); DROP TABLE" in page or "O&#x27;Brien" in page
    with session_factory() as s:
        html_id = s.scalar(select(EcgInstance.id).where(EcgInstance.patient_id == "P<b>2</b>"))
    detail = client.get(f"/ecgs/{html_id}").text
    assert "<script>alert" not in detail and "&lt;script&gt;alert(" in detail


def create_app_for(db_url: str, tmp_path: Path, session_factory, token: str = TOKEN):  # type: ignore[no-untyped-def]
    from gateway.admin.app import create_app

    return create_app(_admin_cfg(db_url, tmp_path, token), session_factory)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Cookie": "ecg_gateway_session=forged"},
    ],
)
def test_admin_without_a_valid_token_gets_401_and_no_phi(
    db_url, session_factory, tmp_path: Path, sample_path: Path, headers: dict[str, str]
) -> None:
    _store_hostile_names(session_factory, tmp_path / "spool", sample_path)
    client = TestClient(create_app_for(db_url, tmp_path, session_factory))
    with session_factory() as s:
        ecg = s.scalars(select(EcgInstance)).first()
    phi = ["O'Brien", "Brien", "Eve", SQL_ID, "642341", ecg.sop_instance_uid, "P<b>2</b>", "P&lt;b&gt;2"]
    for path in [
        "/api/ecgs",
        f"/api/ecgs/{ecg.id}",
        f"/api/ecgs/{ecg.id}/original.dcm",
        f"/api/ecgs/{ecg.id}/input.npy",
    ]:
        r = client.get(path, headers=headers)
        assert r.status_code == 401, path
        assert not any(p in r.text for p in phi), path
    assert client.post("/api/hl7/1/resend", headers=headers).status_code == 401
    for path in ["/ecgs", f"/ecgs/{ecg.id}"]:  # the web view sends to the login page
        r = client.get(path, headers=headers, follow_redirects=False)
        assert r.status_code in (303, 401) and not any(p in r.text for p in phi), path
    for path in ["/healthz", "/metrics"]:  # open by design: must carry no PHI
        r = client.get(path, headers=headers)
        assert r.status_code in (200, 503) and not any(p in r.text for p in phi), path


def test_admin_with_no_token_configured_refuses_everyone(db_url, session_factory, tmp_path: Path) -> None:
    client = TestClient(create_app_for(db_url, tmp_path, session_factory, token=""))
    assert client.get("/api/ecgs").status_code == 403
    assert client.get("/api/ecgs", headers={"Authorization": "Bearer "}).status_code == 403


# -- the admin listener: slow-loris and connection limit -------------------------------------------

ADMIN_TIMEOUT_S = 0.5  # [admin] request_timeout_s of the server under test


@pytest.fixture
def admin_server(db_url, session_factory, tmp_path: Path, port: int):  # type: ignore[no-untyped-def]
    """make_server on a free port; ``health`` sleeps 2 request deadlines, so
    /healthz is a slow handler (which the deadline must not cut off)."""
    from gateway.admin.app import create_app, make_server

    cfg = Config.model_validate(
        {
            "storage": {"database_url": db_url, "spool_dir": str(tmp_path / "spool")},
            "admin": {
                "host": "127.0.0.1",
                "port": port,
                "token": TOKEN,
                "request_timeout_s": ADMIN_TIMEOUT_S,
                "max_connections": 3,
            },
        }
    )

    def slow_health() -> dict[str, bool | str]:
        time.sleep(2 * ADMIN_TIMEOUT_S)
        return {"scp_listening": True, "model_loaded": True}

    server = make_server(create_app(cfg, session_factory, slow_health), cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert _wait_for(lambda: server.started or not thread.is_alive(), 20) and thread.is_alive(), "uvicorn did not start"
    yield port
    server.should_exit = True
    thread.join(10)


def _http_response(sock: socket.socket) -> bytes:
    """One complete HTTP response (Content-Length bodies) read from ``sock``."""
    data = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"", id="silent"),
        pytest.param(b"GET /api/ecgs HTTP/1.1\r\nHost: gw\r\n", id="headers-unfinished"),
        pytest.param(b"POST /login HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\ntoken=", id="body-unfinished"),
    ],
)
def test_admin_slow_loris_is_closed(admin_server: int, partial: bytes) -> None:
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:
        sock.sendall(partial)
        reply = _closed_by_peer(sock)
    # closed; the login form may be answered (403: no CSRF cookie) before its body is complete, never with success
    assert reply == b"" or (partial.startswith(b"POST") and reply.startswith((b"HTTP/1.1 401", b"HTTP/1.1 403"))), (
        reply[:60]
    )
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:  # and the listener still serves
        sock.sendall(GET_METRICS)
        assert _http_response(sock).startswith(b"HTTP/1.1 200")


def test_admin_partial_request_after_a_response_is_closed(admin_server: int) -> None:
    """The uvicorn gap itself: a keep-alive connection that got its answer,
    then sends part of a second request, used to be held forever."""
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:
        sock.sendall(GET_METRICS)
        assert _http_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(GET_METRICS)  # keep-alive: a second full request is served too
        assert _http_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHo")
        assert _closed_by_peer(sock) == b""


def test_admin_dripping_headers_are_closed(admin_server: int) -> None:
    """A header line every 0.2 s keeps each read busy; the request deadline still closes it."""
    lines = [b"GET /metrics HTTP/1.1\r\n", *[f"X-Pad-{i}: x\r\n".encode() for i in range(100)], b"\r\n"]
    sent, closed = 0, False
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:
        sock.settimeout(0.2)
        while sent < len(lines) and not closed:
            try:
                sock.sendall(lines[sent])
                sent += 1
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
    assert closed and sent < len(lines) // 2, sent


def test_admin_slow_handler_is_not_cut_off(admin_server: int) -> None:
    """The deadline covers receiving the request, not the application: /healthz
    (2 deadlines long here) answers in full."""
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        response = _http_response(sock)
    assert response.split(b" ")[1] in (b"200", b"503") and b"scp_listening" in response, response[:200]


def test_admin_connections_beyond_max_connections_get_503(admin_server: int) -> None:
    held = [socket.create_connection(("127.0.0.1", admin_server)) for _ in range(3)]  # max_connections = 3
    try:
        for sock in held:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # partial: holds a connection
        time.sleep(0.1)  # let the server accept them (ordering, not a timing assertion)
        with socket.create_connection(("127.0.0.1", admin_server)) as sock:
            sock.sendall(GET_METRICS)
            assert _http_response(sock).startswith(b"HTTP/1.1 503")
        for sock in held:  # the held ones are closed at the deadline, which frees the slots
            assert _closed_by_peer(sock) == b""
    finally:
        for sock in held:
            sock.close()
    with socket.create_connection(("127.0.0.1", admin_server)) as sock:
        sock.sendall(GET_METRICS)
        assert _http_response(sock).startswith(b"HTTP/1.1 200")
