"""The model card that travels with every registered version: what a person deploying or auditing the model
needs on one page, built only from files the pipeline already wrote, so it cannot disagree with them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from classiflow.checkpoint import trained_with_flip
from classiflow.export.report import FORMAT_NAMES, rejected

CARD_SECTIONS = ("data", "model", "augment", "train", "prune", "export")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _latency_table(export: dict) -> list[str]:
    lines = [
        "| model | format | file | size | test accuracy | batch-1 median ms | batch-1 p99 ms | batch img/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, formats in export.items():
        if not isinstance(formats, dict):
            continue
        for fmt, row in formats.items():
            if row.get("status") == "rejected":
                continue
            lines.append(
                f"| {model} | {FORMAT_NAMES.get(fmt, fmt)} | `{row['file']}` | {row['bytes'] / 1e3:.1f} kB "
                f"| {_pct(row['accuracy'])} | {row['latency_ms_median']:.3f} | {row['latency_ms_p99']:.3f} "
                f"| {row['images_per_second']:.0f} |"
            )
    return lines


def _accuracy_line(evaluation: dict[str, Any]) -> str:
    tta = evaluation.get("tta", {})
    views = tta.get("views", "flip")
    both = f"plain {_pct(evaluation.get('accuracy_plain'))}, {views} TTA {_pct(evaluation.get('accuracy_tta'))}"
    used = f"with {views} TTA, which the files compute" if tta.get("used") else "without TTA"
    return (
        f"- **Test accuracy:** {_pct(evaluation['accuracy'])} ({used}; {both}; TTA choice: "
        f"{tta.get('reason', 'n/a')}), balanced accuracy {_pct(evaluation.get('balanced_accuracy'))}, macro F1 "
        f"{evaluation['macro_f1']:.4f} on {evaluation['test_size']} held-out test images"
    )


def _calibration_line(evaluation: dict[str, Any]) -> str:
    cal = evaluation.get("calibration")
    if not cal:
        return "- **Probabilities:** softmax of the logits (not calibrated)"
    return (
        f"- **Probabilities:** softmax(logits / {cal['temperature']:.3f}), the temperature fitted on the validation "
        f"split; expected calibration error on test {_pct(cal['ece_before'])} raw, {_pct(cal['ece_after'])} scaled"
    )


def _ci(row: dict, key: str) -> str:
    low, high = row[f"{key}_ci"]
    return f"{_pct(row[key])} [{_pct(low)}, {_pct(high)}]"


def _operating_section(point: dict[str, Any] | None) -> list[str]:
    """The thresholds serving applies, and what they did on validation (where chosen) and on test."""
    if not point or "thresholds" not in point:
        return []
    normal, key = point["normal"], "caught" if point["normal"] else "recall"
    what = "caught (not passed as `" + normal + "`)" if normal else "recall"
    lines = [
        "",
        "## Operating point",
        "",
        f"`{point['policy']}` at {point['target']:g}, thresholds chosen on the validation split; served answers are a "
        f"class or `uncertain`. Target **{'met' if point['met_on_test'] else 'missed'}** on test.",
        "",
        f"| class | threshold | validation {what} | test {what} (95% CI) |",
        "|---|---:|---:|---:|",
    ]
    for cls, t in point["thresholds"].items():
        if cls == normal:
            continue
        val, test = point["val"]["per_class"][cls], point["test"]["per_class"][cls]
        lines.append(f"| {cls} | {t:.4f} | {_pct(val[key])} | {_ci(test, key)} |")
    test = point["test"]
    if "false_alarm" in test:
        lines += ["", f"False alarms on test (`{normal}` images flagged): {_ci(test, 'false_alarm')}; "
                  f"uncertain {_pct(test['uncertain'])}."]  # fmt: skip
    return lines


def _pruned_section(pruning: dict[str, Any]) -> list[str]:
    status = pruning.get("status", "accepted")
    if status == "none":
        return ["", "## Pruned variant", "", "None (`prune.method: none`)."]
    summary = (
        f"`{pruning['method']}` at amount {pruning['amount']} ({pruning['finetune_epochs']} fine-tuning epochs per "
        f"step): {pruning['params_before']:,} -> {pruning['params_after']:,} parameters, test accuracy "
        f"{_pct(pruning['test_accuracy_before'])} -> {_pct(pruning['test_accuracy_after'])}, batch-1 PyTorch "
        f"latency {pruning['latency_ms_median_before']:.3f} -> {pruning['latency_ms_median_after']:.3f} ms."
    )
    if status == "rejected":
        summary = f"**Rejected, not shipped:** {pruning.get('reason')}. " + summary
    return ["", "## Pruned variant", "", summary]


def _weights_line(pretrained: dict[str, Any] | None) -> str:
    if not pretrained:
        return "- **Initial weights:** random (trained from scratch)"
    return (
        f"- **Initial weights:** `{pretrained['source']}` (file `{pretrained['file']}`, sha256 "
        f"`{pretrained['sha256']}`, licence {pretrained.get('license') or 'not stated'}); "
        f"trained afresh: {', '.join(f'`{k}`' for k in pretrained.get('fresh', [])) or 'nothing'}"
    )


def model_card(
    name: str,
    checkpoint: dict[str, Any],
    params: dict[str, Any],
    evaluation: dict[str, Any],
    pruning: dict[str, Any],
    export: dict[str, Any],
    git_commit: str,
) -> str:
    """Markdown; ``params`` is ``Params.flat()``, the other dicts are the stages' metrics files."""
    spec = checkpoint["model"]
    classes = checkpoint["classes"]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = [
        f"# Model card: {name}",
        "",
        f"- **Architecture:** `{spec['name']}` ({spec.get('attention', 'none')} attention), input "
        f"{spec['in_channels']}x{spec['image_size']}x{spec['image_size']} (other shapes: data.resize "
        f"{params.get('data.resize', 'squash')}), {len(classes)} classes",
        f"- **Data:** `{params.get('data.source')}`, prepared data hash `{checkpoint['data_hash']}`",
        f"- **Code:** git commit `{git_commit}`; card written {now}",
        f"- **Trained with horizontal flips:** {'yes' if trained_with_flip(checkpoint) else 'no'} "
        f"(augment.flip {params.get('augment.flip')})",
        _accuracy_line(evaluation),
        _calibration_line(evaluation),
        f"- **Input:** raw pixel values 0-255, float32 NCHW; the files normalise with mean "
        f"{[round(m, 4) for m in checkpoint['mean']]} and std {[round(s, 4) for s in checkpoint['std']]} themselves",
        _weights_line(checkpoint.get("pretrained")),
        "",
        "## Classes",
        "",
        ", ".join(f"`{c}`" for c in classes),
        "",
        "## Per-class test metrics",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for cls, row in evaluation.get("per_class", {}).items():
        lines.append(f"| {cls} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += _operating_section(evaluation.get("operating_point"))
    lines += _pruned_section(pruning)
    lines += [
        "",
        f"## Exported files (timed with {export.get('threads', '?')} thread(s))",
        "",
        *_latency_table(export),
        "",
    ]
    left_out = rejected(export)
    if left_out:
        lines += ["Left out, failed their checks (not in this version):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in left_out.items()]
        lines += [""]
    lines += [
        "## Parameters",
        "",
        "| key | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | `{v}` |" for k, v in params.items() if k.split(".")[0] in CARD_SECTIONS]
    return "\n".join(lines) + "\n"
