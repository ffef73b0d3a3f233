"""The storage path shared by the SCP and ``ecg-gateway ingest``.

Each data set comes as an :class:`IncomingInstance`, the record built at the
door (the C-STORE request or the file meta give its SOP Instance UID and
class; the UID is validated once, and its spool path computed once), and is
stored with a :class:`StoreContext` (database, :class:`~gateway.store.spool.Spool`,
limits), set up once per SCP or ingest run.

What returns success is durable: the bytes are written to a temporary file,
fsynced, renamed into place (and the folder fsynced), and the instance row is
committed, all before the caller sends 0x0000.  Anything refused leaves no file
in the spool proper; a refused data set is kept for the admin as
``<spool>/rejected/<sha256>.dcm`` (named by content, never by a UID) with a
``rejected`` row that says why - except one larger than ``max_dataset_mb``
(as received or inflated), of which nothing is kept: storing it is what the
limit prevents, and the cart still has it (never acknowledged).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from gateway.dicomio.limits import DEFAULT_MAX_DATASET_BYTES, DatasetTooLarge, check_size
from gateway.dicomio.reader import ECG_STORAGE_SOP_CLASSES, DicomError, file_meta_uids
from gateway.formats import DocumentValues
from gateway.quoting import printable
from gateway.receive.header import EcgHeader, ValueProblem, checked_text, read_header
from gateway.store.audit import audit
from gateway.store.models import RECEIVED, REJECTED, EcgInstance
from gateway.store.spool import Spool, ensure_dir, fsync_dir
from gateway.store.versions import (
    IDENTITY_CHANGED,
    IDENTITY_CHANGED_AUDIT,
    IDENTITY_CHANGED_REASON,
    REJECTED_AT_RECEIVE,
    patient_identity,
    quarantined,
)
from gateway.timeutil import utcnow

if TYPE_CHECKING:
    from gateway.config import DicomConfig, StorageConfig

log = logging.getLogger("gateway.receive")

# C-STORE response statuses (PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
#: Refused: out of resources (disk below the watermark, database unavailable).
OUT_OF_RESOURCES = 0xA700
#: Refused: out of resources, the data set is larger than ``max_dataset_mb``
#: (as received or inflated).  A7xx: the gateway will not hold it, although
#: it may be a readable, valid data set (so neither A9xx nor Cxxx).
DATA_SET_TOO_LARGE = 0xA701
#: Error: data set does not match SOP class (no usable waveform, not an ECG class).
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand (not parseable as DICOM).
CANNOT_UNDERSTAND = 0xC000
#: Error: cannot understand, the SOP Instance UID is not a valid UID.
CANNOT_UNDERSTAND_INVALID_UID = 0xC001
#: Error: another patient under a known SOP Instance UID (the data set is quarantined).
IDENTITY_CONFLICT = 0xC002
#: Failure: processing failure (an unexpected error in the gateway).
PROCESSING_FAILURE = 0x0110
#: Error: data set does not match, its Study Instance UID is not the one the
#: request named (STOW-RS ``/studies/{study}``; the code Microsoft's DICOM server uses too).
STUDY_UID_MISMATCH = 0xA901
#: Error: cannot understand, the transfer syntax is not accepted on this path
#: (PS3.18 8.7.3: no Implicit VR Little Endian or Explicit VR Big Endian over web services).
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

_MIB = 1024 * 1024
_DB_RETRIES = 3


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (the real statvfs)."""
    return shutil.disk_usage(path).free


def is_valid_uid(value: str | None) -> bool:
    """A DICOM UID: at most 64 characters, digits and dots, no leading zeros."""
    from pydicom.uid import UID

    return bool(value) and UID(value).is_valid  # type: ignore[arg-type]


def _clean(value: str | None, size: int) -> str | None:
    """Fit a header value in its column; NULs and control characters go
    (PostgreSQL refuses NUL in text)."""
    if value is None:
        return None
    if not value.isprintable():  # rare: spare the per-character pass otherwise
        value = "".join(ch if ch.isprintable() else "?" for ch in value)
    return value.strip()[:size] or None


@dataclass
class StoreOutcome:
    """What happened to one received data set."""

    status: int
    ecg_id: int | None
    duplicate: bool
    reason: str | None
    #: The data set's own SOP Instance and Class UIDs once its header was read
    #: (the instance UID only when valid), for answers that name them (STOW-RS).
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None


