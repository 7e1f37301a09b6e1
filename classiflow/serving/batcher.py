"""Dynamic micro-batching: concurrent requests share one model call.

A model call on N images costs far less than N calls on one, so a single worker task takes the first waiting
image, waits at most ``max_wait_ms`` for more (up to ``max_batch``), and runs them together in a worker thread
while the event loop keeps accepting requests. Under load the wait hardly matters: the next batch fills while the
current one runs, so throughput grows with concurrency; alone, a request waits at most ``max_wait_ms``.

Each request carries the model its image was decoded for (size and channels differ between models). Requests
are grouped by that model, so a reload in the middle never mixes two models in one call, and every answer names
the version that actually produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from classiflow.serving.model import LoadedModel


@dataclass
class _Item:
    image: np.ndarray
    model: LoadedModel
    future: asyncio.Future


class Batcher:
    """``await batcher.predict(image, model)`` -> that image's probabilities, computed in a shared batch."""

    def __init__(self, max_batch: int, max_wait_ms: float, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._running: list[_Item] = []  # the batch being computed, failed by stop() if cancelled mid-call
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (the app's lifespan calls this)."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classiflow-infer")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="classiflow-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for item in [*self._running, *self._pending]:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._running = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def predict(self, image: np.ndarray, model: LoadedModel) -> np.ndarray:
        if self._task is None or self._wakeup is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(image, model, future))
        self._wakeup.set()
        return await future

    async def _collect(self) -> list[_Item]:
        assert self._wakeup is not None
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        batch: list[_Item] = []
        while True:
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # a client that went away was cancelled
                    batch.append(item)
            remaining = deadline - loop.time()
            if len(batch) >= self.max_batch or remaining <= 0 or (not batch and not self._pending):
                return batch
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._running = await self._collect()
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                model = items[0].model
                try:
                    stacked = np.stack([item.image for item in items])
                    probs = await loop.run_in_executor(self._executor, model.predict, stacked)
                except Exception as err:  # noqa: BLE001 - handed to every waiting request, never kills the worker
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(err)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(items))
                for item, row in zip(items, probs, strict=True):
                    if not item.future.done():
                        item.future.set_result(row)
