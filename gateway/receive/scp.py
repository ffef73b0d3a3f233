"""The DICOM storage SCP: ECG waveform storage and verification only, with
the door policy (calling AE, source host, called AE, association limit,
timeouts, optional TLS on its own port).

Every accepted connection's PDU reads are bounded (:func:`bound_pdu_reads`):
pynetdicom 3.0.4 reads a PDU with a blocking ``recv`` once its first byte has
arrived, so a peer that stalls inside a PDU (or claims a 4 GiB one) would
hold its association slot forever.

Every association's DIMSE messages are bounded too (:func:`bound_dimse_messages`):
pynetdicom gathers a C-STORE's P-DATA fragments in memory until the last
one, so a data set larger than ``[dicom] max_dataset_mb`` is dropped as soon
as it passes the limit and the association is aborted, and one larger than
8 MB is gathered in a temporary file meanwhile.

Association policy is checked in one place (``EVT_REQUESTED``) so that each
rejection is logged with the peer's address and AE titles; a rejected
association gets an A-ASSOCIATE-RJ the cart can display.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import uid_to_sop_class
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import DicomConfig, StorageConfig
from gateway.dicomio.limits import MIB, limit_text
from gateway.dicomio.reader import ECG_STORAGE_SOP_CLASSES, ECG_TRANSFER_SYNTAXES
from gateway.receive.spool import (
    PROCESSING_FAILURE,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    is_valid_uid,
    store_instance,
)

log = logging.getLogger("gateway.receive")

#: pynetdicom makes its named SOP classes at import time, out of a type checker's sight.
Verification = uid_to_sop_class("1.2.840.10008.1.1")

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
_RJ_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
_RJ_CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
_RJ_NO_REASON = (0x01, 0x01, 0x01)

#: Floor of the PDU length cap: an A-ASSOCIATE-RQ proposing many contexts may
#: legitimately exceed a small ``max_pdu`` (which only binds P-DATA-TF PDUs).
_MIN_PDU_CAP = 256 * 1024
_RECV_CHUNK = 64 * 1024
#: SOP classes named in the "refused presentation contexts" line at most.
_REFUSED_SHOWN = 10


class ListenError(OSError):
    """A listener could not bind; the message names it and its host:port."""

    def __init__(self, what: str, host: str, port: int, cause: OSError) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # os.strerror: socket.create_server appends the address to strerror
        reason = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else (cause.strerror or str(cause))
        super().__init__(cause.errno, f"cannot listen on {where} ({what}): {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class ScpServer:
    """The listeners (plain, and TLS when configured): bound by :func:`bind_scp`,
    accepting once :meth:`serve` runs."""

    ae: AE
    servers: list[ThreadedAssociationServer] = field(default_factory=list)
    accepting: bool = False

    @property
    def ports(self) -> list[int]:
        """Bound ports: the plain listener first, then the TLS one."""
        return [server.server_address[1] for server in self.servers]

    def listen(self, host: str, port: int, what: str, ssl_context: ssl.SSLContext | None = None) -> None:
        """Bind one listener now (connections wait in the backlog until
        :meth:`serve`); raises :class:`ListenError`."""
        try:
            server = self.ae.make_server((host, port), ssl_context=ssl_context, server_class=ThreadedAssociationServer)
        except OSError as exc:
            raise ListenError(what, host, port, exc) from None
        self.servers.append(server)

    def serve(self, handlers: list[tuple[Any, Callable[..., Any]]]) -> None:
        """Start accepting on every bound listener, as ``AE.start_server`` does."""
        for server in self.servers:
            for event, handler in handlers:
                server.bind(event, handler)
            threading.Thread(
                target=make_target(server.serve_forever), name=f"scp-accept-{server.server_address[1]}", daemon=True
            ).start()
            self.ae._servers.append(server)  # noqa: SLF001 - what start_server does; server.shutdown() expects it
        self.accepting = True

    def shutdown(self) -> None:
        """Stop listening and close open associations."""
        for server in self.servers:
            if self.accepting:
                server.shutdown()
            else:
                server.server_close()
        self.servers.clear()
        self.accepting = False


def make_ae(dicom: DicomConfig) -> AE:
    """An AE that accepts Verification and the ECG waveform storage classes
    in Implicit, Explicit and Deflated Explicit VR Little Endian; any other
    presentation context is rejected."""
    ae = AE(ae_title=dicom.ae_title)
    ae.add_supported_context(Verification)
    for sop_class in ECG_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, ECG_TRANSFER_SYNTAXES)
    ae.maximum_associations = dicom.max_associations
    ae.acse_timeout = dicom.acse_timeout
    ae.dimse_timeout = dicom.dimse_timeout
    ae.network_timeout = dicom.network_timeout
    ae.maximum_pdu_size = dicom.max_pdu
    # Policy is enforced (and logged) by association_refusal() instead.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    return ae


def association_refusal(
    dicom: DicomConfig, calling_ae: str, called_ae: str, peer_address: str
) -> tuple[str, tuple[int, int, int]] | None:
    """Why an association request is refused (reason, A-ASSOCIATE-RJ
    result/source/diagnostic), or None when it may proceed."""
    if dicom.allowed_hosts:
        try:
            address = ipaddress.ip_address(peer_address)
        except ValueError:
            return f"peer address {peer_address!r} not understood", _RJ_NO_REASON
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not any(address in ipaddress.ip_network(net, strict=False) for net in dicom.allowed_hosts):
            return "source host not in allowed_hosts", _RJ_NO_REASON
    if dicom.allowed_calling_aets and calling_ae.strip() not in [a.strip() for a in dicom.allowed_calling_aets]:
        return "calling AE title not in allowed_calling_aets", _RJ_CALLING_AE_NOT_RECOGNISED
    if dicom.require_called_aet and called_ae.strip() != dicom.ae_title.strip():
        return f"called AE title is not {dicom.ae_title!r}", _RJ_CALLED_AE_NOT_RECOGNISED
    return None


def pdu_length_cap(dicom: DicomConfig) -> int | None:
    """The longest PDU the SCP reads: ``max_pdu`` (at least 256 KiB, for
    A-ASSOCIATE-RQs), or None (no cap) when ``max_pdu`` is 0 = unlimited."""
    return max(dicom.max_pdu, _MIN_PDU_CAP) if dicom.max_pdu else None


def _recv_within(
    assoc_socket: Any, nr_bytes: int, *, pdu_timeout: float, length_cap: int | None, peer: str
) -> bytearray:
    """``AssociationSocket.recv`` with a deadline and a length cap.

    Returns what arrived when the deadline passes, the peer closes, or
    ``nr_bytes`` exceeds the cap (nothing read then); the DUL treats a short
    read as "transport closed" (Evt17) and closes the socket, which frees the
    association slot without a traceback.
    """
    sock: socket.socket = assoc_socket.socket
    received = bytearray()
    if length_cap is not None and nr_bytes > length_cap:
        log.warning("dropping %s: PDU of %d bytes announced, more than the %d-byte cap", peer, nr_bytes, length_cap)
        return received
    deadline = time.monotonic() + pdu_timeout
    try:
        while len(received) < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(min(_RECV_CHUNK, nr_bytes - len(received)))
            if not chunk:  # closed by the peer
                break
            received += chunk
    except TimeoutError:
        log.warning(
            "dropping %s: stalled for %g s inside a PDU (%d of %d bytes received)",
            peer,
            pdu_timeout,
            len(received),
            nr_bytes,
        )
    except ssl.SSLError as exc:  # the (deferred) handshake failed: no or a wrong client certificate, not TLS
        log.warning("dropping %s: TLS failed: %s", peer, exc)
    except OSError as exc:  # reset: the DUL sees a short read
        log.info("connection from %s lost while reading a PDU: %s", peer, exc)
    else:
        sock.settimeout(pdu_timeout)  # also bounds sends to a peer that stops reading
    return received


def bound_pdu_reads(assoc_socket: Any, *, pdu_timeout: float, length_cap: int | None, peer: str) -> None:
    """Make ``assoc_socket`` (a pynetdicom ``AssociationSocket``) read each
    PDU header and body within ``pdu_timeout`` seconds and refuse a body
    longer than ``length_cap``; sends get the same timeout."""
    assoc_socket.recv = functools.partial(
        _recv_within, assoc_socket, pdu_timeout=pdu_timeout, length_cap=length_cap, peer=peer
    )
    if assoc_socket.socket is not None:
        assoc_socket.socket.settimeout(pdu_timeout)


def _stop_reading(nr_bytes: int) -> bytearray:
    """A PDU read that finds the transport closed (the DUL's Evt17)."""
    return bytearray()


#: A C-STORE data set still arriving moves from memory to a temporary file
#: once it passes this, so an association on its way to ``max_dataset_mb``
#: holds at most this much (real ECGs, 0.1-1 MB, never move).
DATASET_IN_MEMORY = 8 * MIB


class _SpilledDataSet(io.BytesIO):
    """The data set pynetdicom is gathering, moved to an unlinked temporary
    file.  pynetdicom's primitives require a ``BytesIO``: this is one, but it
    holds nothing itself; ``write`` appends to the file and ``getvalue``
    reads it back (for the C-STORE handler, once the data set is complete)."""

    def __init__(self, gathered: io.BytesIO, folder: Path) -> None:
        super().__init__()
        folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder, prefix="dimse-")
        self._file.write(gathered.getbuffer())

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def getvalue(self) -> bytes:
        self._file.seek(0)
        data = self._file.read()
        self._file.seek(0, io.SEEK_END)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def bound_dimse_messages(assoc: Any, *, max_bytes: int, spill_dir: Path, in_memory: int = DATASET_IN_MEMORY) -> None:
    """Make ``assoc`` (an acceptor ``Association``) refuse a DIMSE message
    whose P-DATA fragments add up to more than ``max_bytes``, and gather a
    C-STORE data set beyond ``in_memory`` bytes in a temporary file in
    ``spill_dir`` rather than in memory.

    pynetdicom's DIMSE provider gathers the fragments of a message (the
    C-STORE data set) in a ``BytesIO`` until the last one.  Here the bytes of
    the current message are counted before pynetdicom sees them; past the
    limit the partial message is dropped, one WARNING line names the peer,
    the calling AE and the SOP Instance UID of the C-STORE (its command set
    is complete by then), and the association is aborted (A-ABORT, source
    service-user): the DUL sends the A-ABORT, then finds the transport closed
    instead of reading the rest of the stream.  No C-STORE response exists
    for a request that was never received whole; the cart keeps its copy.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive
    received = 0

    def refuse(reason: str) -> None:
        command = getattr(dimse.message, "command_set", None)
        uid = str(command.get("AffectedSOPInstanceUID", "") or "") if command is not None else ""
        requestor = assoc.requestor
        log.warning(
            "aborted association from %s (calling AE %r): SOP Instance UID %s: %s (%d bytes received); nothing kept",
            requestor.address,
            requestor.ae_title,
            uid if is_valid_uid(uid) else "(none or invalid)",
            reason,
            received,
        )
        dimse.message = None  # the fragments gathered so far go now (a temporary file closes with them)
        if assoc.dul.socket is not None:
            assoc.dul.socket.recv = _stop_reading
        assoc.acse.send_abort(0x00)

    def receive_bounded(primitive: Any) -> None:
        nonlocal received
        if dimse.message is None:  # pynetdicom starts a new message (resets to None after each)
            received = 0
        received += sum(len(data) - 1 for _, data in primitive.presentation_data_value_list)  # minus the header byte
        if received > max_bytes:
            refuse(f"data set larger than {limit_text(max_bytes)}")
            return
        message = dimse.message
        if received > in_memory and isinstance(message, C_STORE_RQ) and type(message.data_set) is io.BytesIO:
            try:
                message.data_set = _SpilledDataSet(message.data_set, spill_dir)
            except OSError as exc:
                refuse(f"cannot gather a data set over {in_memory // MIB} MB: {exc.strerror or exc}")
                return
        receive(primitive)

    dimse.receive_primitive = receive_bounded


class _DeferredHandshakeContext(ssl.SSLContext):
    """Wraps accepted sockets without the handshake: pynetdicom wraps them in
    its single accept thread, where one silent TCP peer would block every TLS
    cart.  The handshake then happens on the connection's first read, in its
    own thread, within ``pdu_timeout`` (:func:`bound_pdu_reads`)."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side, False, *args, **kwargs)


