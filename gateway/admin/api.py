"""The admin HTTP API (FastAPI) and, mounted beside it, the web view.

Every ``/api`` route needs ``Authorization: Bearer <[admin] token>`` (401
otherwise; 403 while no token is configured).  ``/healthz`` and ``/metrics``
carry no PHI and need no token.  PHI exports and resends are audited with the
caller (``api:<client address>``).
"""


from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from gateway import __version__
from gateway.admin.audit import audit
from gateway.admin.auth import NO_TOKEN_MESSAGE, bearer_ok, check_admin_bind
from gateway.admin.exports import ExportError, input_npy, original_dicom
from gateway.admin.monitor import DatabaseCollector, health_report
from gateway.admin.queries import QueryError, count_ecgs, ecg_detail, ecg_rows, parse_time
from gateway.config import Config

__all__ = ["check_admin_bind", "create_app", "make_server"]

_bearer = HTTPBearer(auto_error=False, description="The [admin] token of the gateway configuration.")


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
    app = FastAPI(
        title="ECG gateway admin API",
        version=__version__,
        description="Query received ECGs, model results and HL7 delivery. Bearer token = [admin] token.",
    )
    token = cfg.admin.token
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory))

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

    @app.middleware("http")
    async def _no_store(request: Request, call_next: Callable[..., Any]) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/api/"):  # PHI: never in a cache
            response.headers.setdefault("Cache-Control", "no-store")
        return response

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
        finding: Annotated[str | None, Query(description="1dAVb, RBBB, LBBB, SB, AF, ST")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
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
    def get_ecg(ecg: str, _actor: Actor) -> dict[str, Any]:
        """One ECG by database id or SOP Instance UID, with its prediction and HL7 messages."""
        with session_factory() as session:
            detail = ecg_detail(session, ecg)
        if detail is None:
            raise HTTPException(404, f"no ECG with id or SOP Instance UID {ecg}")
        return detail

    def _export(ecg: str, actor: str, action: str, read: Callable[..., tuple[int, bytes]]) -> tuple[int, bytes]:
        with session_factory() as session:
            try:
                ecg_id, data = read(session, ecg)
            except ExportError as exc:
                code = 404 if str(exc).startswith("no ECG") else 409
                raise HTTPException(code, str(exc)) from None
            audit(session, actor, action, f"ecg:{ecg_id}", via="api")
            session.commit()
        return ecg_id, data

    @app.get("/api/ecgs/{ecg}/input.npy", tags=["ecgs"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_input(ecg: str, actor: Actor) -> Response:
        """The exact float32 (4096, 12) array the model saw (NumPy .npy), rebuilt from the
        stored original and checked against the result's hash (409 if it does not match); audited."""
        ecg_id, data = _export(ecg, actor, "export_input",
                               lambda session, key: input_npy(session, key, cfg.storage.spool_dir))
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}-input.npy"'})

    @app.get("/api/ecgs/{ecg}/original.dcm", tags=["ecgs"], response_class=Response,
             responses={200: {"content": {"application/dicom": {}}}})
    def get_dicom(ecg: str, actor: Actor) -> Response:
        """The stored original DICOM file (checked against its sha256); audited."""
        ecg_id, data = _export(ecg, actor, "export_dicom",
                               lambda session, key: original_dicom(session, key, cfg.storage.spool_dir))
        return Response(data, media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}.dcm"'})

    @app.post("/api/hl7/{message_id}/resend", tags=["hl7"])
    def resend(message_id: int, actor: Actor) -> dict[str, Any]:
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

    from gateway.admin.web import add_web_routes

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

    config = uvicorn.Config(app, host=cfg.admin.host, port=cfg.admin.port, log_level="warning",
                            access_log=False, lifespan="off",
                            http=request_deadline_protocol(cfg.admin.request_timeout_s),
                            limit_concurrency=cfg.admin.max_connections)
    return uvicorn.Server(config)
