"""The over-read's routes: the worklist page, the ECG page's confirm form and
``POST /api/ecgs/{ecg}/confirm`` (:mod:`gateway.admin.overread` does the work).

Who may do what (``gateway.admin.auth`` roles): a viewer sees the worklist and
each ECG's over-read history; a reader (and an admin) also confirms.  A
confirmation is a person's act: the bootstrap ``[admin] token`` has no name
to send in OBR-32, so it is refused (403) and a user login is needed.  The
form posts the session's CSRF token (``require_role`` checks it).  Every
confirmation and every look at the worklist is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.admin.auth import AsReader, AsViewer, Principal, audit_request
from gateway.admin.http import MAX_DB_ID, EcgKey, check_ecg_key, page_links
from gateway.admin.overread import (
    MAX_COMMENT_CHARS,
    MAX_STATEMENT_CHARS,
    MAX_STATEMENTS,
    ConfirmError,
    Reader,
    confirm_ecg,
)
from gateway.admin.queries import FINDING_CODES, QueryError, count_worklist, find_ecg, wards, worklist_rows
from gateway.config import Config
from gateway.findings import listed as listed_findings

__all__ = ["ConfirmBody", "overread_router"]

PAGE_SIZE = 50
MAX_PAGE = 1_000_000
#: The form's statements box: one statement per line.
MAX_STATEMENTS_TEXT = MAX_STATEMENTS * (MAX_STATEMENT_CHARS + 2)
#: The most finding codes one request may list (the six, with room for repeats).
MAX_FINDINGS = 2 * len(FINDING_CODES)


class ConfirmBody(BaseModel):
    """The JSON body of ``POST /api/ecgs/{ecg}/confirm``."""

    model_config = ConfigDict(extra="forbid")

    findings: list[str] = Field(
        max_length=MAX_FINDINGS, description=f"The confirmed findings, any of {listed_findings()}; [] for none."
    )
    statements: list[str] = Field(
        default_factory=list,
        max_length=MAX_STATEMENTS,
        description=f"Free-text statements (each at most {MAX_STATEMENT_CHARS} characters).",
    )
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


def _reader(principal: Principal) -> Reader:
    """The confirming person; the bootstrap token is nobody (403)."""
    if principal.user_id is None:
        raise ConfirmError(
            "the bootstrap [admin] token cannot confirm: a confirmation names its reader in the "
            "result (OBR-32); sign in as a user with the reader role",
            403,
        )
    return Reader(
        username=principal.username, full_name=principal.full_name, hl7_id=principal.hl7_id, user_id=principal.user_id
    )


def overread_router(cfg: Config, session_factory: Callable[[], Any]) -> APIRouter:
    """The worklist page, the confirm form's POST and the confirm API."""
    router = APIRouter()

    def confirm(
        principal: Principal, ecg_id: int, findings: list[str], statements: list[str], comment: str | None
    ) -> dict[str, Any]:
        return confirm_ecg(
            session_factory,
            cfg,
            ecg_id,
            _reader(principal),
            findings=findings,
            statements=statements,
            comment=comment,
            actor=principal.actor,
            address=principal.address,
        )

    @router.post("/api/ecgs/{ecg}/confirm", tags=["ecgs"])
    def confirm_api(ecg: EcgKey, body: ConfirmBody, principal: AsReader) -> dict[str, Any]:
        """Confirm (or correct) the AI result of ECG ``ecg`` (database id or SOP Instance UID) as the
        calling reader: the new version's ``confirmation`` state, ``id``, ``ecg_id``, ``result_status``
        (OBR-25 of the ORU queued: F, or C after a final) and ``hl7_message_id``.  Reader or admin
        user (403 for a viewer or the bootstrap token); 409 when the ECG has no AI result; 422 for an
        unknown finding code.  Audited."""
        with session_factory() as session:
            found = find_ecg(session, check_ecg_key(ecg))
            ecg_id = found.id if found is not None else None
        if ecg_id is None:
            raise HTTPException(404, f"no ECG with id or SOP Instance UID {ecg}")
        try:
            return confirm(principal, ecg_id, body.findings, body.statements, body.comment)
        except ConfirmError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @router.post("/ecgs/{ecg_id}/confirm", include_in_schema=False)
    def confirm_form(
        request: Request,
        ecg_id: Annotated[int, PathParam(ge=1, le=MAX_DB_ID)],
        principal: AsReader,
        findings: Annotated[list[str] | None, Form(max_length=MAX_FINDINGS)] = None,
        statements: Annotated[str, Form(max_length=MAX_STATEMENTS_TEXT)] = "",
        comment: Annotated[str, Form(max_length=MAX_COMMENT_CHARS)] = "",
        as_is: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        """The ECG page's form: "Confirm as is" (the AI's findings, nothing added)
        or the edited findings, statements (one per line) and comment."""
        from gateway.admin.web import render

        try:
            if as_is:
                with session_factory() as session:
                    found = find_ecg(session, str(ecg_id))
                    ai = list(found.prediction.findings or []) if found is not None and found.prediction else []
                state = confirm(principal, ecg_id, ai, [], None)
            else:
                state = confirm(principal, ecg_id, list(findings or []), statements.splitlines(), comment)
        except ConfirmError as exc:
            return render("message.html", exc.status, request=request, title="Not confirmed", message=str(exc))
        return RedirectResponse(
            "/worklist?" + urlencode({"confirmed": ecg_id, "version": state["version"]}), status_code=303
        )

    @router.get("/worklist", include_in_schema=False)
    def worklist_page(
        request: Request,
        principal: AsViewer,
        ward: Annotated[str, Query(max_length=64)] = "",
        device: Annotated[str, Query(max_length=64)] = "",
        finding: Annotated[str, Query(max_length=16)] = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
        confirmed: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
        version: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
    ) -> Response:
        """Processed ECGs no reader has confirmed yet, oldest first; audited."""
        from gateway.admin.web import render

        form = {"ward": ward, "device": device, "finding": finding}
        error, rows, total, ward_names = None, [], 0, []
        try:
            with session_factory() as session:
                filters = {"ward": ward or None, "device": device or None, "finding": finding or None}
                rows = worklist_rows(session, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, **filters)
                total = count_worklist(session, **filters)
                ward_names = wards(session)
                audit_request(
                    session,
                    principal,
                    "view_worklist",
                    None,
                    shown=[r["id"] for r in rows],
                    filters={k: v for k, v in form.items() if v},
                    page=page_no,
                )
                session.commit()
        except QueryError as exc:
            error = str(exc)
        return render(
            "worklist.html",
            400 if error else 200,
            request=request,
            rows=rows,
            form=form,
            error=error,
            total=total,
            **page_links("/worklist", form, total, page_no, PAGE_SIZE),
            findings=FINDING_CODES,
            wards=ward_names,
            confirmed=confirmed,
            version=version,
        )

    return router