def tls_context(dicom: DicomConfig) -> ssl.SSLContext:
    """Server-side TLS; with ``tls_ca`` a client certificate is required.
    The handshake is deferred to the connection's thread (see above)."""
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(dicom.tls_cert, dicom.tls_key)
    if dicom.tls_ca:
        context.load_verify_locations(dicom.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def bind_scp(dicom: DicomConfig) -> ScpServer:
    """Bind the DICOM listeners (plain, then TLS) without accepting yet and
    without writing anything, so that ``serve`` fails before it touches the
    database when a port is taken.  Raises :class:`ListenError`."""
    scp = ScpServer(make_ae(dicom))
    try:
        scp.listen(dicom.host, dicom.port, "DICOM")
        if dicom.tls_port:
            scp.listen(dicom.host, dicom.tls_port, "DICOM TLS", tls_context(dicom))
    except BaseException:
        scp.shutdown()
        raise
    return scp


#: A UID whose file meta element :func:`part10` writes itself (anything else: pynetdicom's writer).
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian, 2-byte length."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    """A UI value: ASCII, padded with NUL to an even length."""
    value = uid.encode("ascii")
    return value + b"\0" * (len(value) % 2)


_VERSION = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
#: (0002,0001) File Meta Information Version: OB, 4-byte length.
_META_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
#: The file meta elements after the UIDs, the same in every file pynetdicom writes.
_META_IMPLEMENTATION = _meta_element(0x0012, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID))) + _meta_element(
    0x0013, b"SH", _VERSION + b" " * (len(_VERSION) % 2)
)


def part10(dataset: bytes, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes | None:
    """The Part 10 file pynetdicom's ``Event.encoded_dataset()`` returns (128-byte
    preamble, "DICM", its file meta information, the data set as received),
    byte for byte, without building a pydicom data set and running its writer
    for the file meta (~0.6 ms of CPU per C-STORE, a twentieth of the receive
    path).  None when a UID is not plain (digits and dots, 1-64 characters):
    then pynetdicom writes the file meta, whatever the peer sent."""
    if not all(_PLAIN_UID.fullmatch(uid) for uid in (sop_class_uid, sop_instance_uid, transfer_syntax_uid)):
        return None
    elements = b"".join(
        (
            _META_VERSION,
            _meta_element(0x0002, b"UI", _ui(sop_class_uid)),
            _meta_element(0x0003, b"UI", _ui(sop_instance_uid)),
            _meta_element(0x0010, b"UI", _ui(transfer_syntax_uid)),
            _META_IMPLEMENTATION,
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"".join((b"\0" * 128, b"DICM", group_length, elements, dataset))


def incoming_c_store(event: evt.Event) -> IncomingInstance:
    """The record of one C-STORE request (``EVT_C_STORE``): the data set as a
    Part 10 byte string, the SOP Instance and Class UIDs the request carries,
    the negotiated transfer syntax, the calling AE and the peer's address."""
    request, requestor = cast(C_STORE, event.request), event.assoc.requestor
    instance_uid = str(request.AffectedSOPInstanceUID or "")
    class_uid = str(request.AffectedSOPClassUID or "")
    transfer_syntax = str(event.context.transfer_syntax)
    dataset = cast(io.BytesIO, request.DataSet)  # a _SpilledDataSet reads its file back
    raw = part10(dataset.getvalue(), class_uid, instance_uid, transfer_syntax)
    return IncomingInstance(
        raw if raw is not None else event.encoded_dataset(),
        sop_instance_uid=instance_uid.strip() or None,
        sop_class_uid=class_uid.strip() or None,
        transfer_syntax_uid=transfer_syntax,
        calling_ae=requestor.ae_title,
        peer_address=requestor.address,
    )


