"""Configuration: one TOML file, overridable per key from the environment.

Precedence (highest first): ``ECG_GATEWAY_<SECTION>__<KEY>`` environment
variables, the TOML file (``--config PATH`` or ``ECG_GATEWAY_CONFIG``), the
defaults below.  Relative paths are resolved against the working directory.

Validation happens once, on load; any problem raises :class:`ConfigError` with
one line that names the offending key, which the CLI prints before exiting 2.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.findings import BY_CODE, REGISTRY

ENV_PREFIX = "ECG_GATEWAY_"
CONFIG_ENV = "ECG_GATEWAY_CONFIG"
#: Variables of the test suite and benchmarks, not settings (no warning for them).
TEST_ENV_PREFIXES = ("ECG_GATEWAY_TEST_", "ECG_GATEWAY_FUZZ_", "ECG_GATEWAY_SOAK_", "ECG_GATEWAY_BENCH_")
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
#: The default of ``[dicom] max_dataset_mb``.  Real carts send 0.1-1 MB (pydicom's
#: Mortara sample: 291 KB); the 12-lead IOD's own maximum is about 2 MB
#: (5 groups x 13 channels x 16384 samples x 2 bytes); 64 MB still holds a
#: 10-minute, 24-channel, 32-bit General ECG at 1000 Hz.
DEFAULT_MAX_DATASET_MB = 64

Port = Annotated[int, Field(ge=1, le=65535)]
OptionalPort = Annotated[int, Field(ge=0, le=65535)]  # 0 = disabled
AETitle = Annotated[
    str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ][\x20-\x5b\x5d-\x7e]*$")
]
#: An HL7 namespace id (HD-1, IS): 1-20 printable characters, no HL7 delimiter.
Hl7Namespace = Annotated[
    str, Field(min_length=1, max_length=20, pattern=r"^[!-%'-\[\]_-{}](?:[ -%'-\[\]_-{}]*[!-%'-\[\]_-{}])?$")
]

#: Paper thresholds (Ribeiro et al. 2020, chosen on validation for best F1).
PAPER_THRESHOLDS: dict[str, float] = {f.code: f.threshold for f in REGISTRY}

ZENODO_MODEL_URL = "https://zenodo.org/records/3765717/files/model.zip?download=1"
ZENODO_MODEL_MD5 = "82cdf807d3ed9dbdf664a66466fb4589"
ZENODO_DATA_URL = "https://zenodo.org/records/3765780/files/data.zip?download=1"


class ConfigError(Exception):
    """A configuration problem, phrased as one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _existing_file(value: str, what: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"{what} file not found: {value}")
    return value


class DicomConfig(_Section):
    """The storage SCP that carts send to."""

    ae_title: AETitle = "ECGGW"
    host: str = "0.0.0.0"
    port: Port = 11112
    #: Calling AE titles allowed to associate; empty = any.
    allowed_calling_aets: list[AETitle] = []
    #: Source hosts or networks (CIDR) allowed to connect; empty = any.
    allowed_hosts: list[str] = []
    #: Refuse associations whose Called AE title is not ``ae_title``.
    require_called_aet: bool = True
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    acse_timeout: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 30.0
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    #: Seconds a peer may take to send one PDU header or body once it started;
    #: a peer stalling longer is dropped (frees its association slot).
    pdu_timeout: Annotated[float, Field(gt=0)] = 30.0
    max_pdu: Annotated[int, Field(ge=0)] = 16382
    #: Refuse C-STOREs (0xA700) when the spool has less free space than this.
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 500
    #: The largest data set accepted, as received and (Deflated) inflated; a
    #: larger one is refused while it arrives. At most 2047 (size_bytes column).
    max_dataset_mb: Annotated[int, Field(ge=1, le=2047)] = DEFAULT_MAX_DATASET_MB
    #: A second listener with TLS; 0 = off.
    tls_port: OptionalPort = 0
    tls_cert: str = ""
    tls_key: str = ""
    #: When set, clients must present a certificate signed by this CA.
    tls_ca: str = ""

    @field_validator("allowed_hosts")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value

    @field_validator("tls_cert", "tls_key", "tls_ca")
    @classmethod
    def _tls_files(cls, value: str, info: Any) -> str:
        return _existing_file(value, info.field_name)

    @model_validator(mode="after")
    def _tls_complete(self) -> DicomConfig:
        if self.tls_port and not (self.tls_cert and self.tls_key):
            raise ValueError("tls_port needs tls_cert and tls_key")
        if self.tls_port and self.tls_port == self.port:
            raise ValueError("tls_port must differ from port")
        return self


