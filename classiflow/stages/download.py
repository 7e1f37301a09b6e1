"""Download stage: ``data.source`` into ``data/raw``; relative sources resolve from the project."""

from __future__ import annotations

from classiflow.config import Params
from classiflow.data.download import download
from classiflow.layout import Layout, project_root


def run(layout: Layout, params: Params) -> dict:
    return download(params.data.source, layout.raw, params.data.sha256, base_dir=project_root())