@dataclass(frozen=True)
class StoreHandler:
    """The ``EVT_C_STORE`` handler: stores each data set with ``ctx`` and
    answers with the outcome's status (0x0110 for an unexpected error, never
    success).  ``on_stored(ecg_id)`` is called after each new instance is
    committed (never for duplicates or refusals); it must return quickly."""

    ctx: StoreContext
    on_stored: Callable[[int], None] | None = None

    def __call__(self, event: evt.Event) -> int:
        try:
            outcome = store_instance(incoming_c_store(event), self.ctx)
        except Exception:  # noqa: BLE001 - never let a bug look like success
            log.exception("C-STORE from %s failed unexpectedly", event.assoc.requestor.address)
            return PROCESSING_FAILURE
        if (
            self.on_stored is not None
            and outcome.ecg_id is not None
            and outcome.status == SUCCESS
            and not outcome.duplicate
        ):
            try:
                self.on_stored(outcome.ecg_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the worker also polls
                log.exception("on_stored(%d) failed", outcome.ecg_id)
        return outcome.status


def start_scp(
    dicom: DicomConfig,
    storage: StorageConfig,
    session_factory: sessionmaker[Session],
    on_stored: Callable[[int], None] | None = None,
    *,
    free_bytes: Callable[[Path], int] | None = None,
    bound: ScpServer | None = None,
) -> ScpServer:
    """Start accepting in background threads and return at once: on the
    listeners ``bound`` by :func:`bind_scp`, else on new ones.

    ``on_stored(ecg_id)`` is called after each new instance is committed
    (never for duplicates or refusals); it must return quickly.
    ``free_bytes`` overrides the disk-space probe (tests).
    """
    ctx = StoreContext.from_config(dicom, storage, session_factory, free_bytes=free_bytes)
    ctx.spool.root.mkdir(parents=True, exist_ok=True)
    stale = ctx.spool.remove_stale_temp_files()
    if stale:
        log.info("removed %d unacknowledged temp files from the spool", stale)

    length_cap = pdu_length_cap(dicom)

    def handle_conn_open(event: evt.Event) -> None:
        # Runs in the connection's thread before its DUL reads anything.
        address: tuple[str, int] = vars(event)["address"]  # set by pynetdicom for EVT_CONN_OPEN
        bound_pdu_reads(
            event.assoc.dul.socket, pdu_timeout=dicom.pdu_timeout, length_cap=length_cap, peer=str(address[0])
        )
        bound_dimse_messages(
            event.assoc, max_bytes=dicom.max_dataset_mb * MIB, spill_dir=ctx.spool.incoming, in_memory=DATASET_IN_MEMORY
        )

    def handle_requested(event: evt.Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:  # pynetdicom sets it before EVT_REQUESTED
            raise RuntimeError("association request without its A-ASSOCIATE primitive")
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        peer = assoc.requestor.address
        refusal = association_refusal(dicom, calling, called, peer)
        if refusal is None:
            return
        reason, rsd = refusal
        log.warning("rejected association from %s (calling AE %r, called AE %r): %s", peer, calling, called, reason)
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    def handle_rejected(event: evt.Event) -> None:
        # pynetdicom's own refusals (our policy ones are logged above): the association limit
        requestor = event.assoc.requestor
        log.warning(
            "rejected association from %s (calling AE %r): max_associations (%d) reached",
            requestor.address,
            requestor.ae_title,
            dicom.max_associations,
        )

    def handle_accepted(event: evt.Event) -> None:
        # The cart only hears "no presentation context" (e.g. a CT sender): one line per
        # association names the SOP classes none of whose contexts was accepted.
        assoc = event.assoc
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused: dict[str, int | None] = {}
        for cx in sorted(assoc.rejected_contexts, key=lambda c: c.context_id or 0):
            if str(cx.abstract_syntax) not in accepted:
                refused.setdefault(str(cx.abstract_syntax), cx.result)
        if not refused:
            return
        shown = [
            (f"{uid} ({UID(uid).name})" if UID(uid).is_valid else repr(uid))  # a peer's text: no raw controls
            + (" [its transfer syntaxes]" if result == 0x04 else "")
            for uid, result in list(refused.items())[:_REFUSED_SHOWN]
        ]
        more = f" and {len(refused) - _REFUSED_SHOWN} more (all at DEBUG)" if len(refused) > _REFUSED_SHOWN else ""
        log.info(
            "refused presentation contexts from %s (calling AE %r): %d SOP class(es) not accepted: %s%s",
            assoc.requestor.address,
            assoc.requestor.ae_title,
            len(refused),
            ", ".join(shown),
            more,
        )
        if more:  # an SCU proposing every class it knows (storescu's default)
            log.debug(
                "refused SOP classes from %s: %s",
                assoc.requestor.address,
                " ".join(uid if UID(uid).is_valid else repr(uid) for uid in refused),
            )

    def handle_echo(event: evt.Event) -> int:
        return SUCCESS

    handlers: list[tuple[evt.EventType, Callable[..., Any]]] = [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_REQUESTED, handle_requested),
        (evt.EVT_REJECTED, handle_rejected),
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_C_STORE, StoreHandler(ctx, on_stored)),
        (evt.EVT_C_ECHO, handle_echo),
    ]
    scp = bound if bound is not None else bind_scp(dicom)
    try:
        scp.serve(handlers)
    except BaseException:
        scp.shutdown()
        raise
    log.info("DICOM SCP %s listening on %s port(s) %s", dicom.ae_title, dicom.host, scp.ports)
    return scp