class StorageConfig(_Section):
    database_url: str = "sqlite:///var/gateway.db"
    spool_dir: str = "var/spool"
    #: Days to keep finished ECGs (rows and spool files; the audit log stays);
    #: ``serve`` prunes once a day.  0 = keep everything (the default).
    retention_days: int = Field(0, ge=0)

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL: {value!r}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite and postgresql databases are supported")
        return value


#: Names a writer uses while a file is still being written; the watched folder never takes them.
DEFAULT_IGNORED_SUFFIXES = [".part", ".partial", ".tmp", ".temp", ".crdownload", ".filepart", ".swp", "~"]


class IngestConfig(_Section):
    """Where files arrive besides the DICOM SCP: the watched folder (run by
    ``serve``) and DICOMweb STOW-RS (on the admin listener)."""

    #: Folder whose files are taken once they stop growing; "" = no watched folder.
    watch_dir: str = ""
    #: Where a stored (or duplicate) file is moved after its row is committed.
    done_dir: str = "var/ingest/done"
    #: Where a refused file is moved, with ``<name>.reason.txt`` beside it.
    failed_dir: str = "var/ingest/failed"
    #: Seconds between two looks at the folder; a file is taken once its size
    #: and modification time are the same at two consecutive looks.
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    #: Name endings of files still being written (never taken); dotfiles are never taken either.
    ignored_suffixes: list[str] = DEFAULT_IGNORED_SUFFIXES
    #: DICOMweb STOW-RS (``POST /dicomweb/studies``) on the admin listener.
    stow_enabled: bool = True
    #: The largest STOW-RS request body (MB, all parts together); larger ones get 413.
    stow_max_request_mb: Annotated[int, Field(ge=1, le=65536)] = 256
    #: The most instances (parts) in one STOW-RS request; more get 413.
    stow_max_instances: Annotated[int, Field(ge=1, le=100000)] = 1000

    @model_validator(mode="after")
    def _distinct_folders(self) -> IngestConfig:
        if not self.watch_dir:
            return self
        named = {"watch_dir": self.watch_dir, "done_dir": self.done_dir, "failed_dir": self.failed_dir}
        for key, value in named.items():
            if not value:
                raise ValueError(f"{key} is empty; the watched folder needs watch_dir, done_dir and failed_dir")
        resolved = {key: Path(value).expanduser().resolve() for key, value in named.items()}
        if len(set(resolved.values())) < 3:
            raise ValueError("watch_dir, done_dir and failed_dir must be three different folders")
        return self


class ModelConfig(_Section):
    #: Keras HDF5 files; more than one = ensemble (mean probability).
    files: list[str] = ["models/model.hdf5"]
    #: Per-finding decision thresholds; a finding is reported above its threshold.
    thresholds: dict[str, Annotated[float, Field(gt=0, lt=1)]] = dict(PAPER_THRESHOLDS)
    #: Micro-batching: run when this many ECGs wait, or after ``max_wait_ms``.
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    max_wait_ms: Annotated[int, Field(ge=0, le=60000)] = 20
    #: TensorFlow intra/inter-op threads; 0 = one per core.
    threads: Annotated[int, Field(ge=0, le=256)] = 0
    #: Trace every batch size before serving (about 2 s of CPU at start), so the
    #: first batch of each size does not wait for it; false: at first use.
    warm_up: bool = True
    url: str = ZENODO_MODEL_URL
    md5: str = ZENODO_MODEL_MD5
    #: Where `model fetch` extracts to.
    dir: str = "models"

    @field_validator("files")
    @classmethod
    def _nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model file is needed")
        return value

    @field_validator("thresholds", mode="before")
    @classmethod
    def _six(cls, value: Any) -> Any:
        # Keys left out keep the paper's value; unknown keys are errors.
        if isinstance(value, dict):
            unknown = set(value) - set(PAPER_THRESHOLDS)
            if unknown:
                raise ValueError(f"unknown finding {sorted(unknown)[0]!r}; use {', '.join(PAPER_THRESHOLDS)}")
            return {k: value.get(k, v) for k, v in PAPER_THRESHOLDS.items()}
        return value


LimbLead = Literal["I", "II", "III", "aVR", "aVL", "aVF"]


