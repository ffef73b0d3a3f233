"""The admin HTTP API (FastAPI router): /api, /healthz, /metrics.

Every ``/api`` route needs ``Authorization: Bearer <token>``: a user's API
token (``ecg-gateway users token NAME``) or the bootstrap ``[admin] token``
(401 otherwise; 403 while no credential exists at all).  Roles
(:func:`gateway.admin.auth.require_role`): a viewer reads; exports and
resends need an admin (403 otherwise).  ``/healthz`` and ``/metrics`` carry
no PHI and need no token.  Every view of patient data (list, detail),
export and resend is audited with the caller's name and address.  Numeric
parameters are bounded (422 outside): ids to the database's INTEGER range,
``offset`` likewise.

:mod:`gateway.admin.app` puts this router and the web view's into one
application (security headers, /openapi.json, the uvicorn server).
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from gateway.admin.auth import AsAdmin, AsViewer, Principal, audit_request
from gateway.admin.exports import ExportError, input_npy, original_dicom
from gateway.admin.http import MAX_OFFSET, DbId, EcgKey, check_ecg_key, resend_message
from gateway.admin.monitor import DatabaseCollector, health_report
from gateway.admin.queries import EcgFilters, count_ecgs, ecg_detail, ecg_rows, parse_time
from gateway.config import Config
from gateway.dicomio.limits import MIB
from gateway.findings import listed as listed_findings

__all__ = ["api_router"]

# Declares the scheme in the OpenAPI schema; require_role does the checking.
_bearer = HTTPBearer(auto_error=False, description="A user's API token or the bootstrap [admin] token.")


def api_router(
    cfg: Config,
    session_factory: Callable[[], Any],
    health: Callable[[], dict[str, bool | str]] | None = None,
) -> APIRouter:
    """/api, /healthz and /metrics.

    ``session_factory`` makes SQLAlchemy sessions; ``health`` reports what only
    serve can see (e.g. ``{"scp_listening": True, "model_loaded": "loading"}``).
    """
    router = APIRouter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory, cfg, health))

    # _bearer only documents the scheme (OpenAPI); require_role (AsViewer, AsAdmin) checks the caller.
    bearer_doc = [Depends(_bearer)]

    @router.get("/api/ecgs", tags=["ecgs"], dependencies=bearer_doc)
    def list_ecgs(
        principal: AsViewer,
        patient_id: str | None = None,
        accession: str | None = None,
        since: Annotated[str | None, Query(description="ISO 8601; naive = UTC; inclusive")] = None,
        until: Annotated[str | None, Query(description="ISO 8601; naive = UTC; exclusive")] = None,
        status: Annotated[str | None, Query(description="received, processed, rejected, failed")] = None,
        finding: Annotated[str | None, Query(description=listed_findings())] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """ECGs newest first: ``items`` (row dicts), ``total``, ``limit``, ``offset``, ``next_offset``; audited."""
        filters = EcgFilters(
            patient_id=patient_id,
            accession=accession,
            status=status,
            finding=finding,
            since=parse_time(since, "since") if since else None,
            until=parse_time(until, "until") if until else None,
        )
        with session_factory() as session:
            items = ecg_rows(session, limit=limit, offset=offset, **filters)
            total = count_ecgs(session, **filters)
            given = {
                "patient_id": patient_id,
                "accession": accession,
                "since": since,
                "until": until,
                "status": status,
                "finding": finding,
            }
            audit_request(
                session,
                principal,
                "view_list",
                None,
                shown=[row["id"] for row in items],
                filters={k: v for k, v in given.items() if v},
            )
            session.commit()
        more = offset + len(items) < total
        return {
            "items": items,
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + len(items) if more else None,
        }

    @router.get("/api/ecgs/{ecg}", tags=["ecgs"], dependencies=bearer_doc)
    def get_ecg(ecg: EcgKey, principal: AsViewer) -> dict[str, Any]:
        """One ECG by database id or SOP Instance UID, with its prediction and HL7 messages; audited."""
        with session_factory() as session:
            detail = ecg_detail(session, check_ecg_key(ecg))
            if detail is not None:
                audit_request(session, principal, "view_ecg", f"ecg:{detail['id']}")
                session.commit()
        if detail is None:
            raise HTTPException(404, f"no ECG with id or SOP Instance UID {ecg}")
        return detail

    def _export(
        ecg: str, principal: Principal, action: str, read: Callable[..., tuple[int, bytes]]
    ) -> tuple[int, bytes]:
        with session_factory() as session:
            try:
                ecg_id, data = read(session, check_ecg_key(ecg))
            except ExportError as exc:
                code = 404 if str(exc).startswith("no ECG") else 409
                raise HTTPException(code, str(exc)) from None
            audit_request(session, principal, action, f"ecg:{ecg_id}")
            session.commit()
        return ecg_id, data

    @router.get(
        "/api/ecgs/{ecg}/input.npy",
        tags=["ecgs"],
        dependencies=bearer_doc,
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def get_input(ecg: EcgKey, principal: AsAdmin) -> Response:
        """The exact float32 (4096, 12) array the model saw (NumPy .npy), rebuilt from the
        stored original and checked against the result's hash (409 if it does not match); audited."""
        ecg_id, data = _export(
            ecg,
            principal,
            "export_input",
            lambda session, key: input_npy(session, key, cfg.storage.spool_dir, cfg.dicom.max_dataset_mb * MIB),
        )
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}-input.npy"'},
        )

    @router.get(
        "/api/ecgs/{ecg}/original.dcm",
        tags=["ecgs"],
        dependencies=bearer_doc,
        response_class=Response,
        responses={200: {"content": {"application/dicom": {}}}},
    )
    def get_dicom(ecg: EcgKey, principal: AsAdmin) -> Response:
        """The stored original (checked against its sha256): the DICOM file, or a Philips XML / HL7 aECG
        document as received (``application/xml``, ``ecg-<id>.xml``); audited."""
        from gateway.formats import XML_FORMATS, sniff

        ecg_id, data = _export(
            ecg, principal, "export_dicom", lambda session, key: original_dicom(session, key, cfg.storage.spool_dir)
        )
        xml = sniff(data) in XML_FORMATS
        name = f"ecg-{ecg_id}.{'xml' if xml else 'dcm'}"
        return Response(
            data,
            media_type="application/xml" if xml else "application/dicom",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @router.get(
        "/api/ecgs/{ecg}/report.pdf",
        tags=["ecgs"],
        dependencies=bearer_doc,
        response_class=Response,
        responses={200: {"content": {"application/pdf": {}}}},
    )
    def get_report(
        ecg: EcgKey,
        principal: AsAdmin,
        page: Annotated[str, Query(pattern="^(A4|letter)$", description="Paper size, landscape.")] = "A4",
    ) -> Response:
        """The one-page 12-lead PDF report (tracing on a true-scale grid, the cart's measurements,
        the AI findings, the model identity); 409 when the ECG has no AI result; audited."""
        from gateway.admin.exports import report_pdf

        ecg_id, data = _export(
            ecg, principal, "export_report", lambda session, key: report_pdf(session, key, cfg.storage.spool_dir, page)
        )
        return Response(
            data,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="ecg-{ecg_id}-report.pdf"'},
        )

    @router.post("/api/hl7/{message_id}/resend", tags=["hl7"], dependencies=bearer_doc)
    def resend(message_id: DbId, principal: AsAdmin) -> dict[str, Any]:
        """Send outbox message ``message_id`` again under a new control id; audited."""
        try:
            return resend_message(session_factory, cfg, message_id, principal.actor, address=principal.address)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None

    @router.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """Component states; HTTP 503 when any is unhealthy. No PHI, no token."""
        ok, components = health_report(cfg, session_factory, health)
        return JSONResponse(
            {"status": "ok" if ok else "unhealthy", "components": components}, status_code=200 if ok else 503
        )

    @router.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format: the process's own metrics plus database gauges."""
        return Response(generate_latest(REGISTRY) + generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
