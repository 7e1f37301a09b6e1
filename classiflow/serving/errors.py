"""One JSON shape for every refusal, ``{"detail": why, "kind": name}``, each counted in /metrics by kind.

Client mistakes get their 4xx here; the catch-all turns anything unexpected into a logged 500, the last resort
that the tests prove no bad input reaches.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from classiflow.serving.images import ImageError
from classiflow.serving.metrics import Metrics
from classiflow.serving.middleware import BodyTooLarge

log = logging.getLogger("classiflow.serving")


class ApiError(HTTPException):
    """A refusal with a stable ``kind`` (bad_image, too_large, unsupported_media_type, not_ready, ...)."""

    def __init__(self, status: int, kind: str, detail: str):
        super().__init__(status, detail)
        self.kind = kind


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    def refuse(status: int, kind: str, detail, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"detail": detail, "kind": kind}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return refuse(err.status_code, err.kind, err.detail)

    @app.exception_handler(ImageError)
    async def image_error(request: Request, err: ImageError) -> JSONResponse:
        return refuse(422, "bad_image", str(err))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        detail = f"the body is over the {err.limit}-byte limit (serve.max_body_bytes)"
        return refuse(413, "too_large", detail, {"connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return refuse(422, "validation", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # 404, 405 from routing
        return refuse(err.status_code, f"http_{err.status_code}", err.detail, err.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
        return JSONResponse({"detail": "internal server error (logged)", "kind": "internal"}, status_code=500)
