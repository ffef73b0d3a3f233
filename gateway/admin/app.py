"""The admin application: the API's and the web view's routes in one FastAPI
app behind one security layer, and the uvicorn server that serves it.

Every response carries ``SECURITY_HEADERS`` (a Content-Security-Policy that
allows only this origin's style sheet and no script, nosniff, no referrer, no
framing), set by the outermost layer so errors carry them too.  No page loads
anything from another site: /docs and /redoc (which load Swagger/ReDoc script
from a CDN) are not served; ``[admin] openapi = true`` serves /openapi.json
behind the token (or a signed-in browser).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.admin.api import api_router
from gateway.admin.auth import AuthContext, AuthError, Principal, require_role
from gateway.admin.queries import QueryError
from gateway.admin.stow import stow_router
from gateway.admin.web import STATIC_DIR, auth_error_page, invalid_request, web_router
from gateway.admin.worklist import overread_router
from gateway.config import Config

if TYPE_CHECKING:
    import uvicorn

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "create_app", "make_server"]

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


#: The largest request body outside STOW-RS (/dicomweb/, bounded by [ingest] stow_max_request_mb):
#: forms and JSON bodies are a few kB (the confirm form at most ~120 kB percent-encoded).
MAX_BODY_BYTES = 1024 * 1024


async def _too_large(send: Send) -> None:
    body = b'{"detail":"request body larger than 1 MB"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """ASGI layer refusing (413) a request body over ``MAX_BODY_BYTES`` outside /dicomweb/.

    FastAPI reads a JSON or form body whole, into memory, *before* the route's
    dependencies check the caller: without this layer anyone could make the
    admin hold a body of any size (an unauthenticated POST to
    /api/ecgs/1/confirm was read to the end, then answered 422).  A declared
    Content-Length is checked at once; a chunked body is read here up to the
    limit, then handed on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/dicomweb/"):
            await self.app(scope, receive, send)
            return
        lengths = [value for name, value in scope["headers"] if name == b"content-length"]
        if lengths:
            if any(not v.strip().isdigit() or int(v) > MAX_BODY_BYTES for v in lengths):
                await _too_large(send)
                return
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > MAX_BODY_BYTES:
                await _too_large(send)
                return
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay() -> Message:
            message = next(pending, None)
            return message if message is not None else await receive()

        await self.app(scope, replay, send)


class AdminApp(FastAPI):
    """FastAPI with :class:`_SecurityHeaders` outside every other layer, so even
    the 500 answer of an unexpected error carries the headers, then :class:`_BodyLimit`."""

    def build_middleware_stack(self) -> ASGIApp:
        return _SecurityHeaders(_BodyLimit(super().build_middleware_stack()))


def create_app(
    cfg: Config,
    session_factory: Callable[[], Any],
    health: Callable[[], dict[str, bool | str]] | None = None,
    on_stored: Callable[[int], None] | None = None,
) -> FastAPI:
    """The admin application: /api, /healthz, /metrics, DICOMweb STOW-RS
    (``[ingest] stow_enabled``) and the web view.

    ``session_factory`` makes SQLAlchemy sessions; ``health`` reports what only
    serve can see (e.g. ``{"scp_listening": True, "model_loaded": "loading"}``);
    ``on_stored(ecg_id)`` is called after each instance STOW-RS stored (the worker's wake-up).
    """
    app = AdminApp(
        title="ECG gateway admin API",
        version=__version__,
        description="Query received ECGs, model results and HL7 delivery. Bearer token: a user's API token "
        "(`ecg-gateway users token NAME`) or the bootstrap [admin] token.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # see the module docstring
    )
    # what gateway.admin.auth's dependencies (require_role) read
    app.state.auth = AuthContext(cfg.admin, session_factory)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        """JSON under /api (401 with WWW-Authenticate), elsewhere the login page or a message page."""
        if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
            headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)
        return auth_error_page(request, exc)

    @app.exception_handler(QueryError)
    async def _query_error(_request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """A bad parameter: FastAPI's JSON answer under /api/, a page elsewhere."""
        return await invalid_request(request, exc)

    app.include_router(api_router(cfg, session_factory, health))
    app.include_router(overread_router(cfg, session_factory))  # the over-read: confirm API, worklist, form
    if cfg.ingest.stow_enabled:
        app.include_router(stow_router(cfg, session_factory, on_stored))

    if cfg.admin.openapi:

        @app.get("/openapi.json", include_in_schema=False)
        def openapi_schema(_principal: Annotated[Principal, Depends(require_role("viewer"))]) -> JSONResponse:
            """The API schema, for a bearer token or a signed-in browser ([admin] openapi = true)."""
            return JSONResponse(app.openapi())

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(web_router(cfg, session_factory))
    return app


def make_server(app: FastAPI, cfg: Config) -> "uvicorn.Server":
    """A uvicorn server for ``app`` on ``[admin] host``/``port`` (call
    :func:`gateway.admin.auth.check_admin_bind` first); run it with
    ``server.run()`` in a thread and stop it with ``server.should_exit = True``.
    A connection without a complete request for ``[admin] request_timeout_s``
    is closed; beyond ``max_connections`` concurrent connections requests get 503."""
    import uvicorn

    from gateway.admin.deadline import request_deadline_protocol

    # log_config=None: uvicorn's records go through the gateway's handler (format, escaping)
    config = uvicorn.Config(
        app,
        host=cfg.admin.host,
        port=cfg.admin.port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        http=request_deadline_protocol(cfg.admin.request_timeout_s),
        limit_concurrency=cfg.admin.max_connections,
    )
    return uvicorn.Server(config)
