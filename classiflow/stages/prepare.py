"""Prepare stage: ``data/raw`` into fixed splits of uint8 arrays in ``data/prepared``."""

from __future__ import annotations

from classiflow.config import Params
from classiflow.data.prepare import prepare
from classiflow.layout import Layout


def run(layout: Layout, params: Params) -> dict:
    return prepare(layout.raw, layout.prepared, params.data)