@dataclass(frozen=True)
class IncomingInstance:
    """One data set as it arrives at the door, before anything is read from
    its body: the bytes (preamble and file meta included) and what the
    C-STORE request (or, for ``ingest``, the file meta) says about it.

    ``sop_instance_uid`` is validated once, here (:attr:`uid_valid`); the
    data set's own SOPInstanceUID, read with the header, is the one stored,
    and is validated again only when it differs (a sender out of PS3.4).
    """

    raw: bytes = field(repr=False)
    #: The SOP Instance UID announced (DIMSE Affected SOP Instance UID, or MediaStorageSOPInstanceUID).
    sop_instance_uid: str | None
    #: The SOP Class UID announced (DIMSE Affected SOP Class UID, or MediaStorageSOPClassUID).
    sop_class_uid: str | None
    #: The transfer syntax the bytes are in (negotiated, or the file meta's); "" when unknown.
    transfer_syntax_uid: str
    calling_ae: str | None = None
    peer_address: str | None = None
    #: "dicom", or "philips" / "aecg" (see :func:`gateway.receive.door.incoming_from_bytes`).
    source_format: str = "dicom"
    #: For a non-DICOM file: what the door read from it (UID, columns); None when it could not.
    document: DocumentValues | None = field(default=None, repr=False)
    #: For a non-DICOM file the door could not read: why (it is refused with a row).
    problem: str | None = None
    #: The Study Instance UID the data set must carry (STOW-RS ``/studies/{study}``); None = any.
    expected_study_uid: str | None = None
    #: The transfer syntaxes accepted on this path (STOW-RS: no Implicit VR); None = any readable one.
    transfer_syntaxes: frozenset[str] | None = None
    uid_valid: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uid_valid", is_valid_uid(self.sop_instance_uid))
        # fitted to their columns once; NULs and control characters go
        object.__setattr__(self, "calling_ae", _clean(self.calling_ae, 16))
        object.__setattr__(self, "peer_address", _clean(self.peer_address, 64))

    @classmethod
    def from_file(
        cls,
        raw: bytes,
        *,
        calling_ae: str | None = None,
        peer_address: str | None = "ingest",
        transfer_syntax_uid: str | None = None,
    ) -> IncomingInstance:
        """A DICOM Part 10 file (``ingest``): UIDs and transfer syntax from its
        file meta (None or "" where the file meta does not give them)."""
        meta = file_meta_uids(raw)
        return cls(
            raw,
            meta.sop_instance_uid,
            meta.sop_class_uid,
            meta.transfer_syntax_uid or "" if transfer_syntax_uid is None else transfer_syntax_uid,
            calling_ae,
            peer_address,
        )

    @property
    def suffix(self) -> str:
        """The spool file's suffix: the original's own kind (kept byte for byte)."""
        return ".dcm" if self.source_format == "dicom" else ".xml"

    @property
    def who(self) -> str:
        """``AE@address`` for log lines."""
        return f"{self.calling_ae or '-'}@{self.peer_address or '-'}"


