"""The web view: server-rendered pages (Jinja2, autoescaped), no build step, no script.

Login posts the admin token and opens a server-side session
(:mod:`gateway.admin.auth`): the cookie holds a random session id (HttpOnly,
SameSite=Strict, Secure over https); logout revokes the session in the
database, so a copied cookie is refused afterwards, as is one past
``[admin] session_hours``.  A successful login answers with a small page that
moves on by itself instead of a 303: a navigation started by our own page is
same-site, so the Strict cookie is sent even when the login form itself was
opened from another site (an EHR link, a local bookmark file).  Where it moves
on to (``next``) must pass :func:`gateway.admin.auth.safe_next`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.admin.auth import (
    NO_TOKEN_MESSAGE,
    SESSION_COOKIE,
    TOKEN_PRINCIPAL,
    live_session,
    open_session,
    revoke_session,
    safe_next,
    token_ok,
)
from gateway.admin.http import MAX_DB_ID, MAX_ECG_KEY, client_address, ecg_key_problem, resend_message
from gateway.admin.queries import (
    FINDING_CODES,
    ROW_STATUSES,
    EcgFilters,
    QueryError,
    count_ecgs,
    ecg_detail,
    ecg_rows,
    find_ecg,
    parse_time,
    report_summary,
)
from gateway.config import Config

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PAGE_SIZE = 50
MAX_PAGE = 1_000_000
# The CSP, nosniff, no-referrer and no-store headers come from gateway.admin.app's outer layer.
_FORWARDED_HTTPS = re.compile(r"(?:^|[;,\s])proto=\"?https\"?(?:$|[;,\s])", re.IGNORECASE)


@cache
def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.filters["segments"] = lambda text: [s for s in (text or "").replace("\r\n", "\r").split("\r") if s]
    from gateway.findings import BY_CODE
    from gateway.report import people
    from gateway.report.measurements import display_value

    env.filters["person_name"] = people.person_name
    env.filters["dicom_dt"] = people.dicom_datetime_text
    env.filters["sex_text"] = people.sex_text
    env.filters["measurement"] = display_value
    env.filters["finding_name"] = lambda code: BY_CODE[code].name if code in BY_CODE else ""
    env.globals["birth_and_age"] = people.birth_and_age
    return env


def came_over_https(request: Request) -> bool:
    """The request reached us over https, or a proxy says it did (X-Forwarded-Proto
    or Forwarded: proto=https).  Only used to set the cookie's Secure flag, so a
    client that lies only makes its own cookie https-only."""
    forwarded_proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    forwarded = request.headers.get("forwarded", "").split(",")[0]
    return request.url.scheme == "https" or forwarded_proto == "https" or bool(_FORWARDED_HTTPS.search(forwarded))


def secure_cookie(request: Request, mode: str) -> bool:
    """The session cookie's Secure flag for ``[admin] cookie_secure`` = ``mode``."""
    return mode == "always" or (mode == "auto" and came_over_https(request))


