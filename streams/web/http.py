"""HTTP plumbing of the web views: JSON errors, bearer-token auth, read-only methods.

One aiohttp middleware on the worker's Faust web server does three things for
every request, so no view can forget them:

* only ``GET`` and ``HEAD`` are served (the views are read-only): anything else
  is ``405`` with a JSON error;
* with ``STREAMS_WEB_TOKEN`` set, every path but ``/health/*`` and the static
  pages (``/`` and ``/asyncapi``, which hold no data) needs ``Authorization: Bearer
  <token>``, else ``401``;
* errors are JSON ``{"error": code, "detail": text}``: :class:`ApiError` from a
  view keeps its status, aiohttp's own 404/405 become JSON, and an unexpected
  exception is logged and answered ``500`` without a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: paths served without a token (health probes, and the pages that have no data of their own: the dashboard, /asyncapi)
PUBLIC_PATHS = frozenset({"/health/live", "/health/ready", "/", "/asyncapi", "/favicon.ico"})
READ_METHODS = frozenset({"GET", "HEAD"})


class ApiError(Exception):
    """A request the views refuse: ``status`` (4xx/5xx), a short ``code`` and a ``detail``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def bad_request(detail: str, **extra: Any) -> ApiError:
    return ApiError(400, "bad_request", detail, **extra)


def not_found(detail: str, **extra: Any) -> ApiError:
    return ApiError(404, "not_found", detail, **extra)


def unavailable(detail: str, **extra: Any) -> ApiError:
    return ApiError(503, "unavailable", detail, **extra)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (``default=str`` turns datetimes and the like into text)."""
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def error_response(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="streams"'} if status == 401 else None
    return json_response({"error": code, "detail": detail, **extra}, status, headers)


def authorized(request: web.Request, token: str | None) -> bool:
    """True when no token is configured or the request carries it as a bearer token."""
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def middleware(token: Callable[[], str | None]) -> Callable:
    """The aiohttp middleware described above; ``token()`` gives the configured token."""

    @web.middleware
    async def streams_web(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.method not in READ_METHODS:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed: the views are "
                                  "read-only (GET, HEAD)")
        if request.path not in PUBLIC_PATHS and not authorized(request, token()):
            return error_response(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.detail, **exc.extra)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            detail = f"no such endpoint: {request.path}" if exc.status == 404 else exc.reason
            return error_response(exc.status, code, detail)
        except Exception:
            log.exception("web view %s %s failed", request.method, request.path_qs)
            return error_response(500, "internal_error", "the worker could not answer; see its log")

    return streams_web