@dataclass(frozen=True)
class StoreContext:
    """What storing needs beside the data set, set up once per SCP or ingest run."""

    session_factory: sessionmaker[Session]
    spool: Spool
    #: Refuse (0xA700) when the spool has less free space than this (plus the data set).
    min_free_disk_mb: int = 0
    #: ``[dicom] max_dataset_mb`` in bytes (as received or inflated).
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    #: The disk-space probe (a test may simulate a full disk).
    free_bytes: Callable[[Path], int] = disk_free_bytes

    @functools.cached_property
    def engine(self) -> Engine:
        """The session factory's engine: an accepted instance's row goes in over a
        plain connection (one INSERT and its commit; a Session around them cost
        ~0.3 ms of CPU per C-STORE).  Refusals, rare, keep the ORM."""
        bind = self.session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("StoreContext needs a sessionmaker bound to an Engine")
        return bind

    @classmethod
    def from_config(
        cls,
        dicom: DicomConfig,
        storage: StorageConfig,
        session_factory: sessionmaker[Session],
        *,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> StoreContext:
        """The context ``[dicom]`` and ``[storage]`` describe."""
        extra = {} if free_bytes is None else {"free_bytes": free_bytes}
        return cls(
            session_factory, Spool.from_config(storage), dicom.min_free_disk_mb, dicom.max_dataset_mb * _MIB, **extra
        )


#: Header values that say which patient, order, study and instance an ECG
#: belongs to (column -> keyword).  One that breaks its VR (several values
#: where VM is 1, too long, control characters: see ``checked_text``) refuses
#: the data set with the reason: such a value is never cut, joined or guessed.
IDENTITY_VALUES: dict[str, str] = {
    "sop_class_uid": "SOPClassUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "accession_number": "AccessionNumber",
    "placer_order_number": "PlacerOrderNumberImagingServiceRequest",
    "filler_order_number": "FillerOrderNumberImagingServiceRequest",
}
#: The other stored values.  One that breaks its VR is left out (not stored,
#: not sent), the ECG is flagged ``invalid_value:<keyword>`` and analysed.
OTHER_VALUES: dict[str, str] = {
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "manufacturer": "Manufacturer",
    "device_model": "ManufacturerModelName",
    "device_serial": "DeviceSerialNumber",
}
INVALID_VALUE_FLAG = "invalid_value:"


@dataclass
class HeaderValues:
    """The columns of an :class:`EcgInstance` from the header, checked."""

    columns: dict[str, Any]
    #: Identity values that break their VR ("PatientID: 2 values ..."): refuse.
    problems: list[str]
    #: Other values left out for breaking their VR ("PatientSex: ..."): flag.
    dropped: list[str]

    @property
    def flags(self) -> list[str]:
        return [INVALID_VALUE_FLAG + text.split(":", 1)[0] for text in self.dropped]


def header_values(header: EcgHeader) -> HeaderValues:
    """Column values for an :class:`EcgInstance`, from the header only,
    each checked against its VR (:data:`IDENTITY_VALUES`, :data:`OTHER_VALUES`).
    A value that breaks its VR is None in ``columns``; problems name the
    keyword and the problem, never the value."""
    out = HeaderValues({}, [], [])

    def read(keyword: str, problems: list[str], ds: Any = None) -> str | None:
        try:
            return checked_text(header.dataset if ds is None else ds, keyword)
        except ValueProblem as exc:
            problems.append(f"{keyword}: {exc}")
            return None

    for column, keyword in IDENTITY_VALUES.items():
        out.columns[column] = read(keyword, out.problems)
    requested_procedure_id = None
    try:
        items = list(header.dataset.get("RequestAttributesSequence") or [])
    except Exception:  # noqa: BLE001 - an unreadable optional sequence is ignored
        items = []
    for item in items:
        requested_procedure_id = requested_procedure_id or read("RequestedProcedureID", out.problems, item)
    out.columns["requested_procedure_id"] = requested_procedure_id
    for column, keyword in OTHER_VALUES.items():
        out.columns[column] = read(keyword, out.dropped)
    # the worklist's ward: where the patient is, else the department the cart belongs to
    out.columns["ward"] = read("CurrentPatientLocation", out.dropped) or read(
        "InstitutionalDepartmentName", out.dropped
    )
    acquired = read("AcquisitionDateTime", out.dropped)
    if acquired is None:
        date, time = read("ContentDate", out.dropped), read("ContentTime", out.dropped)
        acquired = date + (time or "") if date else None
    out.columns["acquisition_datetime"] = acquired
    out.columns["sop_class_uid"] = out.columns["sop_class_uid"] or ""
    return out


def demographics(header: EcgHeader) -> dict[str, Any]:
    """Column values for an :class:`EcgInstance`, from the header only (see
    :func:`header_values`; values that break their VR are None)."""
    return header_values(header).columns


class StagedFile:
    """Received bytes written and fsynced to ``<spool>/.incoming/`` in a
    background thread, while the association thread reads the header and
    queries the database (fsync and sha256 release the GIL, so the waits
    overlap).  ``place(sha256)`` may name the final path up front (from the
    announced UID): the thread computes it once (:attr:`planned`) and also
    renames the file there, so only the database commit is left on the
    association thread.  The file is moved with :meth:`move_to` (a no-op when
    already there), or removed."""

    def __init__(self, spool: Spool, data: bytes, place: Callable[[str], Path] | None = None) -> None:
        self._dir = spool.incoming
        self._tmp: Path | None = None
        self._sha256 = ""
        self._error: BaseException | None = None
        self._place = place
        #: Where ``place`` put the file (or would have: a file was there already).
        self.planned: Path | None = None
        #: True once moved to a path that did not exist before.
        self.created = False
        self.moved_to: Path | None = None
        self._thread = threading.Thread(target=self._write, args=(data,), name="spool-write", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        try:
            self._sha256 = hashlib.sha256(data).hexdigest()
            ensure_dir(self._dir)
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix="incoming-", suffix=".tmp")
            self._tmp = Path(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if self._place is not None:
                self.planned = self._place(self._sha256)
                # never over an existing file: that one may belong to a stored instance
                if not self.planned.exists():
                    self._move(self.planned)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def _move(self, dest: Path) -> None:
        src = self._tmp if self._tmp is not None else self.moved_to
        assert src is not None
        ensure_dir(dest.parent)
        existed = dest.exists()
        os.replace(src, dest)
        self._tmp = None
        fsync_dir(dest.parent)
        self.moved_to, self.created = dest, not existed

    def sha256(self) -> str:
        self._thread.join()
        if not self._sha256 and self._error:
            raise self._error
        return self._sha256

    def placed_at(self, dest: Path) -> bool:
        """True when the writer thread renamed the file to ``dest``, a path
        that did not exist before (so no earlier copy shares it)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.moved_to == dest and self.created

    def move_to(self, dest: Path) -> None:
        """Atomically rename into ``dest`` and make the rename durable.
        Raises OSError when the background write failed (e.g. disk full)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.moved_to != dest:
            self._move(dest)

    def discard(self) -> None:
        """Remove the temp file (a no-op once moved)."""
        self._thread.join()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def undo(self) -> None:
        """Remove the moved file if this call created it (not acknowledged)."""
        self._thread.join()
        if self.moved_to is not None and self.created:
            self.moved_to.unlink(missing_ok=True)
            self.moved_to, self.created = None, False


def store_instance(incoming: IncomingInstance, ctx: StoreContext) -> StoreOutcome:
    """Store one data set durably, or refuse it with a C-STORE status and a reason.

    Success (0x0000) means the file and its ``received`` row are committed; a
    duplicate (same UID, same bytes) is success with ``duplicate=True`` and
    nothing new stored.  A data set larger than ``ctx.max_dataset_bytes`` (as
    given or inflated) is refused with :data:`DATA_SET_TOO_LARGE` and nothing
    is kept.
    """
    raw = incoming.raw
    try:
        check_size(len(raw), ctx.max_dataset_bytes)
    except DatasetTooLarge as exc:
        return refuse_too_large(incoming, str(exc))
    ctx.spool.root.mkdir(parents=True, exist_ok=True)
    if ctx.free_bytes(ctx.spool.root) < ctx.min_free_disk_mb * _MIB + len(raw):
        reason = f"less than {ctx.min_free_disk_mb} MB free in the spool"
        log.warning("refused a data set (%d bytes) from %s: %s", len(raw), incoming.who, reason)
        return StoreOutcome(OUT_OF_RESOURCES, None, False, reason)

    received = utcnow()
    announced = incoming.sop_instance_uid

    def place(sha256: str) -> Path:
        assert announced is not None
        return ctx.spool.new_file(announced, sha256, received, incoming.suffix)

    staged = StagedFile(ctx.spool, raw, place if incoming.uid_valid else None)
    arrival = _Arrival(incoming, ctx, staged, received)
    try:
        outcome = arrival.check_and_store()
        outcome.sop_instance_uid = arrival.uid if arrival.uid_valid else None
        outcome.sop_class_uid = arrival.header.sop_class_uid if arrival.header is not None else None
        return outcome
    except DatasetTooLarge as exc:
        staged.undo()  # an early placement in the spool goes too
        return refuse_too_large(incoming, str(exc))
    except OSError as exc:
        staged.undo()
        reason = f"cannot write to the spool: {exc.strerror or exc}"
        log.error("refused a data set from %s: %s", incoming.who, reason)
        return StoreOutcome(OUT_OF_RESOURCES, None, False, reason)
    except BaseException:
        staged.undo()
        raise
    finally:
        staged.discard()


def refuse_too_large(incoming: IncomingInstance, reason: str) -> StoreOutcome:
    """Refuse a data set over ``max_dataset_mb``: one WARNING line (source and,
    when valid, the announced SOP Instance UID; no PHI), no row, no file."""
    log.warning(
        "refused SOP Instance UID %s from %s with status 0x%04X: %s; nothing kept",
        incoming.sop_instance_uid if incoming.uid_valid else "(none or invalid)",
        incoming.who,
        DATA_SET_TOO_LARGE,
        reason,
    )
    return StoreOutcome(DATA_SET_TOO_LARGE, None, False, reason)


@dataclass
class _IdentityConflict:
    """The version whose patient identity a new version does not share."""

    ecg_id: int
    version: int


#: One statement, no ORM unit of work: the row id comes back with the insert.
_ECG_TABLE = cast(Table, EcgInstance.__table__)  # declarative mapping: the mapped Table
_INSERT_INSTANCE = insert(_ECG_TABLE).returning(_ECG_TABLE.c.id)
_SAME_UID = (
    select(
        EcgInstance.id,
        EcgInstance.version,
        EcgInstance.sha256,
        EcgInstance.status,
        EcgInstance.spool_path,
        EcgInstance.flags,
        EcgInstance.patient_id,
        EcgInstance.issuer_of_patient_id,
    )
    .where(EcgInstance.sop_instance_uid == bindparam("uid"))
    .order_by(EcgInstance.version)
)


class _Arrival:
    """One data set on its way through :func:`store_instance`: the record,
    the context, its staged file and its time of receipt, shared by the
    checks, the commit and the refusal paths."""

    def __init__(self, incoming: IncomingInstance, ctx: StoreContext, staged: StagedFile, received: datetime) -> None:
        self.incoming, self.ctx, self.staged, self.received = incoming, ctx, staged, received
        self.header: EcgHeader | None = None
        #: The data set's SOPInstanceUID and whether it is valid (set once the header is read).
        self.uid: str | None = None
        self.uid_valid = False

    def check_and_store(self) -> StoreOutcome:
        incoming = self.incoming
        if incoming.source_format != "dicom":
            return self.check_and_store_document()
        try:
            # DatasetTooLarge: refused by the caller
            self.header = header = read_header(incoming.raw, self.ctx.max_dataset_bytes)
        except DicomError as exc:
            return self.reject(CANNOT_UNDERSTAND, str(exc))
        self.uid = uid = header.sop_instance_uid
        # the announced UID was validated at the door; only a data set that says otherwise is checked again
        self.uid_valid = incoming.uid_valid if uid == incoming.sop_instance_uid else is_valid_uid(uid)
        if not self.uid_valid:
            return self.reject(CANNOT_UNDERSTAND_INVALID_UID, "SOP Instance UID is missing or not a valid DICOM UID")
        if incoming.transfer_syntaxes is not None and header.transfer_syntax_uid not in incoming.transfer_syntaxes:
            return self.reject(
                TRANSFER_SYNTAX_NOT_SUPPORTED,
                f"transfer syntax {printable(header.transfer_syntax_uid)} is not accepted here "
                f"(accepted: {', '.join(sorted(incoming.transfer_syntaxes))})",
            )
        if incoming.expected_study_uid is not None and header.get("StudyInstanceUID") != incoming.expected_study_uid:
            return self.reject(STUDY_UID_MISMATCH, "Study Instance UID is not the one the request names")
        if header.sop_class_uid not in ECG_STORAGE_SOP_CLASSES:
            return self.reject(
                DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Class {printable(header.sop_class_uid)} is not an ECG waveform storage class",
            )
        problem = header.waveform_problem()
        if problem:
            return self.reject(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, problem)
        values = header_values(header)
        if values.problems:
            # never cut or guessed: a wrong identity would file the result under another patient or order
            return self.reject(
                DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "identity values break their VR: " + "; ".join(values.problems)
            )

        assert uid is not None
        columns = dict(values.columns)
        columns["transfer_syntax_uid"] = incoming.transfer_syntax_uid or header.transfer_syntax_uid
        return self.store(uid, columns, values.flags, values.dropped)

    def check_and_store_document(self) -> StoreOutcome:
        """A Philips XML or aECG file: the door read its values (or why not)."""
        incoming, document = self.incoming, self.incoming.document
        if incoming.problem is not None or document is None:
            return self.reject(CANNOT_UNDERSTAND, incoming.problem or "the file could not be read")
        self.uid, self.uid_valid = document.instance_uid, incoming.uid_valid
        if not self.uid_valid:  # the readers make valid UIDs; never a path from a bad one
            return self.reject(CANNOT_UNDERSTAND_INVALID_UID, "the instance UID derived from the file is not valid")
        columns = {**document.columns, "transfer_syntax_uid": None, "source_format": incoming.source_format}
        flags = [INVALID_VALUE_FLAG + text.split(":", 1)[0] for text in document.dropped]
        return self.store(document.instance_uid, columns, flags, document.dropped)

    def store(self, uid: str, columns: dict[str, Any], flags: list[str], dropped: list[str]) -> StoreOutcome:
        """Commit the accepted instance (retrying a lost race), or refuse it."""
        incoming = self.incoming
        try:
            for _attempt in range(_DB_RETRIES):
                try:
                    stored = self._store_version(uid, columns, flags)
                except IntegrityError:
                    # Another association committed this UID's next version first: look again.
                    continue
                if isinstance(stored, _IdentityConflict):
                    return self.reject(
                        IDENTITY_CONFLICT,
                        f"{IDENTITY_CHANGED_REASON} (version {stored.version} is ecg id {stored.ecg_id})",
                        flags=[IDENTITY_CHANGED],
                        conflict=stored,
                    )
                if dropped and not stored.duplicate:
                    log.warning(
                        "SOP Instance UID %s (ecg id %s): left out, breaking their VR: %s",
                        uid,
                        stored.ecg_id,
                        "; ".join(dropped),
                    )
                return stored
            reason = "database conflict persisted; try again"
        except SQLAlchemyError as exc:
            reason = f"database unavailable: {type(exc).__name__}"
        self.staged.undo()  # not acknowledged, so not kept
        log.error("refused SOP Instance UID %s from %s: %s", uid, incoming.who, reason)
        return StoreOutcome(OUT_OF_RESOURCES, None, False, reason)

    def _path(self, uid: str, sha256: str) -> Path:
        """The spool file for ``uid``: the one the writer thread planned when
        the data set's UID is the announced one (the usual case)."""
        staged = self.staged
        if staged.planned is not None and uid == self.incoming.sop_instance_uid:
            return staged.planned
        return self.ctx.spool.new_file(uid, sha256, self.received, self.incoming.suffix)

    def _store_version(self, uid: str, columns: dict[str, Any], flags: list[str]) -> StoreOutcome | _IdentityConflict:
        """Commit the row for one accepted instance (its file durable first).

        Optimistic: when the writer thread placed the file at a path that did not
        exist (so no same-day copy of these bytes), version 1 is inserted straight
        away and the unique (sop_instance_uid, version) constraint arbitrates;
        only on a clash are the UID's rows looked up (duplicate or new version).
        Versions are never deleted, so version 1 exists whenever any row does.

        A new version whose patient identity differs from the first version
        accepted at the door is not stored here: the caller quarantines it.
        """
        staged, spool, incoming = self.staged, self.ctx.spool, self.incoming
        size = len(incoming.raw)
        sha256 = staged.sha256()
        path = self._path(uid, sha256)
        row = {
            "sop_instance_uid": uid,
            "spool_path": spool.stored(path),
            "sha256": sha256,
            "size_bytes": size,
            "status": RECEIVED,
            "received_at": self.received,
            **columns,
            "calling_ae": incoming.calling_ae,
            "peer_address": incoming.peer_address,
        }
        with self.ctx.engine.connect() as conn:
            if staged.placed_at(path):
                try:
                    first = {**row, "version": 1, "flags": flags}
                    ecg_id = conn.execute(_INSERT_INSTANCE, first).scalar_one()
                    conn.commit()  # a failed COMMIT discards the connection (store.db.make_engine)
                except IntegrityError:
                    conn.rollback()  # this UID is known: look at its versions
                else:
                    log.info(
                        "stored SOP Instance UID %s as ecg id %d (%d bytes) from %s", uid, ecg_id, size, incoming.who
                    )
                    return StoreOutcome(SUCCESS, ecg_id, False, None)
            existing = conn.execute(_SAME_UID, {"uid": uid}).all()
            for same in existing:
                if same.sha256 == sha256 and same.status != REJECTED:
                    # Our copy goes, unless it sits at the stored row's own path: then it
                    # is that row's file (same bytes; a concurrent resend may have
                    # committed first, or the file had gone missing).
                    if staged.moved_to != spool.resolve(same.spool_path):
                        staged.undo()
                    log.info(
                        "duplicate SOP Instance UID %s (ecg id %s, same bytes) from %s: not stored again",
                        uid,
                        same.id,
                        incoming.who,
                    )
                    return StoreOutcome(SUCCESS, same.id, True, "duplicate")
            accepted = [same for same in existing if not quarantined(same.flags)]
            first_identity = accepted and patient_identity(accepted[0].patient_id, accepted[0].issuer_of_patient_id)
            if accepted and first_identity != patient_identity(
                columns.get("patient_id"), columns.get("issuer_of_patient_id")
            ):
                return _IdentityConflict(accepted[0].id, accepted[0].version)
            version = max((same.version for same in existing), default=0) + 1
            if any(same.status != REJECTED for same in existing):
                flags = ["new_version", *flags]
            staged.move_to(path)  # usually already there (placed by the writer thread)
            next_version = {**row, "version": version, "flags": flags}
            ecg_id = conn.execute(_INSERT_INSTANCE, next_version).scalar_one()
            conn.commit()
        if "new_version" in flags:
            log.warning(
                "SOP Instance UID %s received again with different bytes: stored as version %d (ecg id %d), "
                "flagged new_version",
                uid,
                version,
                ecg_id,
            )
        else:
            log.info("stored SOP Instance UID %s as ecg id %d (%d bytes) from %s", uid, ecg_id, size, incoming.who)
        return StoreOutcome(SUCCESS, ecg_id, False, None)

    def reject(
        self, status: int, reason: str, *, flags: list[str] | None = None, conflict: _IdentityConflict | None = None
    ) -> StoreOutcome:
        """Refuse with ``status``; keep a quarantine copy and a ``rejected`` row
        when possible (best effort: the refusal stands either way).  A
        ``conflict`` (another patient under a known UID) is also audited."""
        shown = self.uid if self.uid_valid else "(none or invalid)"
        sha256 = self.staged.sha256()
        ecg_id = None
        try:
            ecg_id = self._record_rejection(reason, flags or [], conflict)
        except (OSError, SQLAlchemyError) as exc:
            self.staged.undo()
            log.error("could not record the rejection of sha256 %s: %s", sha256[:12], exc)
        log.warning(
            "rejected SOP Instance UID %s (sha256 %s, ecg id %s) from %s with status 0x%04X: %s",
            shown,
            sha256[:12],
            ecg_id,
            self.incoming.who,
            status,
            reason,
        )
        return StoreOutcome(status, ecg_id, False, reason)

    def _record_rejection(self, reason: str, flags: list[str], conflict: _IdentityConflict | None) -> int | None:
        header, staged, incoming = self.header, self.staged, self.incoming
        values = header_values(header) if header else None
        columns: dict[str, Any] = values.columns if values else {"sop_class_uid": ""}
        if incoming.document is not None:
            columns = dict(incoming.document.columns)
        columns["source_format"] = incoming.source_format
        from_header = header.transfer_syntax_uid if header else None
        columns["transfer_syntax_uid"] = incoming.transfer_syntax_uid or from_header
        # The UID is data here, never a path: an invalid one is kept as printable text.
        uid = _clean(self.uid, 64) or ""
        sha256 = staged.sha256()
        quarantine = self.ctx.spool.rejected_file(sha256, incoming.suffix)
        for _attempt in range(_DB_RETRIES):
            with self.ctx.session_factory() as session:
                same = session.scalar(
                    select(EcgInstance.id).where(EcgInstance.sha256 == sha256, EcgInstance.status == REJECTED).limit(1)
                )
                if same is not None:
                    staged.undo()  # drop an early placement in the spool
                    return same  # the same bytes were refused before
                versions = session.scalars(select(EcgInstance.version).where(EcgInstance.sop_instance_uid == uid)).all()
                staged.move_to(quarantine)
                row = EcgInstance(
                    sop_instance_uid=uid,
                    version=max(versions, default=0) + 1,
                    spool_path=self.ctx.spool.stored(quarantine),
                    sha256=sha256,
                    size_bytes=quarantine.stat().st_size,
                    status=REJECTED,
                    error=reason,
                    flags=[REJECTED_AT_RECEIVE, *flags, *(values.flags if values else [])],
                    **columns,
                    calling_ae=incoming.calling_ae,
                    peer_address=incoming.peer_address,
                )
                session.add(row)
                try:
                    session.flush()
                    if conflict is not None:
                        audit(
                            session,
                            f"dicom:{incoming.who}",
                            IDENTITY_CHANGED_AUDIT,
                            f"ecg:{row.id}",
                            sop_instance_uid=uid,
                            version=row.version,
                            sha256=sha256,
                            reference_ecg_id=conflict.ecg_id,
                            reference_version=conflict.version,
                        )
                    session.commit()
                except IntegrityError:
                    continue
                return row.id
        staged.undo()
        return None
