"""The HTTP API: ``uvicorn.run(create_app(load, settings), host=..., port=...)`` is a complete server.

The endpoints live in :mod:`classiflow.serving.routes`, the served model and its reloading in
:class:`classiflow.serving.state.Server`; this module wires them with the error handlers and the
middleware. 500 is left for real bugs, logged with their traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from fastapi import FastAPI

from classiflow.config import ServeParams
from classiflow.serving.errors import install_handlers
from classiflow.serving.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from classiflow.serving.model import LoadedModel
from classiflow.serving.openapi import COMMON
from classiflow.serving.routes import router
from classiflow.serving.state import Server


def create_app(
    load: Callable[[], LoadedModel],
    settings: ServeParams,
    token: str | None = None,
    latest_version: Callable[[], str | None] | None = None,
    *,
    model: LoadedModel | None = None,
) -> FastAPI:
    """``load`` returns the model to serve (called at start-up unless ``model`` is given, and on every reload);
    ``latest_version`` returns the version ``load`` would load now, for polling (``settings.poll_seconds``)."""
    server = Server(load, settings, latest_version, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with server.running():
            yield

    app = FastAPI(
        title="classiflow",
        summary="Image classification with the registered champion model",
        version="1",
        lifespan=lifespan,
        responses=COMMON,
    )
    app.state.server = server
    install_handlers(app, server.metrics)
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=server.metrics)
    if token:
        app.add_middleware(AuthMiddleware, token=token, metrics=server.metrics)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app
