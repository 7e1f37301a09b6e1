"""What a running server holds: the served model, how to load a new one, the batcher and the metrics.

The model is replaced by assignment only, under ``lock``, and only by a model that ``load`` returned whole
(already checked on a dummy batch), so a request sees either the old model or the new one, never a
half-loaded one; a failed reload keeps the old model and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from classiflow.config import ServeParams
from classiflow.serving import images
from classiflow.serving.batcher import Batcher
from classiflow.serving.errors import ApiError
from classiflow.serving.metrics import Metrics
from classiflow.serving.model import LoadedModel

log = logging.getLogger("classiflow.serving")
INLINE_PIXELS = 256 * 256  # images up to this size are decoded on the event loop (~0.1 ms), bigger ones in a thread


class Server:
    """``load`` returns the model to serve (on start-up unless ``model`` is given, and on every reload);
    ``latest_version`` returns the version ``load`` would load now, for polling (``settings.poll_seconds``)."""

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        settings: ServeParams,
        latest_version: Callable[[], str | None] | None = None,
        model: LoadedModel | None = None,
    ):
        self.load, self.settings, self.latest_version = load, settings, latest_version
        self.metrics = Metrics()
        self.batcher = Batcher(settings.max_batch, settings.max_wait_ms, self.metrics.batch_size.observe)
        self.model, self.load_error = model, None
        self.lock = asyncio.Lock()
        if model is not None:
            self.metrics.served(model)

    def ready_model(self) -> LoadedModel:
        current = self.model
        if current is None:
            why = f"loading failed: {self.load_error}" if self.load_error else "the model is still loading"
            raise ApiError(503, "not_ready", f"no model is loaded yet ({why}); see GET /ready")
        return current

    async def decode(self, model: LoadedModel, data: bytes) -> np.ndarray:
        args = (data, model.image_size, model.channels, self.settings.max_pixels, model.resize)
        pixels = images.declared_pixels(data)
        if pixels is not None and pixels > INLINE_PIXELS:
            return await run_in_threadpool(images.decode, *args)
        return images.decode(*args)  # small or unreadable (fails at once): cheaper than a thread hop

    async def reload(self) -> tuple[LoadedModel | None, LoadedModel]:
        """Load the model again and swap it in whole: (the previous model, the new one)."""
        async with self.lock:
            old = self.model
            try:
                new = await run_in_threadpool(self.load)
                if not isinstance(new, LoadedModel):
                    raise TypeError(f"load() returned {type(new).__name__}, not a LoadedModel")
            except Exception as err:
                self.metrics.reloads.labels("failed").inc()
                self.load_error = str(err) or type(err).__name__
                log.error("loading the model failed, %s: %s", _serving(old), self.load_error)
                raise
            self.model, self.load_error = new, None
            self.metrics.served(new)
            self.metrics.reloads.labels("ok").inc()
            log.info("serving %s version %s (%s)", new.name, new.version, new.runtime)
            return old, new

    async def poll(self) -> None:
        """Reload whenever ``latest_version`` names another version than the served one."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                latest = await run_in_threadpool(self.latest_version)
            except Exception as err:  # noqa: BLE001 - a registry hiccup must not stop polling
                log.warning("checking for a new model version failed: %s", err)
                continue
            current = self.model
            if latest is not None and (current is None or str(latest) != current.version):
                log.info("model version %s is available; reloading", latest)
                with contextlib.suppress(Exception):  # logged by reload(); the old model stays
                    await self.reload()

    @contextlib.asynccontextmanager
    async def running(self):
        """The batcher, the first load (unless a model was given) and polling, for the app's lifespan."""
        self.batcher.start()
        tasks = []
        if self.model is None:
            tasks.append(asyncio.create_task(_quietly(self.reload())))
        if self.settings.poll_seconds > 0 and self.latest_version is not None:
            tasks.append(asyncio.create_task(self.poll()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.batcher.stop()


def _serving(model: LoadedModel | None) -> str:
    return "no model is served" if model is None else f"still serving {model.name} version {model.version}"


async def _quietly(coro) -> None:
    with contextlib.suppress(Exception):  # reload() has logged it and /ready reports it
        await coro
