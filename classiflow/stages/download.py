"""Download stage: ``data.source`` into ``data/raw``; relative sources resolve from the project."""

from __future__ import annotations

from classiflow.config import Params
from classiflow.data.download import download
from classiflow.layout import Layout, project_root
from classiflow.stages.result import NO_REPORT, Report, StageResult


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    manifest = download(params.data.source, layout.raw, params.data.sha256, base_dir=project_root())
    return StageResult(
        manifest,
        tags={"source_kind": manifest["kind"], "source_sha256": manifest.get("sha256") or ""},
        documents={"manifest.json": manifest},
        pipeline_tags={"dataset": manifest["name"]},
        summary=[f"download: {manifest['kind']} {manifest['source']} into {layout.raw}"],
    )
