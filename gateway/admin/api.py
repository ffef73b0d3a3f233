"""The admin HTTP API (FastAPI) and, mounted beside it, the web view.

Every ``/api`` route needs ``Authorization: Bearer <[admin] token>`` (401
otherwise; 403 while no token is configured).  ``/healthz`` and ``/metrics``
carry no PHI and need no token.  PHI exports and resends are audited with the
caller (``api:<client address>``).

Every response carries ``SECURITY_HEADERS`` (a Content-Security-Policy that
allows only this origin's style sheet and no script, nosniff, no referrer, no
framing), set by the outermost layer so errors carry them too.  No page loads
anything from another site: /docs and /redoc (which load Swagger/ReDoc script
from a CDN) are not served; ``[admin] openapi = true`` serves /openapi.json
behind the token.  Numeric parameters are bounded (422 outside): ids to the
database's INTEGER range, ``offset`` likewise.
"""


from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.admin.auth import NO_TOKEN_MESSAGE, bearer_ok, check_admin_bind
from gateway.admin.exports import ExportError, input_npy, original_dicom
from gateway.admin.monitor import DatabaseCollector, health_report
from gateway.admin.queries import QueryError, count_ecgs, ecg_detail, ecg_rows, parse_time
from gateway.config import Config
from gateway.findings import listed as listed_findings
from gateway.receive.limits import MIB
from gateway.store.audit import audit

__all__ = ["check_admin_bind", "create_app", "make_server"]

_bearer = HTTPBearer(auto_error=False, description="The [admin] token of the gateway configuration.")

#: Largest database id (INTEGER primary keys on PostgreSQL); ids outside 1..MAX_DB_ID are a 422.
MAX_DB_ID = 2**31 - 1
#: Largest ``offset`` (SQLite and PostgreSQL overflow at 2**63; no real list is near this).
MAX_OFFSET = 2**31 - 1
#: A path's ECG key is a database id or a SOP Instance UID (64 characters at most).
MAX_ECG_KEY = 64

#: No script at all, style sheets and images only from this origin (so no inline
#: style attributes either), forms post only here, no framing, no <base>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}