class NormaliseConfig(_Section):
    #: Multiplies the millivolt signal (the authors' preprocessing ``--scale``).
    gain: Annotated[float, Field(gt=0, le=100)] = 1.0
    #: Order of the six limb leads in the model input (V1-V6 always follow).
    limb_lead_order: list[LimbLead] = ["I", "II", "III", "aVR", "aVL", "aVF"]
    #: Recordings shorter than this are rejected.
    min_duration_s: Annotated[float, Field(gt=0, le=60)] = 8.0

    @field_validator("limb_lead_order")
    @classmethod
    def _permutation(cls, value: list[str]) -> list[str]:
        if sorted(value) != sorted(["I", "II", "III", "aVR", "aVL", "aVF"]):
            raise ValueError("must list I, II, III, aVR, aVL, aVF once each")
        return value


class ProcessConfig(_Section):
    #: A claimed ECG whose worker died is retried after this lease.
    lease_seconds: Annotated[int, Field(ge=5, le=86400)] = 300
    #: Unexpected errors are retried this often before the ECG is ``failed``.
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5


class Hl7Config(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 2575
    sending_application: str = "ECGGW"
    sending_facility: str = "ECGGW"
    receiving_application: str = "EHR"
    receiving_facility: str = "HOSPITAL"
    #: MSH-18; names are encoded in this character set.
    charset: Literal["UNICODE UTF-8", "8859/1", "ASCII"] = "UNICODE UTF-8"
    #: OBR-4 universal service id, as ``code^text^system``.
    order_code: str = "11524-6^EKG study^LN"
    #: Add a PV1 segment (patient class ``pv1_patient_class``).
    include_pv1: bool = False
    pv1_patient_class: str = "O"
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    ack_timeout: Annotated[float, Field(gt=0)] = 30.0
    #: AE answers: give up after this many attempts and move the message aside.
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: OBX-3 coding system of the local codes (probabilities, quality, model).
    probability_coding_system: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[^|^&~\\]+$")] = "L"
    #: OBX-3 local code of each finding's probability (NM 0..1).
    probability_codes: dict[str, Annotated[str, Field(min_length=1, max_length=20, pattern=r"^[^|^&~\\]+$")]] = {
        f.code: f.probability_code for f in REGISTRY
    }
    #: PID-3.5 identifier type code (HL7 table 0203: MR medical record number,
    #: PI patient internal identifier, ...); empty = not sent.
    identifier_type_code: Annotated[str, Field(pattern=r"^[A-Z0-9]{0,5}$")] = "MR"
    #: PID-3.4: DICOM IssuerOfPatientID -> HL7 assigning authority (HD-1, at most
    #: 20 characters).  An issuer that is not listed is sent as it is, cut to 20
    #: characters (with a WARNING) when longer.
    assigning_authorities: dict[Annotated[str, Field(min_length=1, max_length=64)], Hl7Namespace] = {}
    #: ORC-3/OBR-3 namespace (EI-2) of the gateway's own filler order number,
    #: sent when the ECG carries no Filler Order Number: ``<ecg id>^<namespace>``.
    filler_namespace: Hl7Namespace = "ECGGW"
    #: Assigning authority (CNN-9 of OBR-32, XCN-9 of OBX-16) of the readers'
    #: identifiers (``users add --hl7-id``) in a confirmed result: the EHR's
    #: namespace for its physicians' ids (HL7 requires one with an id).
    interpreter_authority: Hl7Namespace = "ECGGW"
    #: Keep one MLLP connection open across messages (false: one connection per
    #: message, closed after its ACK).
    keep_connection_open: bool = True
    #: OBR-25 / OBX-11 of an AI read no physician has confirmed: "P" preliminary
    #: (the default: the model is decision support, and a receiving EHR files an F
    #: result as the verified report, so an unread AI interpretation must not look
    #: like one; the physician's confirmation then sends F), or "F" for a site that
    #: has decided to file AI reads as final.  A demo model's reads are always P.
    ai_result_status: Literal["P", "F"] = "P"
    #: Add the one-page PDF report to each analysed ECG's ORU: one OBX of type ED,
    #: ``^AP^PDF^Base64^<data>`` (about 130 KB more per message).
    embed_pdf: bool = False

    @field_validator("tls_ca", "tls_cert", "tls_key")
    @classmethod
    def _tls_files(cls, value: str, info: Any) -> str:
        return _existing_file(value, info.field_name)

    @field_validator("probability_codes", mode="before")
    @classmethod
    def _six_codes(cls, value: Any) -> Any:
        # Keys left out keep their default; unknown keys are errors.
        if isinstance(value, dict):
            unknown = set(value) - set(PAPER_THRESHOLDS)
            if unknown:
                raise ValueError(f"unknown finding {sorted(unknown)[0]!r}; use {', '.join(PAPER_THRESHOLDS)}")
            return {k: value.get(k, BY_CODE[k].probability_code) for k in PAPER_THRESHOLDS}
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Hl7Config:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together (client certificate)")
        return self


class PacsConfig(_Section):
    """The result back to PACS (issue 16 §4): a DICOM Encapsulated PDF of the
    report and/or a Comprehensive SR per analysed ECG, sent by C-STORE from a
    durable outbox."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 104
    called_ae_title: AETitle = "PACS"
    calling_ae_title: AETitle = "ECGGW"
    #: What goes to PACS for each analysed ECG: "pdf" (Encapsulated PDF), "sr" (Comprehensive SR).
    send: list[Literal["pdf", "sr"]] = ["pdf", "sr"]
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 30.0
    #: Failed C-STOREs (refused, no association, timeouts) are retried with capped
    #: exponential backoff; after this many attempts the object is "failed" (resend).
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    backoff_initial_s: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 600.0
    #: TLS to PACS (DICOM TLS): tls_ca verifies the PACS, tls_cert/tls_key are this client's.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @field_validator("tls_ca", "tls_cert", "tls_key")
    @classmethod
    def _tls_files(cls, value: str, info: Any) -> str:
        return _existing_file(value, info.field_name)

    @field_validator("send")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each of pdf, sr at most once")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> PacsConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together (client certificate)")
        return self


class AdminConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    #: Bootstrap admin credential: a bearer token for /api and a web login (the
    #: admin role) before any user exists; required to bind beyond loopback
    #: unless ``token_enabled = false``.  People then get their own logins
    #: (``ecg-gateway users add``).
    token: str = ""
    #: false = the ``token`` above opens nothing (only user logins and user API tokens).
    token_enabled: bool = True
    #: Failed logins (of one user name, or from one address) within
    #: ``login_window_minutes`` after which further attempts are refused (HTTP 429)
    #: until the window has passed; counted in the audit log, so for every process.
    login_max_failures_per_user: Annotated[int, Field(ge=1, le=10000)] = 5
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=100000)] = 20
    login_window_minutes: Annotated[float, Field(gt=0, le=1440)] = 15.0
    #: /healthz turns unhealthy above this many pending HL7 messages; 0 = never.
    max_hl7_backlog: Annotated[int, Field(ge=0)] = 1000
    #: /healthz ``hl7`` unhealthy while the oldest pending message waits longer than this; 0 = never.
    healthz_max_hl7_pending_age_s: Annotated[float, Field(ge=0)] = 120.0
    #: /healthz ``hl7`` unhealthy while the link has been down (or the receiver
    #: rejecting) this long with messages pending; 0 = never.
    healthz_max_hl7_link_down_s: Annotated[float, Field(ge=0)] = 30.0
    #: /healthz ``hl7`` unhealthy while any outbox message is ``failed`` (until resent).
    healthz_fail_on_failed_hl7: bool = True
    #: Close a connection that has not sent a complete request within this many
    #: seconds of connecting or of the previous response (slow-loris defence).
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: Concurrent connections (or requests) beyond which uvicorn answers 503.
    max_connections: Annotated[int, Field(ge=1, le=100000)] = 100
    #: A web login lasts this many hours (server-side expiry); logout ends it at once.
    session_hours: Annotated[float, Field(gt=0, le=720)] = 8.0
    #: The session cookie's Secure flag: "auto" = when the request came over
    #: https (directly or through a proxy sending X-Forwarded-Proto: https).
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    #: Serve the API schema at /openapi.json (token or web login needed).
    #: /docs and /redoc are never served: they load third-party script.
    openapi: bool = False


class ValidateConfig(_Section):
    """``ecg-gateway validate``: commissioning on the published test set."""

    #: data.zip of Zenodo record 3765780 (the paper's test set).
    url: str = ZENODO_DATA_URL
    #: md5 of data.zip; empty = the download is NOT verified (a loud warning).
    md5: str = ""
    #: Where ``validate --fetch`` puts ecg_tracings.hdf5 and gold_standard.csv.
    data_dir: str = "var/validation/data"
    #: Each run writes its report under ``<report_dir>/<timestamp>/``.
    report_dir: str = "var/validation"
    #: The round trip fails when a yes/no decision flips while the direct
    #: probability is more than this away from the threshold.
    flip_margin: Annotated[float, Field(ge=0, lt=1)] = 0.02
    #: The round trip fails when any probability differs by more than this; 0 = not checked.
    max_abs_difference: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("md5", mode="before")
    @classmethod
    def _md5(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # an all-digit md5 in the environment reads as a TOML integer
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        if value and (len(value) != 32 or any(c not in "0123456789abcdef" for c in value)):
            raise ValueError("not an md5 digest (32 hex digits), or empty for unverified")
        return value


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "text": one line per record; "json": one JSON object per line (log shippers).
    format: Literal["text", "json"] = "text"


class Config(_Section):
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    hl7: Hl7Config = Field(default_factory=Hl7Config)
    pacs: PacsConfig = Field(default_factory=PacsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # "validate" would shadow pydantic's BaseModel.validate: the field has another name.
    validation: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")


def _parse_env_value(raw: str) -> Any:
    """An env value is read as a TOML value when it is one (``11112``,
    ``true``, ``["A", "B"]``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _wants_text(section: str, key: str) -> bool:
    field = Config.model_fields.get(section) or next(
        (f for f in Config.model_fields.values() if f.alias == section), None
    )
    sub = getattr(field.annotation, "model_fields", {}).get(key) if field else None
    return sub is not None and sub.annotation is str


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        # A text key keeps the text as given: an AE title "104" is not a number.
        out.setdefault(section, {})[key] = raw if _wants_text(section, key) else _parse_env_value(raw)
    return out


def setting_variables() -> list[str]:
    """Every ``ECG_GATEWAY_<SECTION>__<KEY>`` variable that names a setting."""
    names = []
    for name, field in Config.model_fields.items():
        section = field.alias or name
        for key in getattr(field.annotation, "model_fields", {}):
            names.append(f"{ENV_PREFIX}{section.upper()}__{key.upper()}")
    return names


def env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line for each ``ECG_GATEWAY_*`` variable that names no setting and
    would be ignored (``ECG_GATEWAY_DICOM_PORT``: one underscore), with the
    variable probably meant.  Misspelt section or key names after a double
    underscore are not here: :func:`load_config` refuses them."""
    import difflib

    environ = os.environ if environ is None else environ
    known = setting_variables()
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" in name or name == CONFIG_ENV or name.startswith(TEST_ENV_PREFIXES):
            continue
        rest = name[len(ENV_PREFIX) :]
        # ECG_GATEWAY_DICOM_PORT -> ECG_GATEWAY_DICOM__PORT: one underscore where two belong
        guesses = [f"{ENV_PREFIX}{rest[:i]}_{rest[i:]}" for i, c in enumerate(rest) if c == "_"]
        meant = next((g for g in guesses if g.upper() in known), None)
        meant = (
            meant.upper()
            if meant
            else next(iter(difflib.get_close_matches(name.upper(), [*known, CONFIG_ENV], n=1, cutoff=0.8)), None)
        )
        hint = f"did you mean {meant}?" if meant else f"settings are {ENV_PREFIX}<SECTION>__<KEY> (two underscores)"
        out.append(f"warning: environment variable {name} is not a setting and is ignored; {hint}")
    return out


def _format_error(err: ValidationError, source: str, env: Mapping[str, Mapping[str, Any]]) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    if len(loc) >= 2 and loc[1] in env.get(loc[0], {}):
        source = f"environment ({ENV_PREFIX}{loc[0].upper()}__{loc[1].upper()})"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    return f"config error in {source}: {key}: {msg}"


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file to read: ``--config``, else ``ECG_GATEWAY_CONFIG``, else the
    example file when it exists (None = defaults only)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration.

    Raises :class:`ConfigError` with one line naming the key on any problem.
    """
    environ = os.environ if environ is None else environ
    file = config_path(path, environ)
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        source = str(file)
        try:
            data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config error: file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error in {file}: not valid TOML: {exc}") from None
    env = _env_overrides(environ)
    for section, values in env.items():
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"config error in environment: {section}: not a section")
        data.setdefault(section, {}).update(values)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source, env)) from None
