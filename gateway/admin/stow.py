"""DICOMweb STOW-RS (PS3.18 10.5) on the admin listener: ``POST
/dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

The request is ``multipart/related; type="application/dicom"`` with one
PS3.10 instance per part.  The body is streamed through python-multipart's
parser into one unlinked temporary file in ``<spool>/.incoming``, the
parts back to back (memory: one chunk; one file descriptor per request); the whole request is bounded by ``[ingest]
stow_max_request_mb`` and ``stow_max_instances`` (413), each part by
``[dicom] max_dataset_mb`` (that instance fails with 0xA701, its bytes are
dropped as they arrive).  Nothing is stored until the body has arrived
whole and parsed: a malformed body (400) stores nothing.

Each part then goes through the C-STORE path (:func:`~gateway.receive.spool.store_instance`:
durable spool file and committed row before the answer, the same SOP class,
waveform and identity checks, duplicates, ``rejected`` rows), with two
rules of the web path: the transfer syntax must be Explicit VR Little
Endian or its Deflated form (PS3.18 8.7.3; otherwise 0xC122), and under
``/studies/{study}`` the instance must carry that Study Instance UID
(otherwise 0xA901).  The answer (``application/dicom+json``, exactly: what
dicomweb-client parses) is the Store Instances Response Module:
ReferencedSOPSequence for the stored instances (and duplicates, stored
before), FailedSOPSequence with each refusal's status as its Failure Reason
(and both UIDs, without a value when the part names none);
HTTP 200 (all stored), 202 (some), 409 (none).  No Retrieve URL: the gateway
serves no WADO-RS.

Authentication: ``Authorization: Bearer <token>``: a user's API token
(``ecg-gateway users token NAME``) of role :data:`STOW_ROLE` or stronger
(``reader``, ``admin``), or the bootstrap ``[admin] token`` (admin).  401
without a valid one (a web session cookie is no credential here), 403 for a
viewer or while no credential exists at all; checked before a byte of the
body is read.  Each request that stored something gets an audit row
(``dicomweb_store``: the caller, the address, the ecg ids stored).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gateway.admin.auth import (
    NO_TOKEN_MESSAGE,
    Principal,
    audit_request,
    auth_context,
    credentials_exist,
    resolve_principal,
)
from gateway.config import Config
from gateway.dicomio.limits import MIB, limit_text
from gateway.dicomio.reader import file_meta_uids
from gateway.receive.door import as_part10
from gateway.receive.spool import (
    CANNOT_UNDERSTAND,
    DATA_SET_TOO_LARGE,
    PROCESSING_FAILURE,
    SUCCESS,
    IncomingInstance,
    StoreContext,
    StoreOutcome,
    is_valid_uid,
    store_instance,
)
from gateway.store.spool import ensure_dir

__all__ = ["STOW_CALLING_AE", "STOW_ROLE", "STOW_TRANSFER_SYNTAXES", "stow_router"]

log = logging.getLogger("gateway.admin")

#: PS3.18 8.7.3: web services use neither Implicit VR Little Endian nor Explicit VR Big Endian.
STOW_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})
#: The weakest role that may send: sending files results into the EHR (an ORU per ECG), a write a
#: viewer (read-only) may not make; readers and admins may.  Give each sending system its own
#: user and API token (``ecg-gateway users add SENDER --role reader``; ``users token SENDER``).
STOW_ROLE = "reader"
#: The ``calling_ae`` of rows stored over STOW-RS (the admin views tell them from C-STOREs by it).
STOW_CALLING_AE = "STOW-RS"
#: The answer's media type, exactly (dicomweb-client 0.61.2 parses no other spelling, no parameter).
DICOM_JSON = "application/dicom+json"
#: Bytes of each part kept in memory to name its UIDs when the part itself is dropped (too large).
_HEAD_BYTES = 8192
_MAX_PART_HEADERS = 16
_MAX_PART_HEADER_BYTES = 8192
#: Part headers kept (the rest are parsed and dropped), and how much of each value.
_KEPT_PART_HEADERS = frozenset({"content-type"})
_MAX_KEPT_HEADER_CHARS = 256
#: A DICOM UID (PS3.5 9.1): dot-separated numbers without leading zeros, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class StowError(Exception):
    """The request as a whole is refused: its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Part:
    """One part of the body: its headers, and where its bytes are in the request's temporary file."""

    headers: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    too_large: bool = False


