"""The endpoints, as module-level functions on one router; each reads the running :class:`Server` from
``request.app.state.server``. Every client mistake gets a 4xx JSON answer naming it ({"detail", "kind"})."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from classiflow.errors import ClassiflowError
from classiflow.serving import images
from classiflow.serving.errors import ApiError
from classiflow.serving.explainer import explainer_for, overlay_png
from classiflow.serving.model import LoadedModel, describe
from classiflow.serving.openapi import (
    BATCH_BODY,
    ERRORS,
    EXPLAIN_ERRORS,
    PREDICT_BODY,
    BatchResult,
    ExplainResult,
    PredictResult,
)
from classiflow.serving.state import Server
from classiflow.serving.uploads import RAW_TYPES, read_batch, read_one

PAGE = Path(__file__).parent / "static" / "index.html"
TOP_K = Query(None, ge=1, le=1000)
router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


def _top(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: min(k, len(classes))]
    return [{"class": classes[i], "probability": float(probs[i])} for i in order]


def _answer(model: LoadedModel, start: float, **body) -> JSONResponse:
    latency = {"latency_ms": 1000.0 * (time.perf_counter() - start)}
    return JSONResponse({"model": model.name, "version": model.version, **body, **latency})


@router.post("/predict", responses={200: {"model": PredictResult}, **ERRORS}, openapi_extra=PREDICT_BODY)
async def predict(request: Request, top_k: int | None = TOP_K) -> JSONResponse:
    """Classify one image: a multipart upload (field ``file``) or the raw image as the body."""
    start, server = time.perf_counter(), _server(request)
    current = server.ready_model()
    image = await server.decode(current, await read_one(request))
    probs = await server.batcher.predict(image, current)
    server.metrics.images.inc()
    top = _top(probs, current.classes, top_k or server.settings.top_k)
    return _answer(current, start, decision=current.decide(probs[None])[0], predictions=top)


@router.post("/predict/batch", responses={200: {"model": BatchResult}, **ERRORS}, openapi_extra=BATCH_BODY)
async def predict_batch(request: Request, top_k: int | None = TOP_K) -> JSONResponse:
    """Classify several images (multipart, repeated field ``files``); a bad image fails only its own item."""
    start, server = time.perf_counter(), _server(request)
    current = server.ready_model()
    names, blobs = zip(*await read_batch(request, server.settings.max_batch_images), strict=True)

    async def one(blob: bytes) -> dict:
        try:
            image = await server.decode(current, blob)
        except images.ImageError as err:
            server.metrics.errors.labels("bad_image").inc()
            return {"error": str(err)}
        probs = await server.batcher.predict(image, current)
        server.metrics.images.inc()
        top = _top(probs, current.classes, top_k or server.settings.top_k)
        return {"decision": current.decide(probs[None])[0], "predictions": top}

    results = await asyncio.gather(*(one(b) for b in blobs))
    items = [{"index": i, "filename": n, **r} for i, (n, r) in enumerate(zip(names, results, strict=True))]
    return _answer(current, start, results=items, failed=sum("error" in r for r in results))


@router.post("/explain", responses={200: {"model": ExplainResult}, **EXPLAIN_ERRORS}, openapi_extra=PREDICT_BODY)
async def explain(
    request: Request, top_k: int | None = TOP_K, target: str | None = Query(None, alias="class")
) -> JSONResponse:
    """Classify one image (as /predict) and show where the evidence for a class lies: a Grad-CAM heat map of
    ``?class=`` or of the top class. Needs PyTorch beside the server and the export stage's weights."""
    start, server = time.perf_counter(), _server(request)
    current = server.ready_model()
    if current.explain_unavailable:
        raise ApiError(501, "explain_unavailable", current.explain_unavailable)
    if target is not None and target not in current.classes:
        raise ApiError(
            422, "unknown_class", f"class={target!r} is not a class of the model ({', '.join(current.classes)})"
        )
    image = await server.decode(current, await read_one(request))
    probs = await server.batcher.predict(image, current)
    index = int(np.argmax(probs)) if target is None else current.classes.index(target)
    try:
        explainer = await asyncio.to_thread(explainer_for, current)
    except ClassiflowError as err:
        raise ApiError(501, "explain_unavailable", str(err)) from None
    heat = await asyncio.to_thread(explainer.heatmap, image, index)
    server.metrics.images.inc()
    return _answer(
        current,
        start,
        decision=current.decide(probs[None])[0],
        predictions=_top(probs, current.classes, top_k or server.settings.top_k),
        **{"class": current.classes[index], "probability": float(probs[index])},
        method="grad-cam",
        layer=current.spec["explain"].get("layer", ""),
        heatmap=np.round(heat, 4).tolist(),
        overlay=overlay_png(image, heat),
    )


@router.get("/health")
async def health() -> dict:
    """The process is up (no token needed): for liveness probes."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "no model loaded yet"}})
async def ready(request: Request) -> JSONResponse:
    """200 once a model is loaded: for readiness probes and load balancers."""
    server = _server(request)
    current = server.model
    if current is None:
        body = {"ready": False, "detail": server.load_error or "the model is still loading"}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"ready": True, "model": current.name, "version": current.version})


@router.get("/metadata", responses={503: {"description": "no model loaded yet"}})
async def metadata(request: Request) -> dict:
    """The served model (classes, version, metrics), what input it takes, and the server's limits."""
    server = _server(request)
    current, settings = server.ready_model(), server.settings
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


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> Response:
    """Prometheus text format."""
    metrics = _server(request).metrics
    return Response(metrics.render(), media_type=metrics.content_type)


@router.post("/reload", responses={503: {"description": "loading failed; the previous model is still served"}})
async def reload(request: Request) -> JSONResponse:
    """Load the model again (e.g. a new @champion) and swap it in whole; on failure keep the old one."""
    server = _server(request)
    try:
        old, new = await server.reload()
    except Exception as err:  # noqa: BLE001 - any loader failure is reported, and the old model stays
        server.metrics.errors.labels("reload_failed").inc()
        body = {"detail": f"reload failed: {str(err) or type(err).__name__}", "kind": "reload_failed"}
        kept = server.model
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


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    try:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return HTMLResponse("<!doctype html><title>classiflow</title><p>API: <a href='/docs'>/docs</a></p>")
