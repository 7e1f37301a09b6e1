"""Plain ASGI middleware: request metrics, the bearer token, and the body size limit.

They sit in front of routing so that a request is counted even when it is refused, an unauthenticated client
gets nothing but a 401, and an oversized body is refused from its Content-Length before a byte of it is read
(or, for a chunked body without one, as soon as the running count passes the limit).
"""

from __future__ import annotations

import json
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from classiflow.serving.metrics import Metrics

ENDPOINTS = frozenset(
    {"/", "/predict", "/predict/batch", "/health", "/ready", "/metadata", "/metrics", "/reload"}
    | {"/docs", "/openapi.json"}
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others are labelled "other"
OPEN_PATHS = frozenset({"/health", "/"})  # the page itself holds no data; its API calls carry the token


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit; the app turns it into a 413."""

    def __init__(self, limit: int):
        super().__init__(f"request body over the {limit}-byte limit")
        self.limit = limit


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500
            self.metrics.errors.labels("internal").inc()
            raise
        finally:
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method if method in METHODS else "other", str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class AuthMiddleware:
    """``Authorization: Bearer <token>`` on everything but the open paths, compared in constant time."""

    def __init__(self, app: ASGIApp, token: str, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        if secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        self.metrics.errors.labels("unauthorized").inc()
        detail = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
        await send_json(send, 401, {"detail": detail, "kind": "unauthorized"}, [(b"www-authenticate", b"Bearer")])


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def _refuse(self, send: Send, what: str) -> None:
        self.metrics.errors.labels("too_large").inc()
        detail = f"{what} is over the {self.limit}-byte limit (serve.max_body_bytes)"
        await send_json(send, 413, {"detail": detail, "kind": "too_large"}, [(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await send_json(send, 400, {"detail": "Content-Length is not a number", "kind": "bad_request"})
                return
            if length > self.limit:
                await self._refuse(send, f"the body ({length} bytes)")
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)
