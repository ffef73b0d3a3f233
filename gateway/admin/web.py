"""The web view: server-rendered pages (Jinja2, autoescaped), no build step, no script.

Login posts a user name and password (or, with the user name left empty, the
bootstrap ``[admin] token``), rate-limited and audited
(:mod:`gateway.admin.users`), and opens a server-side session
(:mod:`gateway.admin.auth`): the cookie holds a random session id (HttpOnly,
SameSite=Strict, Secure over https); logout revokes the session in the
database, so a copied cookie is refused afterwards, as is one past
``[admin] session_hours``.  A successful login answers with a small page that
moves on by itself instead of a 303: a navigation started by our own page is
same-site, so the Strict cookie is sent even when the login form itself was
opened from another site (an EHR link, a local bookmark file).  Where it moves
on to (``next``) must pass :func:`gateway.admin.auth.safe_next`.

Every page declares the weakest role it needs (``require_role``); every
form that changes something carries the session's CSRF token; every page
showing patient data writes an audit row.  Admins also see /audit (the
audit log) and the resend buttons.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.admin.auth import (
    DEFAULT_NEXT,
    LOGIN_CSRF_COOKIE,
    NO_TOKEN_MESSAGE,
    SESSION_COOKIE,
    TOKEN_PRINCIPAL,
    AsAdmin,
    AsViewer,
    AuthError,
    audit_request,
    check_csrf,
    check_login_csrf,
    credentials_exist,
    csrf_for_new_session,
    csrf_token,
    open_session,
    revoke_session,
    safe_next,
    token_ok,
)
from gateway.admin.http import MAX_DB_ID, MAX_ECG_KEY, client_address, ecg_key_problem, page_links, resend_message
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


def ecg_paper_svg(array: Any, leads: list[str], normalisation: dict[str, Any]) -> str:
    """SVG of a model input (the float32 (4096, 12) array)."""
    from gateway.admin.ecg_svg import ecg_svg
    from gateway.report.pdf import input_scale

    fs, gain = input_scale(normalisation)
    return ecg_svg(array, leads, fs=fs, gain=gain)


def render(name: str, status_code: int = 200, *, request: Request | None = None, **context: Any) -> HTMLResponse:
    """Template ``name`` as a page; with ``request``: who is signed in
    (``principal``) and the CSRF token for its forms (``csrf``)."""
    if request is not None:
        context.setdefault("principal", getattr(request.state, "principal", None))
        context.setdefault("csrf", csrf_token(request))
    return HTMLResponse(_env().get_template(name).render(**context), status_code=status_code)


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """The application's answer to a bad parameter: FastAPI's own JSON for the
    API, a page for the web view."""
    if request.url.path.startswith("/api/"):
        try:
            return await request_validation_exception_handler(request, exc)
        except UnicodeEncodeError:
            # the errors echo the input, which may hold an unpaired surrogate (JSON "\ud800" escapes
            # decode to one; UTF-8 has no form for it): the same answer with ASCII escapes, not a 500
            body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
            return Response(body, status_code=422, media_type="application/json")
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors())
    return render("message.html", 422, request=request, title="Bad request", message=problems)


def auth_error_page(request: Request, exc: AuthError) -> Response:
    """A web page's answer to :class:`gateway.admin.auth.AuthError`: not signed
    in -> the login page (coming back here after); nothing configured -> the
    login page saying so; not allowed -> a page saying why."""
    if exc.status_code == 401:
        # quote(): the decoded path may hold any character; next must be plain ASCII
        target = quote(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    if exc.message == NO_TOKEN_MESSAGE:
        return render(
            "login.html",
            403,
            request=request,
            error=NO_TOKEN_MESSAGE,
            next=DEFAULT_NEXT,
            can_login=False,
            login_csrf="",
        )
    return render("message.html", exc.status_code, request=request, title="Refused", message=exc.message)


def web_router(cfg: Config, session_factory: Callable[[], Any]) -> APIRouter:
    """The pages (:mod:`gateway.admin.app` adds them, /static and
    the :func:`invalid_request` handler to the application)."""
    router = APIRouter(include_in_schema=False)
    ctx_token = cfg.admin.token if cfg.admin.token_enabled else ""

    def can_login() -> bool:
        with session_factory() as db:
            return credentials_exist(db, ctx_token)

    def login_page(request: Request, status_code: int, *, error: str | None, next: str) -> Response:
        """The login form with its double-submit CSRF token (a cookie set here, and the same value in the form)."""
        if not can_login():
            return render(
                "login.html", 403, request=request, error=NO_TOKEN_MESSAGE, next=next, can_login=False, login_csrf=""
            )
        given = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        value = (
            given
            if 32 <= len(given) <= 128 and given.isascii() and given.replace("-", "").replace("_", "").isalnum()
            else secrets.token_urlsafe(32)
        )
        response = render(
            "login.html",
            status_code,
            request=request,
            error=error,
            next=next,
            can_login=True,
            token_login=bool(ctx_token),
            login_csrf=value,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            value,
            httponly=True,
            samesite="strict",
            path="/login",
            secure=secure_cookie(request, cfg.admin.cookie_secure),
        )
        return response

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return RedirectResponse("/ecgs", status_code=303)

    @router.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/ecgs") -> Response:
        return login_page(request, 200, error=None, next=safe_next(next))

    @router.post("/login", include_in_schema=False, dependencies=[Depends(check_login_csrf)])
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=200)] = "",
        password: Annotated[str, Form(max_length=4096)] = "",
        token_given: Annotated[str, Form(alias="token", max_length=4096)] = "",
        next: Annotated[str, Form()] = "/ecgs",
    ) -> Response:
        """A user's name and password, or (name empty) the bootstrap token in
        ``password`` (or the older form's ``token`` field)."""
        from gateway.admin.users import (
            LOGIN,
            LOGIN_FAILED,
            LOGIN_THROTTLED,
            check_login,
            login_guard,
            token_login_allowed,
        )
        from gateway.store.audit import audit

        target = safe_next(next)
        if not can_login():
            return login_page(request, 403, error=None, next=target)
        address = client_address(request)
        username = username.strip()
        with session_factory() as db:
            # one check at a time per address and name: guesses sent together were each counted
            # against the same number of failures (12 of 12 checked with a limit of 5)
            with login_guard(address, username or TOKEN_PRINCIPAL):
                if username:
                    result = check_login(db, username, password, address=address, cfg=cfg.admin)
                    db.commit()
                    if result.throttled:
                        return login_page(request, 429, error="too many failed logins: try again later", next=target)
                    if result.user is None or result.user.password_hash is None:
                        return login_page(request, 401, error="wrong user name or password", next=target)
                    principal, credential, user_id = result.user.username, result.user.password_hash, result.user.id
                else:
                    secret = password or token_given
                    if not token_login_allowed(db, address=address, cfg=cfg.admin):
                        audit(db, TOKEN_PRINCIPAL, LOGIN_THROTTLED, address=address)
                        db.commit()
                        return login_page(request, 429, error="too many failed logins: try again later", next=target)
                    if not token_ok(secret, ctx_token):
                        audit(db, TOKEN_PRINCIPAL, LOGIN_FAILED, address=address)
                        db.commit()
                        return login_page(
                            request,
                            401,
                            error="wrong token" if token_given else "wrong user name or password",
                            next=target,
                        )
                    audit(db, TOKEN_PRINCIPAL, LOGIN, address=address, via="web")
                    principal, credential, user_id = TOKEN_PRINCIPAL, ctx_token, None
            session_id = open_session(
                db,
                principal=principal,
                credential=credential,
                client_address=address,
                hours=cfg.admin.session_hours,
                replaces=request.cookies.get(SESSION_COOKIE),
                user_id=user_id,
            )
            db.commit()
        response = render("continue.html", target=target, principal=None, csrf=csrf_for_new_session(session_id))
        secure = secure_cookie(request, cfg.admin.cookie_secure)
        # (the login form's CSRF cookie stays: it is good for /login only and opens nothing)
        # No Max-Age: the browser forgets it when closed; the server ends it after session_hours.
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/", secure=secure)
        return response

    @router.post("/logout", include_in_schema=False, dependencies=[Depends(check_csrf)])
    def logout(request: Request) -> Response:
        """Ends the session server-side (a copy of the cookie is refused afterwards); audited."""
        from gateway.admin.auth import resolve_principal
        from gateway.store.audit import audit

        principal = resolve_principal(request)
        with session_factory() as db:
            if revoke_session(db, request.cookies.get(SESSION_COOKIE)) and principal is not None:
                audit(db, principal.actor, "logout", address=principal.address, via="web")
            db.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure_cookie(request, cfg.admin.cookie_secure),
        )
        return response

    @router.get("/ecgs", include_in_schema=False)
    def list_page(
        request: Request,
        principal: AsViewer,
        patient_id: str = "",
        accession: str = "",
        since: str = "",
        until: str = "",
        status: str = "",
        finding: str = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
    ) -> Response:
        form = dict(
            patient_id=patient_id, accession=accession, since=since, until=until, status=status, finding=finding
        )
        error, rows, total = None, [], 0
        try:
            filters = EcgFilters(
                patient_id=patient_id or None,
                accession=accession or None,
                status=status or None,
                finding=finding or None,
                since=parse_time(since, "since") if since else None,
                until=parse_time(until, "until") if until else None,
            )
            with session_factory() as session:
                rows = ecg_rows(session, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, **filters)
                total = count_ecgs(session, **filters)
                audit_request(
                    session,
                    principal,
                    "view_list",
                    None,
                    shown=[row["id"] for row in rows],
                    filters={k: v for k, v in form.items() if v},
                    page=page_no,
                )
                session.commit()
        except QueryError as exc:
            error = str(exc)
        return render(
            "list.html",
            400 if error else 200,
            request=request,
            rows=rows,
            form=form,
            error=error,
            total=total,
            **page_links("/ecgs", form, total, page_no, PAGE_SIZE),
            statuses=ROW_STATUSES,
            findings=FINDING_CODES,
        )

    @router.get("/ecgs/{ecg}", include_in_schema=False)
    def ecg_page(
        request: Request, principal: AsViewer, ecg: Annotated[str, PathParam(min_length=1, max_length=MAX_ECG_KEY)]
    ) -> Response:
        problem = ecg_key_problem(ecg)
        if problem:
            return render("message.html", 422, request=request, title="Bad request", message=problem)
        from gateway.admin.exports import ExportError, model_input_array
        from gateway.dicomio.limits import MIB

        signal, svg, svg_error = None, None, None
        with session_factory() as session:
            detail = ecg_detail(session, ecg)
            instance = find_ecg(session, ecg)
            if instance is not None and instance.prediction is not None and instance.prediction.input_sha256:
                try:  # rebuilt from the spooled original and checked against the stored hash
                    signal = model_input_array(instance, cfg.storage.spool_dir, cfg.dicom.max_dataset_mb * MIB)
                except ExportError as exc:
                    svg_error = f"cannot draw the model input: {exc}"
            if detail is not None:
                audit_request(session, principal, "view_ecg", f"ecg:{detail['id']}")
                session.commit()
        if detail is None:
            return render(
                "message.html",
                404,
                request=request,
                title="Not found",
                message=f"No ECG with id or SOP Instance UID {ecg}.",
            )
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
        return render(
            "ecg.html",
            request=request,
            d=detail,
            svg=svg,
            svg_error=svg_error,
            scores=scores,
            summary=report_summary(report),
            resent=request.query_params.get("resent"),
        )

    @router.get("/ecgs/{ecg_id}/report.pdf", include_in_schema=False)
    def report(
        request: Request,
        principal: AsAdmin,
        ecg_id: Annotated[int, PathParam(ge=1, le=MAX_DB_ID)],
        page_size: Annotated[str, Query(alias="page", pattern="^(A4|letter)$")] = "A4",
    ) -> Response:
        """The one-page PDF report (download button of the ECG page, an export: admin); audited."""
        from gateway.admin.exports import ExportError, report_pdf

        with session_factory() as session:
            try:
                found_id, data = report_pdf(session, str(ecg_id), cfg.storage.spool_dir, page_size)
            except ExportError as exc:
                code = 404 if str(exc).startswith("no ECG") else 409
                return render("message.html", code, request=request, title="No report", message=str(exc))
            audit_request(session, principal, "export_report", f"ecg:{found_id}", page=page_size)
            session.commit()
        return Response(
            data,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="ecg-{found_id}-report.pdf"'},
        )

    @router.post("/ecgs/{ecg_id}/resend", include_in_schema=False)
    def resend(
        request: Request,
        principal: AsAdmin,
        ecg_id: Annotated[int, PathParam(ge=1, le=MAX_DB_ID)],
        message_id: Annotated[int, Form(ge=1, le=MAX_DB_ID)],
    ) -> Response:
        """Queue message ``message_id`` again (admin; CSRF token checked by require_role); audited."""
        origin = request.headers.get("origin")
        # behind a TLS proxy the browser's origin is https even where uvicorn saw http
        ours = {f"{request.url.scheme}://{request.url.netloc}"} | (
            {f"https://{request.url.netloc}"} if came_over_https(request) else set()
        )
        if origin and origin not in ours:
            return render(
                "message.html",
                403,
                request=request,
                title="Refused",
                message="Cross-site form submissions are refused.",
            )
        try:
            new = resend_message(session_factory, cfg, message_id, principal.actor, address=principal.address)
        except LookupError as exc:
            return render("message.html", 404, request=request, title="Not found", message=str(exc))
        except ValueError as exc:
            return render("message.html", 409, request=request, title="Not resent", message=str(exc))
        return RedirectResponse(f"/ecgs/{ecg_id}?resent={new['id']}", status_code=303)

    @router.get("/audit", include_in_schema=False)
    def audit_page(
        request: Request,
        principal: AsAdmin,
        user: str = "",
        ecg: Annotated[int | None, Query(ge=1, le=MAX_DB_ID)] = None,
        action: str = "",
        since: str = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
    ) -> Response:
        """The audit log, newest first (admin); looking at it is audited too."""
        from gateway.store.audit import AuditFilters, audit_rows, count_audit_rows

        form = {"user": user, "ecg": "" if ecg is None else str(ecg), "action": action, "since": since}
        error, rows, total = None, [], 0
        try:
            filters = AuditFilters(
                actor=user or None,
                ecg_id=ecg,
                action=action or None,
                since=parse_time(since, "since") if since else None,
            )
            with session_factory() as session:
                audit_request(session, principal, "view_audit", None, filters={k: v for k, v in form.items() if v})
                session.commit()
                rows = audit_rows(session, filters, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE)
                total = count_audit_rows(session, filters)
        except QueryError as exc:
            error = str(exc)
        return render(
            "audit.html",
            400 if error else 200,
            request=request,
            rows=rows,
            form=form,
            error=error,
            total=total,
            **page_links("/audit", form, total, page_no, PAGE_SIZE),
        )

    return router
