"""What every listener of the suite shares (the MTA app and the memory service): JSON refusals in
OpenAI's error shape, the constant-time bearer check, a body read that answers 413 instead of a
reset, and the FastAPI handlers that keep even unknown routes and crashes in JSON."""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
MAX_DRAIN = 64 << 20  # an oversized body is read (and dropped) up to here before the 413, so no reset


class Refused(Exception):
    def __init__(self, code: int, msg: str):
        self.code, self.msg = code, msg


def error(code: int, msg: str) -> JSONResponse:
    kind = KINDS.get(code, "invalid_request_error")
    return JSONResponse({"error": {"message": msg, "type": kind, "code": code}}, status_code=code)


def authorized(header: str | None, token: str | None) -> bool:
    """The bearer token check, in constant time (no timing leak of how much of a guess matched)."""
    if token is None:
        return True
    return hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


async def read_body(request, max_body: int) -> bytes:
    """The body, or Refused(413) once it is over `max_body`: an oversized body is still read to the
    end (up to 64 MB, then the connection may close) so the client receives the answer."""
    n = request.headers.get("content-length")
    if n is not None and not n.isdigit():
        raise Refused(400, "content-length is not a number")
    raw, size = bytearray(), 0
    async for part in request.stream():
        size += len(part)
        if size <= max_body:
            raw += part
        elif size > MAX_DRAIN:
            break
    if size > max_body:
        raise Refused(413, f"body over {max_body} bytes")
    return bytes(raw)


def json_errors(api: FastAPI) -> FastAPI:
    """Unknown routes and methods, invalid requests and anything unforeseen answer in JSON (the
    last without internals)."""

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path[:100]}: {exc.detail}")

    @api.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(400, "invalid request")

    @api.exception_handler(Exception)
    async def internal(request, exc):
        return error(500, "internal error")

    return api
