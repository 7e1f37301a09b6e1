"""Prepare stage: ``data/raw`` into fixed splits of uint8 arrays in ``data/prepared``."""

from __future__ import annotations

from classiflow.config import Params
from classiflow.data.prepare import prepare
from classiflow.layout import Layout
from classiflow.stages.result import NO_REPORT, Report, StageResult


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    meta = prepare(layout.raw, layout.prepared, params.data)
    sizes = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
    size, channels = meta["image_size"], meta["channels"]
    return StageResult(
        meta,
        metrics={f"{k}_size": v for k, v in meta["sizes"].items()} | {"skipped_files": meta["skipped_count"]},
        tags={"data_hash": meta["data_hash"]},
        documents={"meta.json": meta},
        pipeline_tags={"data_hash": meta["data_hash"], "dataset": meta["dataset"]},
        summary=[
            f"prepare: {len(meta['classes'])} classes, {sizes}, {size}x{size}x{channels}; "
            f"{meta['skipped_count']} file(s) skipped; data hash {meta['data_hash'][:12]}"
        ],
    )
