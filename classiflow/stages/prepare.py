"""Prepare stage: ``data/raw`` into fixed splits of uint8 arrays in ``data/prepared``, with the data sanity report
(class counts per split as a bar chart, duplicates, odd images: ``classiflow.data.sanity``) in its record."""

from __future__ import annotations

from classiflow.config import Params
from classiflow.data.prepare import prepare
from classiflow.data.sanity import plot_class_counts
from classiflow.layout import Layout
from classiflow.stages.result import NO_REPORT, Report, StageResult


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    meta = prepare(layout.raw, layout.prepared, params.data)
    plot_class_counts(layout.class_counts_png, meta["class_counts"], meta["classes"])
    sizes = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
    size, channels = meta["image_size"], meta["channels"]
    sanity = meta["sanity"]
    found = {f"duplicates_{kind}": sum(sanity["duplicates"][kind].values()) for kind in ("within", "across")}
    odd = {f"odd_{kind}": sanity.get("odd", {}).get(kind, {}).get("others", 0) for kind in ("size", "channels")}
    return StageResult(
        meta,
        metrics={f"{k}_size": v for k, v in meta["sizes"].items()}
        | {"skipped_files": meta["skipped_count"]}
        | found
        | odd,
        tags={"data_hash": meta["data_hash"]},
        artifacts={layout.class_counts_png: ""},
        documents={"meta.json": meta},
        pipeline_tags={"data_hash": meta["data_hash"], "dataset": meta["dataset"]},
        summary=[
            f"prepare: {len(meta['classes'])} classes, {sizes}, {size}x{size}x{channels}; "
            f"{meta['skipped_count']} file(s) skipped; data hash {meta['data_hash'][:12]}",
            "prepare: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (found | odd).items()),
        ],
        record={"sanity": sanity, "groups": meta["groups"], "class_counts": meta["class_counts"]},
    )
