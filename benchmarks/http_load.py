"""A lean HTTP/1.1 keep-alive load generator: N asyncio clients on raw sockets, pre-built request bytes.

Why not httpx/aiohttp: on a 2-core machine the generator shares the CPUs with the server it measures, and a
full HTTP client spends several hundred microseconds of Python per request (header objects, URL parsing,
response models), which at 500+ requests/s is a large share of a core taken from the server. Here a request is
one ``write`` of bytes built once, and a response is one ``readuntil`` plus one ``readexactly``: the client's own
CPU time per request is measured and reported (``client_cpu_us``) so a reader can check it stayed small.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

TIMEOUT_S = 10.0


def multipart(parts: list[tuple[str, str, bytes, str]], boundary: str = "classiflowbenchboundary") -> tuple[bytes, str]:
    """``[(field, filename, data, content_type)]`` -> (body, Content-Type header value)."""
    chunks = []
    for name, filename, data, ctype in parts:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def request(
    method: str, target: str, host: str, body: bytes = b"", content_type: str | None = None, token: str | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # connection errors and timeouts (first few kept)
    failure_count: int = 0
    client_cpu_s: float = 0.0
    sample: bytes = b""  # one successful response body, to check its shape

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return self.failure_count + sum(n for status, n in self.statuses.items() if status != 200)

    def summary(self, items_per_request: int = 1) -> dict:
        lat = np.asarray(self.latencies) * 1000.0
        total = self.ok + self.errors
        pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
        return {
            "requests": total,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "failures": self.failures[:5],
            "seconds": self.seconds,
            "requests_per_s": self.ok / self.seconds if self.seconds else 0.0,
            "items_per_s": self.ok * items_per_request / self.seconds if self.seconds else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": float(lat.max()) if len(lat) else float("nan"),
            "client_cpu_us": 1e6 * self.client_cpu_s / total if total else float("nan"),
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close, chunked = 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "connection":
            close = value.strip().lower() == "close"
        elif key == "transfer-encoding":
            chunked = "chunked" in value.lower()
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body, close
    return status, await reader.readexactly(length) if length else b"", close


def _record(result: Result, status: int, body: bytes, took: float) -> None:
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status == 200:
        result.latencies.append(took)
        if not result.sample:
            result.sample = body
    elif len(result.failures) < 20:
        result.failures.append(f"HTTP {status}: {body[:200]!r}")


def _fail(result: Result, err: BaseException) -> None:
    result.failure_count += 1
    if len(result.failures) < 20:
        result.failures.append(f"{type(err).__name__}: {err}")


async def _client(
    host: str, port: int, requests: list[bytes], first: int, step: int, deadline: float, result: Result, after: float
) -> None:
    """One keep-alive connection sending ``requests[first::step]`` (cycling) until ``deadline``."""
    reader = writer = None
    i = first
    while time.perf_counter() < deadline:
        payload = requests[i % len(requests)]
        i += step
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                start = time.perf_counter()
            async with asyncio.timeout(TIMEOUT_S):
                writer.write(payload)
                status, body, close = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as err:
            if start >= after:
                _fail(result, err)
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        if start >= after:  # else warm-up
            _record(result, status, body, time.perf_counter() - start)
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _split(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return method, target, {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}, body


async def _httpx_client(
    host: str, port: int, requests: list[bytes], first: int, step: int, deadline: float, result: Result, after: float
) -> None:
    """The same loop through httpx (``--client httpx``): to measure what a full HTTP client costs."""
    import httpx

    parsed = [_split(r) for r in requests]
    i = first
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=TIMEOUT_S) as client:
        while time.perf_counter() < deadline:
            method, target, headers, body = parsed[i % len(parsed)]
            i += step
            start = time.perf_counter()
            try:
                response = await client.request(method, target, headers=headers, content=body)
            except httpx.HTTPError as err:
                if start >= after:
                    _fail(result, err)
                continue
            if start >= after:
                _record(result, response.status_code, response.content, time.perf_counter() - start)


async def _run(
    host: str, port: int, requests: list[bytes], clients: int, seconds: float, warmup: float, kind: str
) -> Result:
    result = Result()
    begin = time.perf_counter()
    record_after = begin + warmup
    deadline = record_after + seconds
    cpu_at_start: list[float] = []

    async def mark() -> None:  # client CPU over the measured window only
        await asyncio.sleep(max(0.0, record_after - time.perf_counter()))
        cpu_at_start.append(time.process_time())

    marker = asyncio.create_task(mark())
    one = _httpx_client if kind == "httpx" else _client
    await asyncio.gather(
        *(one(host, port, requests, c, clients, deadline, result, record_after) for c in range(clients))
    )
    await marker
    result.seconds = time.perf_counter() - record_after
    result.client_cpu_s = time.process_time() - cpu_at_start[0]
    return result


def run(
    host: str, port: int, requests: list[bytes], clients: int, seconds: float, warmup: float = 2.0, kind: str = "raw"
) -> Result:
    """Keep ``clients`` connections busy for ``warmup + seconds``; requests are taken round-robin.

    ``kind``: "raw" (keep-alive sockets, the default) or "httpx" (to compare the client's own cost)."""
    return asyncio.run(_run(host, port, requests, clients, seconds, warmup, kind))