@dataclass
class Parts:
    """The parts of one request, their bytes back to back in one unlinked temporary
    file (one file descriptor per request, however many parts)."""

    file: IO[bytes] | None
    items: list[Part]

    def read(self, part: Part) -> bytes:
        if self.file is None or part.too_large:
            return b""
        self.file.seek(part.offset)
        return self.file.read(part.size)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class _Collector:
    """python-multipart callbacks that collect the parts (bounded)."""

    folder: Path
    max_part_bytes: int
    max_parts: int
    parts: list[Part] = field(default_factory=list)
    file: IO[bytes] | None = None
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self.header_end,
            "on_part_data": self.part_data,
        }

    def part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise StowError(413, f"more than {self.max_parts} instances in one request ([ingest] stow_max_instances)")
        self.parts.append(Part(offset=self.file.tell() if self.file is not None else 0))

    def header_end(self) -> None:
        # Only the headers read later are kept, each value cut to a length no real one reaches:
        # kept whole, 16 lines of 8 KB in each of 1000 parts held 128 MB until the answer.
        name = self._field.decode("latin-1").strip().lower()
        if name in _KEPT_PART_HEADERS:
            self.parts[-1].headers[name] = self._value[:_MAX_KEPT_HEADER_CHARS].decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if len(part.head) < _HEAD_BYTES:
            part.head.extend(data[start : min(end, start + _HEAD_BYTES - len(part.head))])
        if part.too_large:
            return
        if part.size > self.max_part_bytes:
            part.too_large = True  # its bytes go, now and as they arrive; the instance fails with 0xA701
            if self.file is not None:
                self.file.truncate(part.offset)
                self.file.seek(part.offset)
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile(dir=self.folder, prefix="stow-")
        self.file.write(data[start:end])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """(type/subtype lower-cased, parameters with lower-cased names) of a Content-Type."""
    kind, params = parse_options_header(value or "")
    return kind.decode("latin-1").strip().lower(), {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()
    }


#: Accept media ranges the answer (application/dicom+json) satisfies.
_ACCEPTED_ANSWERS = {"*/*", "application/*", DICOM_JSON, "application/json"}


def accepts_dicom_json(accept: str | None) -> bool:
    """True when an ``Accept`` header (absent = anything) allows application/dicom+json
    (no XML answer is offered: ``application/dicom+xml`` alone gets 406)."""
    if accept is None or not accept.strip():
        return True
    for item in accept.split(","):
        kind, _, params = item.partition(";")
        q = next((p.split("=", 1)[1].strip() for p in params.split(";") if p.strip().lower().startswith("q=")), "1")
        if kind.strip().lower() in _ACCEPTED_ANSWERS and q not in ("0", "0.0", "0.00", "0.000"):
            return True
    return False


def check_request_type(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request; :class:`StowError` 415 for
    another media type (or another ``type`` parameter), 400 without a boundary."""
    kind, params = media_type(content_type)
    if kind != "multipart/related":
        raise StowError(415, 'Content-Type must be multipart/related; type="application/dicom"')
    if params.get("type", "").strip().lower() != "application/dicom":
        raise StowError(415, 'multipart/related must have type="application/dicom" (the only type accepted)')
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1 to 70 characters
        raise StowError(400, "multipart/related without a usable boundary parameter")
    return boundary.encode("latin-1")


async def read_parts(
    request: Request, boundary: bytes, folder: Path, *, max_request_bytes: int, max_part_bytes: int, max_parts: int
) -> Parts:
    """Stream the body into parts; :class:`StowError` 400 (malformed) or 413
    (too large, too many parts).  On any error every temporary file is closed."""
    collector = _Collector(folder, max_part_bytes, max_parts)
    parser = MultipartParser(
        boundary,
        cast(Any, collector.callbacks()),
        max_header_count=_MAX_PART_HEADERS,
        max_header_size=_MAX_PART_HEADER_BYTES,
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_request_bytes:
                raise StowError(
                    413, f"request body larger than {max_request_bytes // MIB} MB ([ingest] stow_max_request_mb)"
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise StowError(
                400,
                "malformed multipart body: it ends before its closing delimiter" if received else "empty request body",
            )
        if not collector.parts:
            raise StowError(400, "no instance in the request")
    except MultipartParseError as exc:
        collector.close()
        raise StowError(400, f"malformed multipart body: {exc}") from None
    except BaseException:
        collector.close()
        raise
    return Parts(collector.file, collector.parts)


def _uid_item(sop_class: str | None, sop_instance: str | None) -> dict[str, Any]:
    """Referenced SOP Class and Instance UID, both always there (PS3.18 Table 10.5.3-3 requires
    them in every item): a part that names no valid UID (not DICOM, XML, empty) gets them
    without a value (DICOM JSON's empty value: no ``Value`` key, PS3.18 F.2.5), never left out."""

    def uid(value: str | None) -> dict[str, Any]:
        return {"vr": "UI", "Value": [value]} if value and is_valid_uid(value) else {"vr": "UI"}

    return {"00081150": uid(sop_class), "00081155": uid(sop_instance)}


def store_response(outcomes: list[StoreOutcome]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Store Instances Response Module as DICOM JSON) for the
    parts' outcomes: 200 all stored, 202 some, 409 none (PS3.18 Table 10.5.3-1)."""
    stored = [o for o in outcomes if o.status == SUCCESS]
    failed = [o for o in outcomes if o.status != SUCCESS]
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {**_uid_item(o.sop_class_uid, o.sop_instance_uid), "00081197": {"vr": "US", "Value": [o.status]}}
                for o in failed
            ],
        }
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_uid_item(o.sop_class_uid, o.sop_instance_uid) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    return status, body


