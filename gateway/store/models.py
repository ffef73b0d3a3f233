"""The database schema (SQLAlchemy 2).  Alembic migrations in ``migrations/``
must agree with it; ``tests/test_migrations.py`` checks that they do.

PHI (patient name, id, birth date) lives only here, behind the admin token;
logs name SOP Instance UIDs and row ids.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gateway.timeutil import utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class CompressedJSON(TypeDecorator[Any]):
    """JSON stored zlib-compressed: the normalisation report (2.6 KB of repetitive
    per-channel JSON) takes 0.7 KB, the cart's measurements 1.2 KB take 0.3 KB, and
    an ECG row fits a SQLite page several times over.  Read and written as the
    value itself; not for SQL queries."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.loads(zlib.decompress(value))


class CompressedText(TypeDecorator[str]):
    """Text stored zlib-compressed (UTF-8): an ORU^R01 with the cart's measurements is
    ~3 KB and compresses to ~1 KB.  PostgreSQL compresses such values itself (TOAST);
    SQLite does not, and a 3 KB row filled a page with room for no second one."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        return None if value is None else zlib.compress(value.encode("utf-8"), 6)

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else zlib.decompress(value).decode("utf-8")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


# ECG instance statuses.
RECEIVED = "received"  # durable in the spool, waiting for the worker
PROCESSING = "processing"  # claimed by a worker (lease in lease_expires_at)
PROCESSED = "processed"
REJECTED = "rejected"  # the input cannot be analysed; final
FAILED = "failed"  # unexpected error after max attempts; final until an admin acts
ECG_STATUSES = (RECEIVED, PROCESSING, PROCESSED, REJECTED, FAILED)

# Outbound HL7 statuses.
HL7_PENDING = "pending"
HL7_DELIVERED = "delivered"
HL7_FAILED = "failed"
HL7_SUPERSEDED = "superseded"  # replaced by a manual resend
HL7_STATUSES = (HL7_PENDING, HL7_DELIVERED, HL7_FAILED, HL7_SUPERSEDED)


class EcgInstance(Base):
    """One received ECG (one version of one SOP instance): DICOM, or a
    Philips Sierra XML / HL7 aECG document (``source_format``) stored under
    the instance UID its reader derives (``gateway.formats``)."""

    __tablename__ = "ecg_instances"
    __table_args__ = (
        # A SOP Instance UID is stored once; different bytes under the same
        # UID become version 2, 3, ... and are flagged.
        UniqueConstraint("sop_instance_uid", "version"),
        Index("ix_ecg_instances_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    placer_order_number: Mapped[str | None] = mapped_column(String(64))
    filler_order_number: Mapped[str | None] = mapped_column(String(64))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    device_model: Mapped[str | None] = mapped_column(String(64))
    device_serial: Mapped[str | None] = mapped_column(String(64))
    #: Where the ECG was recorded, for the over-read worklist's filter: DICOM
    #: CurrentPatientLocation, else InstitutionalDepartmentName (the cart's department).
    ward: Mapped[str | None] = mapped_column(String(64), index=True)
    #: DICOM DT as received (AcquisitionDateTime, else ContentDate+Time).
    acquisition_datetime: Mapped[str | None] = mapped_column(String(32))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    #: What the spooled original is: "dicom", "philips" (Sierra XML) or "aecg" (HL7 aECG).
    source_format: Mapped[str] = mapped_column(String(16), default="dicom", server_default="dicom")
    spool_path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=RECEIVED)
    error: Mapped[str | None] = mapped_column(Text)
    #: What normalisation learned (parameters, source rate, units, leads...), also for
    #: rejected ECGs; stored once here (a prediction reads it through ``ecg``), compressed.
    report: Mapped[dict[str, Any] | None] = mapped_column(CompressedJSON)
    #: The cart's global measurements (``gateway.report.measurements``):
    #: {"heart_rate": {"value": 61, "unit": "/min", "code": "8867-4", "source": "derived", ...}, ...};
    #: NULL when not read (rows processed before revision 0008, or an unreadable file).
    measurements: Mapped[dict[str, Any] | None] = mapped_column(CompressedJSON)
    #: The cart's own interpretation statements (its text, in its order); NULL as above.
    cart_statements: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Free-form markers, e.g. ["new_version"].
    flags: Mapped[list[Any]] = mapped_column(default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    #: Who holds the claim (store.claimer.Claimer): "hostname/boot id/pid
    #: namespace", pid, and the pid's start time in clock ticks after boot.
    claim_host: Mapped[str | None] = mapped_column(String(200))
    claim_pid: Mapped[int | None] = mapped_column(Integer)
    claim_started: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    processed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Set when retention pruning has chosen this row: its spool file may already be
    #: gone (``store.retention``), and the row goes next.
    pruning_since: Mapped[datetime | None]

    prediction: Mapped[Prediction | None] = relationship(back_populates="ecg", uselist=False)
    messages: Mapped[list[Hl7Message]] = relationship(back_populates="ecg", order_by="Hl7Message.id")


class Prediction(Base):
    """What the model said about one ECG, and everything needed to reproduce it."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ecg_id: Mapped[int] = mapped_column(ForeignKey("ecg_instances.id", ondelete="CASCADE"), unique=True)
    #: {"1dAVb": p, ...} (ensemble mean).
    probabilities: Mapped[dict[str, Any]]
    #: Ensemble spread per finding: {"1dAVb": {"min":, "max":, "std":}, ...}.
    spread: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Codes whose probability is above its threshold.
    findings: Mapped[list[Any]]
    thresholds: Mapped[dict[str, Any]]
    #: [{"path": ..., "sha256": ..., "demo": bool}, ...]
    model_files: Mapped[list[Any]]
    #: sha256 of the single model file, or of the sorted ensemble hashes.
    model_sha256: Mapped[str] = mapped_column(String(64))
    demo_model: Mapped[bool] = mapped_column(Boolean, default=False)
    quality_flags: Mapped[list[Any]] = mapped_column(default=list)
    #: sha256 of the exact float32 (4096, 12) array the model saw (``normalise.input_sha256``).
    #: The array itself is not stored: it is rebuilt from the spooled original with the
    #: parameters in ``ecg.report["params"]`` and checked against this hash.
    #: NULL only for rows migrated from a database that had no input bytes for them.
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    #: ``normalise.normaliser_version()`` that made the input; NULL for rows
    #: processed before revision 0003 (``gateway_version`` says by which release).
    normaliser_version: Mapped[str | None] = mapped_column(String(64))
    gateway_version: Mapped[str] = mapped_column(String(32))
    #: {"normalise_ms":, "infer_ms":, "received_to_processed_ms":, "batch_size":}
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    ecg: Mapped[EcgInstance] = relationship(back_populates="prediction")