class _SecurityHeaders:
    """ASGI layer adding ``SECURITY_HEADERS`` (and ``Cache-Control: no-store``
    outside /static: pages and API answers hold PHI) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AdminApp(FastAPI):
    """FastAPI with :class:`_SecurityHeaders` outside every other layer, so even
    the 500 answer of an unexpected error carries the headers."""

    def build_middleware_stack(self) -> ASGIApp:
        return _SecurityHeaders(super().build_middleware_stack())


def ecg_key_problem(ecg: str) -> str | None:
    """Why a path's ECG key is refused (a database id outside 1..MAX_DB_ID), else None.
    (Its length, at most MAX_ECG_KEY, is checked by the route's parameter.)"""
    if ecg.isascii() and ecg.isdigit() and not 1 <= int(ecg) <= MAX_DB_ID:
        return f"ecg: database id out of range 1..{MAX_DB_ID}"
    return None


def check_ecg_key(ecg: str) -> str:
    """``ecg`` when :func:`ecg_key_problem` finds nothing; HTTP 422 otherwise."""
    problem = ecg_key_problem(ecg)
    if problem:
        raise HTTPException(422, problem)
    return ecg


EcgKey = Annotated[str, Path(min_length=1, max_length=MAX_ECG_KEY,
                             description="database id (1..2147483647) or SOP Instance UID")]
DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def resend_message(session_factory: Callable[[], Any], cfg: Config, message_id: int, actor: str) -> dict[str, Any]:
    """Queue a new copy of outbox message ``message_id`` (deliver's
    ``outbox.resend`` writes the audit row); returns the new message's summary.
    Raises LookupError when there is no such message."""
    from gateway.deliver.outbox import resend  # lazily: deliver owns the outbox
    from gateway.store.models import Hl7Message

    with session_factory() as session:
        if session.get(Hl7Message, message_id) is None:
            raise LookupError(f"no HL7 message {message_id}")
        new = resend(session, message_id, actor, cfg.hl7)
        session.commit()
        return {"id": new.id, "ecg_id": new.ecg_id, "control_id": new.control_id, "status": new.status,
                "resend_of": new.resend_of}


def create_app(
    cfg: Config,
    session_factory: Callable[[], Any],
    health: Callable[[], dict[str, bool | str]] | None = None,
) -> FastAPI:
    """The admin application: /api, /healthz, /metrics and the web view.

    ``session_factory`` makes SQLAlchemy sessions; ``health`` reports what only
    serve can see (e.g. ``{"scp_listening": True, "model_loaded": "loading"}``).
    """
    app = AdminApp(
        title="ECG gateway admin API",
        version=__version__,
        description="Query received ECGs, model results and HL7 delivery. Bearer token = [admin] token.",
        docs_url=None, redoc_url=None, openapi_url=None,  # see the module docstring
    )
    token = cfg.admin.token
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory, cfg, health))

    def require_token(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> str:
        """The audit actor of an authorised caller; 401/403 otherwise."""
        if not token:
            raise HTTPException(403, NO_TOKEN_MESSAGE)
        if not bearer_ok(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return f"api:{client_address(request)}"

    Actor = Annotated[str, Depends(require_token)]

    @app.exception_handler(QueryError)
    async def _query_error(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/api/ecgs", tags=["ecgs"])
    def list_ecgs(
        _actor: Actor,
        patient_id: str | None = None,
        accession: str | None = None,
        since: Annotated[str | None, Query(description="ISO 8601; naive = UTC; inclusive")] = None,
        until: Annotated[str | None, Query(description="ISO 8601; naive = UTC; exclusive")] = None,
        status: Annotated[str | None, Query(description="received, processed, rejected, failed")] = None,
        finding: Annotated[str | None, Query(description=listed_findings())] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """ECGs newest first: ``items`` (row dicts), ``total``, ``limit``, ``offset``, ``next_offset``."""
        filters = dict(
            patient_id=patient_id, accession=accession, status=status, finding=finding,
            since=parse_time(since, "since") if since else None, until=parse_time(until, "until") if until else None,
        )
        with session_factory() as session:
            items = ecg_rows(session, limit=limit, offset=offset, **filters)
            total = count_ecgs(session, **filters)
        more = offset + len(items) < total
        return {"items": items, "total": total, "limit": limit, "offset": offset,
                "next_offset": offset + len(items) if more else None}

    @app.get("/api/ecgs/{ecg}", tags=["ecgs"])
    def get_ecg(ecg: EcgKey, _actor: Actor) -> dict[str, Any]:
        """One ECG by database id or SOP Instance UID, with its prediction and HL7 messages."""
        with session_factory() as session:
            detail = ecg_detail(session, check_ecg_key(ecg))
        if detail is None:
            raise HTTPException(404, f"no ECG with id or SOP Instance UID {ecg}")
        return detail

    def _export(ecg: str, actor: str, action: str, read: Callable[..., tuple[int, bytes]]) -> tuple[int, bytes]:
        with session_factory() as session:
            try:
                ecg_id, data = read(session, check_ecg_key(ecg))
            except ExportError as exc:
                code = 404 if str(exc).startswith("no ECG") else 409
                raise HTTPException(code, str(exc)) from None
            audit(session, actor, action, f"ecg:{ecg_id}", via="api")
            session.commit()
        return ecg_id, data

    @app.get("/api/ecgs/{ecg}/input.npy", tags=["ecgs"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_input(ecg: EcgKey, actor: Actor) -> Response:
        """The exact float32 (4096, 12) array the model saw (NumPy .npy), rebuilt from the
        stored original and checked against the result's hash (409 if it does not match); audited."""
        ecg_id, data = _export(ecg, actor, "export_input",
                               lambda session, key: input_npy(session, key, cfg.storage.spool_dir,
                                                                cfg.dicom.max_dataset_mb * MIB))
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}-input.npy"'})

    @app.get("/api/ecgs/{ecg}/original.dcm", tags=["ecgs"], response_class=Response,
             responses={200: {"content": {"application/dicom": {}}}})
    def get_dicom(ecg: EcgKey, actor: Actor) -> Response:
        """The stored original DICOM file (checked against its sha256); audited."""
        ecg_id, data = _export(ecg, actor, "export_dicom",
                               lambda session, key: original_dicom(session, key, cfg.storage.spool_dir))
        return Response(data, media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}.dcm"'})

    @app.get("/api/ecgs/{ecg}/report.pdf", tags=["ecgs"], response_class=Response,
             responses={200: {"content": {"application/pdf": {}}}})
    def get_report(ecg: EcgKey, actor: Actor,
                   page: Annotated[str, Query(pattern="^(A4|letter)$", description="Paper size, landscape.")] = "A4",
                   ) -> Response:
        """The one-page 12-lead PDF report (tracing on a true-scale grid, the cart's measurements,
        the AI findings, the model identity); 409 when the ECG has no AI result; audited."""
        from gateway.admin.exports import report_pdf

        ecg_id, data = _export(ecg, actor, "export_report",
                               lambda session, key: report_pdf(session, key, cfg.storage.spool_dir, page))
        return Response(data, media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}-report.pdf"'})

    @app.post("/api/hl7/{message_id}/resend", tags=["hl7"])
    def resend(message_id: DbId, actor: Actor) -> dict[str, Any]:
        """Send outbox message ``message_id`` again under a new control id; audited."""
        try:
            return resend_message(session_factory, cfg, message_id, actor)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """Component states; HTTP 503 when any is unhealthy. No PHI, no token."""
        ok, components = health_report(cfg, session_factory, health)
        return JSONResponse({"status": "ok" if ok else "unhealthy", "components": components},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format: the process's own metrics plus database gauges."""
        return Response(generate_latest(REGISTRY) + generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    from gateway.admin.web import add_web_routes, session_principal

    if cfg.admin.openapi:
        @app.get("/openapi.json", include_in_schema=False)
        def openapi_schema(request: Request) -> JSONResponse:
            """The API schema, for a bearer token or a signed-in browser ([admin] openapi = true)."""
            if not token:
                raise HTTPException(403, NO_TOKEN_MESSAGE)
            if not (bearer_ok(request.headers.get("authorization"), token)
                    or session_principal(request, token, session_factory)):
                raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(app.openapi())

    add_web_routes(app, cfg, session_factory)
    return app


def make_server(app: FastAPI, cfg: Config):  # type: ignore[no-untyped-def]
    """A uvicorn server for ``app`` on ``[admin] host``/``port`` (call
    ``check_admin_bind`` first); run it with ``server.run()`` in a thread and
    stop it with ``server.should_exit = True``.  A connection without a
    complete request for ``[admin] request_timeout_s`` is closed; beyond
    ``max_connections`` concurrent connections requests get 503."""
    import uvicorn

    from gateway.admin.deadline import request_deadline_protocol

    # log_config=None: uvicorn's records go through the gateway's handler (format, escaping)
    config = uvicorn.Config(app, host=cfg.admin.host, port=cfg.admin.port, log_level="warning", log_config=None,
                            access_log=False, lifespan="off",
                            http=request_deadline_protocol(cfg.admin.request_timeout_s),
                            limit_concurrency=cfg.admin.max_connections)
    return uvicorn.Server(config)