def session_principal(request: Request, token: str, session_factory: Callable[[], Any]) -> str | None:
    """Who the request's session cookie signs in (``"token"``), or None."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not token or not cookie:
        return None
    with session_factory() as db:
        row = live_session(db, cookie, token)
        return row.principal if row is not None else None


def ecg_paper_svg(array: Any, leads: list[str], normalisation: dict[str, Any]) -> str:
    """SVG of a model input (the float32 (4096, 12) array)."""
    from gateway.admin.ecg_svg import ecg_svg
    from gateway.report.pdf import input_scale

    fs, gain = input_scale(normalisation)
    return ecg_svg(array, leads, fs=fs, gain=gain)


def render(name: str, status_code: int = 200, *, token_set: bool, **context: Any) -> HTMLResponse:
    """Template ``name`` as a page (``token_set``: whether the gateway has an admin token)."""
    return HTMLResponse(_env().get_template(name).render(token_set=token_set, **context), status_code=status_code)


async def invalid_request(request: Request, exc: RequestValidationError, token_set: bool) -> Response:
    """The application's answer to a bad parameter: FastAPI's own JSON for the
    API, a page for the web view."""
    if request.url.path.startswith("/api/"):
        return await request_validation_exception_handler(request, exc)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                         for e in exc.errors())
    return render("message.html", 422, token_set=token_set, title="Bad request", message=problems)


def web_router(cfg: Config, session_factory: Callable[[], Any]) -> APIRouter:
    """The pages (:mod:`gateway.admin.app` adds them, /static and
    the :func:`invalid_request` handler to the application)."""
    router = APIRouter(include_in_schema=False)
    token = cfg.admin.token

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return render(name, status_code, token_set=bool(token), **context)

    def signed_in(request: Request) -> bool:
        return session_principal(request, token, session_factory) is not None

    def to_login(request: Request) -> Response:
        if not token:
            return page("login.html", 403, error=NO_TOKEN_MESSAGE, next="/ecgs")
        # quote(): the decoded path may hold any character; next must be plain ASCII
        target = quote(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return RedirectResponse("/ecgs", status_code=303)

    @router.get("/login", include_in_schema=False)
    def login_form(next: str = "/ecgs") -> Response:
        if not token:
            return page("login.html", 403, error=NO_TOKEN_MESSAGE, next=safe_next(next))
        return page("login.html", next=safe_next(next), error=None)

    @router.post("/login", include_in_schema=False)
    def login(request: Request, token_given: Annotated[str, Form(alias="token")] = "",
              next: Annotated[str, Form()] = "/ecgs") -> Response:
        target = safe_next(next)
        if not token:
            return page("login.html", 403, error=NO_TOKEN_MESSAGE, next=target)
        if not token_ok(token_given, token):
            return page("login.html", 401, error="wrong token", next=target)
        with session_factory() as db:
            session_id = open_session(
                db,
                principal=TOKEN_PRINCIPAL,
                credential=token,
                client_address=client_address(request),
                hours=cfg.admin.session_hours,
                replaces=request.cookies.get(SESSION_COOKIE),
            )
            db.commit()
        response = page("continue.html", target=target)
        # No Max-Age: the browser forgets it when closed; the server ends it after session_hours.
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/",
                            secure=secure_cookie(request, cfg.admin.cookie_secure))
        return response

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        with session_factory() as db:
            revoke_session(db, request.cookies.get(SESSION_COOKIE))
            db.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=secure_cookie(request, cfg.admin.cookie_secure))
        return response

    @router.get("/ecgs", include_in_schema=False)
    def list_page(
        request: Request,
        patient_id: str = "",
        accession: str = "",
        since: str = "",
        until: str = "",
        status: str = "",
        finding: str = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
    ) -> Response:
        if not signed_in(request):
            return to_login(request)
        form = dict(patient_id=patient_id, accession=accession, since=since, until=until, status=status,
                    finding=finding)
        error, rows, total = None, [], 0
        try:
            filters = EcgFilters(
                patient_id=patient_id or None, accession=accession or None, status=status or None,
                finding=finding or None, since=parse_time(since, "since") if since else None,
                until=parse_time(until, "until") if until else None,
            )
            with session_factory() as session:
                rows = ecg_rows(session, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, **filters)
                total = count_ecgs(session, **filters)
        except QueryError as exc:
            error = str(exc)
        query = {k: v for k, v in form.items() if v}
        pages = max(1, -(-total // PAGE_SIZE))
        return page(
            "list.html", 400 if error else 200, rows=rows, form=form, error=error, total=total, page_no=page_no,
            pages=pages, statuses=ROW_STATUSES, findings=FINDING_CODES,
            prev_url="/ecgs?" + urlencode({**query, "page": page_no - 1}) if page_no > 1 else None,
            next_url="/ecgs?" + urlencode({**query, "page": page_no + 1}) if page_no < pages else None,
        )

    @router.get("/ecgs/{ecg}", include_in_schema=False)
    def ecg_page(request: Request, ecg: Annotated[str, PathParam(min_length=1, max_length=MAX_ECG_KEY)]) -> Response:
        if not signed_in(request):
            return to_login(request)
        problem = ecg_key_problem(ecg)
        if problem:
            return page("message.html", 422, title="Bad request", message=problem)
        from gateway.admin.exports import ExportError, model_input_array
        from gateway.receive.limits import MIB

        signal, svg, svg_error = None, None, None
        with session_factory() as session:
            detail = ecg_detail(session, ecg)
            instance = find_ecg(session, ecg)
            if instance is not None and instance.prediction is not None and instance.prediction.input_sha256:
                try:  # rebuilt from the spooled original and checked against the stored hash
                    signal = model_input_array(instance, cfg.storage.spool_dir, cfg.dicom.max_dataset_mb * MIB)
                except ExportError as exc:
                    svg_error = f"cannot draw the model input: {exc}"
        if detail is None:
            return page("message.html", 404, title="Not found", message=f"No ECG with id or SOP Instance UID {ecg}.")
        if signal is not None:
            try:
                svg = ecg_paper_svg(signal, detail["prediction"]["leads"], detail["prediction"]["normalisation"] or {})
            except ValueError as exc:
                svg_error = f"cannot draw the model input: {exc}"
        p = detail["prediction"]
        scores = []
        if p:
            for code in FINDING_CODES:
                prob, thr = detail["probabilities"].get(code), (p["thresholds"] or {}).get(code)
                scores.append({"code": code, "p": prob, "threshold": thr, "above": code in detail["findings"]})
        report = (p["normalisation"] if p else detail.get("report")) or {}
        return page("ecg.html", d=detail, svg=svg, svg_error=svg_error, scores=scores, summary=report_summary(report),
                    resent=request.query_params.get("resent"))

    @router.get("/ecgs/{ecg_id}/report.pdf", include_in_schema=False)
    def report(request: Request, ecg_id: Annotated[int, PathParam(ge=1, le=MAX_DB_ID)],
               page_size: Annotated[str, Query(alias="page", pattern="^(A4|letter)$")] = "A4") -> Response:
        """The one-page PDF report (download button of the ECG page); audited."""
        if not signed_in(request):
            return to_login(request)
        from gateway.admin.exports import ExportError, report_pdf
        from gateway.store.audit import audit

        with session_factory() as session:
            try:
                found_id, data = report_pdf(session, str(ecg_id), cfg.storage.spool_dir, page_size)
            except ExportError as exc:
                code = 404 if str(exc).startswith("no ECG") else 409
                return page("message.html", code, title="No report", message=str(exc))
            audit(session, f"web:{client_address(request)}", "export_report", f"ecg:{found_id}", via="web",
                  page=page_size)
            session.commit()
        return Response(data, media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="ecg-{found_id}-report.pdf"'})

    @router.post("/ecgs/{ecg_id}/resend", include_in_schema=False)
    def resend(request: Request, ecg_id: Annotated[int, PathParam(ge=1, le=MAX_DB_ID)],
               message_id: Annotated[int, Form(ge=1, le=MAX_DB_ID)]) -> Response:
        if not signed_in(request):
            return to_login(request)
        origin = request.headers.get("origin")
        # behind a TLS proxy the browser's origin is https even where uvicorn saw http
        ours = {f"{request.url.scheme}://{request.url.netloc}"} | (
            {f"https://{request.url.netloc}"} if came_over_https(request) else set())
        if origin and origin not in ours:
            return page("message.html", 403, title="Refused", message="Cross-site form submissions are refused.")
        try:
            new = resend_message(session_factory, cfg, message_id, f"web:{client_address(request)}")
        except LookupError as exc:
            return page("message.html", 404, title="Not found", message=str(exc))
        except ValueError as exc:
            return page("message.html", 409, title="Not resent", message=str(exc))
        return RedirectResponse(f"/ecgs/{ecg_id}?resent={new['id']}", status_code=303)

    return router
