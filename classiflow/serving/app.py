"""The HTTP API: ``uvicorn.run(create_app(load, settings), host=..., port=...)`` is a complete server.

The served model is one reference, replaced only by a model that ``load`` returned whole (already checked on a
dummy batch), so a request sees either the old model or the new one, never a half-loaded one; a failed reload
keeps the old model and says why. Every client mistake gets a 4xx JSON answer naming it ({"detail", "kind"});
500 is left for real bugs, logged with their traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from classiflow.config import ServeParams
from classiflow.serving import images
from classiflow.serving.batcher import Batcher
from classiflow.serving.errors import ApiError, install_handlers
from classiflow.serving.metrics import Metrics
from classiflow.serving.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from classiflow.serving.model import LoadedModel, describe
from classiflow.serving.openapi import BATCH_BODY, COMMON, ERRORS, PREDICT_BODY, BatchResult, PredictResult
from classiflow.serving.uploads import RAW_TYPES, read_batch, read_one

log = logging.getLogger("classiflow.serving")
PAGE = Path(__file__).parent / "static" / "index.html"
INLINE_PIXELS = 256 * 256  # images up to this size are decoded on the event loop (~0.1 ms), bigger ones in a thread


class ServerState:
    """The served model; replaced by assignment only, under ``lock``, so readers never need the lock."""

    def __init__(self, model: LoadedModel | None):
        self.model = model
        self.load_error: str | None = None
        self.lock = asyncio.Lock()


def _top(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: min(k, len(classes))]
    return [{"class": classes[i], "probability": float(probs[i])} for i in order]


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
    metrics = Metrics()
    state = ServerState(model)
    batcher = Batcher(settings.max_batch, settings.max_wait_ms, metrics.batch_size.observe)
    if model is not None:
        metrics.served(model)

    async def reload() -> tuple[LoadedModel | None, LoadedModel]:
        async with state.lock:
            old = state.model
            try:
                new = await run_in_threadpool(load)
                if not isinstance(new, LoadedModel):
                    raise TypeError(f"load() returned {type(new).__name__}, not a LoadedModel")
            except Exception as err:
                metrics.reloads.labels("failed").inc()
                state.load_error = str(err) or type(err).__name__
                log.error("loading the model failed, %s: %s", _serving(old), state.load_error)
                raise
            state.model, state.load_error = new, None
            metrics.served(new)
            metrics.reloads.labels("ok").inc()
            log.info("serving %s version %s (%s)", new.name, new.version, new.runtime)
            return old, new

    async def poll() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            try:
                latest = await run_in_threadpool(latest_version)
            except Exception as err:  # noqa: BLE001 - a registry hiccup must not stop polling
                log.warning("checking for a new model version failed: %s", err)
                continue
            current = state.model
            if latest is not None and (current is None or str(latest) != current.version):
                log.info("model version %s is available; reloading", latest)
                with contextlib.suppress(Exception):  # logged by reload(); the old model stays
                    await reload()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        tasks = []
        if state.model is None:
            tasks.append(asyncio.create_task(_quietly(reload())))
        if settings.poll_seconds > 0 and latest_version is not None:
            tasks.append(asyncio.create_task(poll()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.stop()

    app = FastAPI(
        title="classiflow",
        summary="Image classification with the registered champion model",
        version="1",
        lifespan=lifespan,
        responses=COMMON,
    )
    app.state.serving = state
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.settings = settings

    def ready_model() -> LoadedModel:
        current = state.model
        if current is None:
            why = f"loading failed: {state.load_error}" if state.load_error else "the model is still loading"
            raise ApiError(503, "not_ready", f"no model is loaded yet ({why}); see GET /ready")
        return current

    async def decode(model_: LoadedModel, data: bytes) -> np.ndarray:
        args = (data, model_.image_size, model_.channels, settings.max_pixels)
        pixels = images.declared_pixels(data)
        if pixels is not None and pixels > INLINE_PIXELS:
            return await run_in_threadpool(images.decode, *args)
        return images.decode(*args)  # small or unreadable (fails at once): cheaper than a thread hop

    install_handlers(app, metrics)

    @app.post("/predict", responses={200: {"model": PredictResult}, **ERRORS}, openapi_extra=PREDICT_BODY)
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=1000)) -> JSONResponse:
        """Classify one image: a multipart upload (field ``file``) or the raw image as the body."""
        start = time.perf_counter()
        current = ready_model()
        image = await decode(current, await read_one(request))
        probs = await batcher.predict(image, current)
        metrics.images.inc()
        return JSONResponse(
            {
                "model": current.name,
                "version": current.version,
                "predictions": _top(probs, current.classes, top_k or settings.top_k),
                "latency_ms": 1000.0 * (time.perf_counter() - start),
            }
        )

    @app.post("/predict/batch", responses={200: {"model": BatchResult}, **ERRORS}, openapi_extra=BATCH_BODY)
    async def predict_batch(request: Request, top_k: int | None = Query(None, ge=1, le=1000)) -> JSONResponse:
        """Classify several images (multipart, repeated field ``files``); a bad image fails only its own item."""
        start = time.perf_counter()
        current = ready_model()
        names, blobs = zip(*await read_batch(request, settings.max_batch_images), strict=True)

        async def one(blob: bytes) -> dict:
            try:
                image = await decode(current, blob)
            except images.ImageError as err:
                metrics.errors.labels("bad_image").inc()
                return {"error": str(err)}
            probs = await batcher.predict(image, current)
            metrics.images.inc()
            return {"predictions": _top(probs, current.classes, top_k or settings.top_k)}

        results = await asyncio.gather(*(one(b) for b in blobs))
        items = [{"index": i, "filename": n, **r} for i, (n, r) in enumerate(zip(names, results, strict=True))]
        return JSONResponse(
            {
                "model": current.name,
                "version": current.version,
                "results": items,
                "failed": sum("error" in r for r in results),
                "latency_ms": 1000.0 * (time.perf_counter() - start),
            }
        )

    @app.get("/health")
    async def health() -> dict:
        """The process is up (no token needed): for liveness probes."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "no model loaded yet"}})
    async def ready() -> JSONResponse:
        """200 once a model is loaded: for readiness probes and load balancers."""
        current = state.model
        if current is None:
            body = {"ready": False, "detail": state.load_error or "the model is still loading"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ready": True, "model": current.name, "version": current.version})

    @app.get("/metadata", responses={503: {"description": "no model loaded yet"}})
    async def metadata() -> dict:
        """The served model (classes, version, metrics), what input it takes, and the server's limits."""
        current = ready_model()
        return {
            **describe(current),
            "input": {
                "image_size": current.image_size,
                "channels": current.channels,
                "formats": list(images.ALLOWED_FORMATS),
                "content_types": sorted(RAW_TYPES | {"multipart/form-data"}),
                "model_input": current.spec.get("input"),
                "mean": current.spec.get("mean"),
                "std": current.spec.get("std"),
            },
            "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_batch_images": settings.max_batch_images,
                "max_pixels": settings.max_pixels,
            },
            "top_k": settings.top_k,
            "poll_seconds": settings.poll_seconds,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/reload", responses={503: {"description": "loading failed; the previous model is still served"}})
    async def reload_endpoint() -> JSONResponse:
        """Load the model again (e.g. a new @champion) and swap it in whole; on failure keep the old one."""
        try:
            old, new = await reload()
        except Exception as err:  # noqa: BLE001 - any loader failure is reported, and the old model stays
            metrics.errors.labels("reload_failed").inc()
            body = {"detail": f"reload failed: {str(err) or type(err).__name__}", "kind": "reload_failed"}
            kept = state.model
            body["serving"] = None if kept is None else {"model": kept.name, "version": kept.version}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "model": new.name,
                "version": new.version,
                "runtime": new.runtime,
                "previous_version": None if old is None else old.version,
                "changed": old is None or old.version != new.version or old.name != new.name,
            }
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        try:
            return HTMLResponse(PAGE.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return HTMLResponse("<!doctype html><title>classiflow</title><p>API: <a href='/docs'>/docs</a></p>")

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=metrics)
    if token:
        app.add_middleware(AuthMiddleware, token=token, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _serving(model: LoadedModel | None) -> str:
    return "no model is served" if model is None else f"still serving {model.name} version {model.version}"


async def _quietly(coro) -> None:
    with contextlib.suppress(Exception):  # reload() has logged it and /ready reports it
        await coro