class Hl7Message(Base):
    """The outbox: one row per ORU^R01 to deliver, stored before it is sent."""

    __tablename__ = "hl7_messages"
    __table_args__ = (Index("ix_hl7_messages_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ecg_id: Mapped[int] = mapped_column(ForeignKey("ecg_instances.id", ondelete="CASCADE"), index=True)
    control_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: Messages with the same key go out in id order (one patient's results).
    order_key: Mapped[str] = mapped_column(String(200), index=True)
    #: The ER7 text (compressed in the database; read and written as text).
    payload: Mapped[str] = mapped_column(CompressedText)
    status: Mapped[str] = mapped_column(String(16), default=HL7_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    ack: Mapped[str | None] = mapped_column(Text)
    #: Set when this row is a manual resend of another.
    resend_of: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id"))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    #: Who holds the claim while a send is under way (store.claimer.Claimer, as
    #: ``ecg_instances.claim_*``); NULL when not claimed (cleared with the outcome).
    claim_host: Mapped[str | None] = mapped_column(String(200))
    claim_pid: Mapped[int | None] = mapped_column(Integer)
    claim_started: Mapped[int | None] = mapped_column(BigInteger)

    ecg: Mapped[EcgInstance] = relationship(back_populates="messages")


# Outbound PACS statuses (as HL7's).
PACS_PENDING, PACS_DELIVERED, PACS_FAILED, PACS_SUPERSEDED = "pending", "delivered", "failed", "superseded"
PACS_STATUSES = (PACS_PENDING, PACS_DELIVERED, PACS_FAILED, PACS_SUPERSEDED)


class PacsMessage(Base):
    """The PACS outbox: one row per DICOM object (Encapsulated PDF, SR) to store,
    written in the result's transaction.  Its SOP Instance UID is fixed here,
    so a send repeated after a crash stores the same instance, never a second."""

    __tablename__ = "pacs_messages"
    __table_args__ = (Index("ix_pacs_messages_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ecg_id: Mapped[int] = mapped_column(ForeignKey("ecg_instances.id", ondelete="CASCADE"), index=True)
    #: "pdf" (Encapsulated PDF) or "sr" (Comprehensive SR).
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=PACS_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    #: Who holds the claim while a send is under way (store.claimer.Claimer, as
    #: ``ecg_instances.claim_*``); NULL when not claimed (cleared with the outcome).
    claim_host: Mapped[str | None] = mapped_column(String(200))
    claim_pid: Mapped[int | None] = mapped_column(Integer)
    claim_started: Mapped[int | None] = mapped_column(BigInteger)
    #: The physician's over-read this object reports (``confirmations.id``); NULL = the AI's result.
    #: No foreign key: the column was added to a live table; retention deletes both together.
    confirmation_id: Mapped[int | None] = mapped_column(Integer)


# Over-read outcomes of one confirmation version (``gateway.admin.overread``).
CONFIRMED = "confirmed"  # the reader kept the AI's findings
CORRECTED = "corrected"  # the reader added or removed findings


class Confirmation(Base):
    """One version of a physician's over-read of an ECG's AI result.  Every
    version is kept (never updated): who, when, what they confirmed and what
    changed against the AI and against the previous version.  The AI's own
    output stays in ``predictions``, unchanged."""

    __tablename__ = "confirmations"
    __table_args__ = (UniqueConstraint("ecg_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ecg_id: Mapped[int] = mapped_column(ForeignKey("ecg_instances.id", ondelete="CASCADE"), index=True)
    #: 1 for the first confirmation, then 2, 3, ... for each edit.
    version: Mapped[int] = mapped_column(Integer)
    #: The reader as the user record said at the time (a later rename does not
    #: rewrite history): ``users.id`` (no foreign key: users are disabled, not
    #: deleted), login name, full name, identifier sent in OBR-32.
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(200))
    full_name: Mapped[str | None] = mapped_column(String(200))
    hl7_id: Mapped[str | None] = mapped_column(String(64))
    #: Confirmed finding codes (``gateway.findings``), in the model's output order.
    findings: Mapped[list[Any]]
    #: The reader's free-text statements, in their order.
    statements: Mapped[list[Any]] = mapped_column(default=list)
    comment: Mapped[str | None] = mapped_column(Text)
    #: CONFIRMED or CORRECTED (against the AI's findings).
    outcome: Mapped[str] = mapped_column(String(16))
    #: {"vs_ai": {"added": [...], "removed": [...]}, "vs_previous": null | {"added", "removed",
    #: "statements_added", "statements_removed", "comment_changed"}}
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: OBR-25 of the ORU this version sent: "F" (first final) or "C" (correction of a final).
    result_status: Mapped[str] = mapped_column(String(1))
    hl7_message_id: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditLog(Base):
    """Who did what, when, from where: every view of patient data, every PHI
    export, every manual action, every login (success and failure) and user
    change.  The application only ever adds rows (retention's ``db prune``
    excepted, which keeps them too); failed logins are also the login rate
    limit's memory (``gateway.admin.users``), so it holds across processes."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_action_at", "action", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: A user name, ``token`` (the bootstrap ``[admin] token``), ``cli:<os user>``,
    #: ``worker:<id>``, ``dicom:<peer>``; for a failed login, the name typed.
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    #: The ECG looked at or acted on (no foreign key: the row outlives the ECG).
    ecg_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: Where the request came from (client address), NULL for local commands.
    address: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


#: User roles, weakest first: a viewer reads; a reader also confirms and edits
#: results; an admin also resends, exports and manages users.
ROLES = ("viewer", "reader", "admin")


class User(Base):
    """A person who signs in to the web view or calls the API (``ecg-gateway users``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    full_name: Mapped[str | None] = mapped_column(String(200))
    #: The person's identifier for HL7 (XCN.1 / CNN.1 of OBR-32, e.g. a licence number).
    hl7_id: Mapped[str | None] = mapped_column(String(64))
    #: argon2id hash (PHC string); NULL = no password login (API token only).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[datetime | None]
    #: Set by ``users disable``: no login, no session, no token works.
    disabled_at: Mapped[datetime | None]


class ApiToken(Base):
    """A user's bearer token for the API: the caller holds the random token,
    this row only its SHA-256 (256 random bits need no slow hash)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Set when a newer token replaces it (``users token`` again) or the user is disabled.
    revoked_at: Mapped[datetime | None]


class AdminSession(Base):
    """A web view login (``gateway.admin.auth``): the browser holds the random
    session id, this row only its SHA-256.  ``principal`` is who signed in:
    ``"token"`` for the shared ``[admin] token``, else the user name, with
    ``user_id`` naming the user."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: hex SHA-256 of the session id in the cookie.
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal: Mapped[str] = mapped_column(String(200))
    #: The signed-in user; NULL for a session of the bootstrap ``[admin] token``.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: HMAC of the session id keyed with the credential used at login: a
    #: changed admin token, or a user's changed password, ends the sessions it opened.
    credential_mac: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    #: Set at logout; a revoked session is never accepted again.
    revoked_at: Mapped[datetime | None]