@dataclass(frozen=True)
class _Store:
    """Stores the collected parts one by one (in a worker thread)."""

    ctx: StoreContext
    study: str | None
    peer: str
    on_stored: Callable[[int], None] | None

    def part(self, index: int, part: Part, parts: Parts) -> StoreOutcome:
        announced = file_meta_uids(bytes(part.head))
        kind, _params = media_type(part.headers.get("content-type"))
        if kind != "application/dicom":
            reason = f"part {index + 1}: Content-Type {kind or '(none)'!r}, not application/dicom"
            log.warning("STOW-RS from %s: refused %s", self.peer, reason)
            return StoreOutcome(
                CANNOT_UNDERSTAND, None, False, reason, announced.sop_instance_uid, announced.sop_class_uid
            )
        if part.too_large:
            reason = f"data set of {part.size} bytes is larger than {limit_text(self.ctx.max_dataset_bytes)}"
            uid = announced.sop_instance_uid
            log.warning(
                "STOW-RS from %s: refused SOP Instance UID %s with status 0x%04X: %s; nothing kept",
                self.peer,
                uid if is_valid_uid(uid) else "(none or invalid)",
                DATA_SET_TOO_LARGE,
                reason,
            )
            return StoreOutcome(DATA_SET_TOO_LARGE, None, False, reason, uid, announced.sop_class_uid)
        raw = parts.read(part)
        incoming = IncomingInstance(
            raw,
            announced.sop_instance_uid,
            announced.sop_class_uid,
            announced.transfer_syntax_uid or "",
            calling_ae=STOW_CALLING_AE,
            peer_address=self.peer,
            expected_study_uid=self.study,
            transfer_syntaxes=STOW_TRANSFER_SYNTAXES,
        )
        try:
            outcome = store_instance(incoming, self.ctx)
        except Exception:  # noqa: BLE001 - never let a bug look like success
            log.exception("STOW-RS from %s: storing part %d failed unexpectedly", self.peer, index + 1)
            outcome = StoreOutcome(PROCESSING_FAILURE, None, False, "unexpected error in the gateway")
        # an instance refused before its header was read: named by its file meta, else by its data set
        outcome.sop_instance_uid = outcome.sop_instance_uid or announced.sop_instance_uid
        outcome.sop_class_uid = outcome.sop_class_uid or announced.sop_class_uid
        if outcome.status != SUCCESS and not outcome.sop_instance_uid and raw[128:132] != b"DICM":
            bare = file_meta_uids(as_part10(raw))  # a data set without PS3.10 header: refused, but named
            outcome.sop_class_uid, outcome.sop_instance_uid = bare.sop_class_uid, bare.sop_instance_uid
        if (
            outcome.status == SUCCESS
            and not outcome.duplicate
            and outcome.ecg_id is not None
            and self.on_stored is not None
        ):
            try:
                self.on_stored(outcome.ecg_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the worker also polls
                log.exception("on_stored(%d) failed", outcome.ecg_id)
        return outcome

    def all(self, parts: Parts) -> list[StoreOutcome]:
        try:
            return [self.part(i, part, parts) for i, part in enumerate(parts.items)]
        finally:
            parts.close()


def _auth_refusal(request: Request, principal: Principal | None) -> JSONResponse | None:
    """The JSON answer refusing the caller (401, 403), or None when it may send."""
    if principal is None or principal.via != "api":
        ctx = auth_context(request)
        with ctx.session_factory() as db:
            anything = credentials_exist(db, ctx.token)
        if not anything:
            return JSONResponse({"detail": NO_TOKEN_MESSAGE}, status_code=403)
        return JSONResponse(
            {"detail": "missing or wrong bearer token (a user's API token or the [admin] token)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not principal.has_role(STOW_ROLE):
        log.warning(
            "STOW-RS from %s refused: %s is a %s; sending needs the %s role",
            principal.address,
            principal.actor,
            principal.role,
            STOW_ROLE,
        )
        return JSONResponse(
            {"detail": f"{principal.username} ({principal.role}) may not send: needs the {STOW_ROLE} role"},
            status_code=403,
        )
    return None


def _audit(
    session_factory: Callable[[], Any], principal: Principal, outcomes: list[StoreOutcome], study: str | None
) -> None:
    """One ``dicomweb_store`` audit row per request that stored something new (who sent which ECGs)."""
    stored = [o.ecg_id for o in outcomes if o.status == SUCCESS and not o.duplicate and o.ecg_id is not None]
    if not stored:
        return
    try:
        with session_factory() as db:
            audit_request(
                db,
                principal,
                "dicomweb_store",
                f"study:{study}" if study else None,
                ecg_ids=stored,
                instances=len(outcomes),
            )
            db.commit()
    except SQLAlchemyError as exc:  # the instances are stored and answered for; say what is missing
        log.error(
            "STOW-RS from %s: audit row for ecg ids %s not written: %s", principal.address, stored, type(exc).__name__
        )


def stow_router(
    cfg: Config, session_factory: Callable[[], Any], on_stored: Callable[[int], None] | None = None
) -> APIRouter:
    """``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

    ``on_stored(ecg_id)`` is called after each new instance is committed
    (never for duplicates or refusals); it must return quickly.
    """
    router = APIRouter()
    ingest = cfg.ingest
    ctx = StoreContext.from_config(cfg.dicom, cfg.storage, cast(sessionmaker[Session], session_factory))

    async def stow(request: Request, study: str | None) -> Response:
        principal = await run_in_threadpool(resolve_principal, request)
        refused = await run_in_threadpool(_auth_refusal, request, principal)
        if refused is not None:
            return refused
        assert principal is not None
        peer = principal.address
        try:
            if study is not None and not (len(study) <= 64 and _UID.fullmatch(study)):
                raise StowError(400, "the Study Instance UID in the path is not a valid UID")
            if not accepts_dicom_json(request.headers.get("accept")):
                raise StowError(406, "the answer is application/dicom+json, which Accept does not allow")
            boundary = check_request_type(request.headers.get("content-type"))
            max_request = ingest.stow_max_request_mb * MIB
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_request:
                raise StowError(
                    413, f"request body larger than {ingest.stow_max_request_mb} MB ([ingest] stow_max_request_mb)"
                )
            ensure_dir(ctx.spool.incoming)
            parts = await read_parts(
                request,
                boundary,
                ctx.spool.incoming,
                max_request_bytes=max_request,
                max_part_bytes=ctx.max_dataset_bytes,
                max_parts=ingest.stow_max_instances,
            )
        except StowError as exc:
            log.warning("STOW-RS from %s refused with HTTP %d: %s", peer, exc.status, exc)
            # close: an unread rest of the body must not be taken for the next request
            return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers={"Connection": "close"})
        except ClientDisconnect:  # the client went away, or [admin] request_timeout_s cut a slow body off
            log.warning("STOW-RS from %s: the connection closed before the body was complete; nothing stored", peer)
            return Response(status_code=400)  # nobody reads it
        outcomes = await run_in_threadpool(_Store(ctx, study, peer, on_stored).all, parts)
        status, body = store_response(outcomes)
        failed = sum(o.status != SUCCESS for o in outcomes)
        duplicates = sum(o.status == SUCCESS and o.duplicate for o in outcomes)
        log.info(
            "STOW-RS from %s (%s): %d instance(s): %d stored, %d duplicate, %d failed; HTTP %d",
            peer,
            principal.actor,
            len(outcomes),
            len(outcomes) - failed - duplicates,
            duplicates,
            failed,
            status,
        )
        await run_in_threadpool(_audit, session_factory, principal, outcomes, study)
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    @router.post("/dicomweb/studies", tags=["dicomweb"], response_class=JSONResponse)
    async def store_instances(request: Request) -> Response:
        """STOW-RS: store the instances of any study (one PS3.10 file per part)."""
        return await stow(request, None)

    @router.post("/dicomweb/studies/{study}", tags=["dicomweb"], response_class=JSONResponse)
    async def store_study_instances(request: Request, study: str) -> Response:
        """STOW-RS: store instances that must all carry Study Instance UID ``study``."""
        return await stow(request, study)

    return router
