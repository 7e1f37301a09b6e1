"""`classiflow serve` and `classiflow predict`: the champion put to work, over HTTP or over a folder.

Kept apart from classiflow/cli.py so that the serving image's import path stays small and visible: nothing here
imports torch or Prefect (the slim image has neither); classiflow/cli.py registers these two commands.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from classiflow.config import Params, load_params
from classiflow.errors import ClassiflowError

err = Console(stderr=True)
ParamsFile = Annotated[str, typer.Option("--params", "-p", help="Parameter file.")]


ModelRef = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="models:/<name>@<alias>, models:/<name>/<version>, <name>@<alias> or a directory "
        "(default: serve.model, else models:/<registered name>@champion).",
    ),
]


def _serving_params(path: str) -> Params:
    """The parameter file; without one (a serving container) the defaults, unless a file was named."""
    from pathlib import Path

    if path == "params.yaml" and not Path(path).exists():
        return Params()
    return load_params(path)


def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: ModelRef = None,
    out: Annotated[str, typer.Option("--out", "-o", help="CSV to write (atomically).")] = "predictions.csv",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    top_k: Annotated[int, typer.Option(min=1, help="Add top2..topK class/probability columns.")] = 1,
    params: ParamsFile = "params.yaml",
) -> None:
    """Predict images and folders into a CSV: path, predicted, probability, prob_<class>..., error.

    Files that cannot be decoded get a row with an error and are counted; the exit status is 0 when at
    least one image was predicted and 1 when none could be.
    """
    from classiflow.progress import task_progress
    from classiflow.serving.batch import IMAGE_SUFFIXES, collect, describe_model, predict_files, summarize, write_csv
    from classiflow.serving.model import load_model_dir
    from classiflow.tracking.refs import resolve

    cfg = _serving_params(params)
    inputs = collect(paths)
    if not inputs.files:
        raise ClassiflowError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)}")
    path, name, version, metrics = resolve(model or cfg.serve.model, cfg)
    loaded = load_model_dir(path, name, version, metrics, threads=cfg.serve.threads, prefer=cfg.serve.prefer)
    with task_progress() as progress:
        bar = progress.add_task("predict", total=len(inputs.files), status="")
        failed = 0

        def advance(done: int, bad: int) -> None:
            nonlocal failed
            failed += bad
            progress.update(bar, advance=done, status=f"{failed} failed" if failed else "")

        rows = predict_files(loaded, inputs.files, batch_size, advance, cfg.serve.max_pixels)
    summary = summarize(rows, loaded.classes, len(inputs.skipped))
    write_csv(out, rows, loaded.classes, top_k)
    out_console = Console(highlight=False, soft_wrap=True)
    counts = ", ".join(f"{c} {n}" for c, n in summary.counts.items())
    out_console.print(
        f"{summary.images} images predicted with {describe_model(name, version)} ({loaded.runtime}) -> {out}: {counts}",
        markup=False,
    )
    if summary.skipped:
        err.print(f"skipped {summary.skipped} files without an image suffix", highlight=False)
    if summary.failed:
        err.print(
            f"[yellow]warning:[/] {summary.failed} of {len(rows)} files could not be read (see the error column)",
            highlight=False,
        )
    if not summary.images:
        raise ClassiflowError(f"none of the {len(rows)} files could be decoded; see the error column of {out}")


def serve(
    model: ModelRef = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: serve.port, 8000).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (slower).")] = False,
    params: ParamsFile = "params.yaml",
) -> None:
    """Serve the model over HTTP (FastAPI + uvicorn): /predict, /predict/batch, /metadata, /metrics, /reload, /.

    The model is resolved and loaded before the server starts, so a wrong name exits 1 without listening.
    Set CLASSIFLOW_API_TOKEN to require `Authorization: Bearer <token>` on everything but /health.
    """
    import os

    from classiflow.serving.app import create_app
    from classiflow.serving.batch import describe_model
    from classiflow.serving.model import load_model_dir
    from classiflow.tracking.refs import latest_version, resolve

    cfg = _serving_params(params)
    settings = cfg.serve
    ref = model or settings.model

    def load():
        path, name, version, metrics = resolve(ref, cfg)
        return load_model_dir(path, name, version, metrics, threads=settings.threads, prefer=settings.prefer)

    loaded = load()
    token = os.environ.get("CLASSIFLOW_API_TOKEN") or None
    host, port = host or settings.host, port or settings.port
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[yellow]warning:[/] listening on {host} without CLASSIFLOW_API_TOKEN: anyone reaching it can use it"
        )
    application = create_app(load, settings, token, lambda: latest_version(ref, cfg), model=loaded)
    logging.getLogger("classiflow").info(
        "serving %s (%s) on http://%s:%d", describe_model(loaded.name, loaded.version), loaded.runtime, host, port
    )
    import uvicorn

    uvicorn.run(application, host=host, port=port, access_log=access_log, log_level="info")
