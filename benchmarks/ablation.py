"""One change against a committed recipe on CIFAR-10: the recipe as it is, then with ``--set`` overrides, one after
the other on the same machine in the same run, so their accuracy and train-stage time compare directly.

Both runs are `benchmarks/recipes.py`'s throw-away projects (the real augment, train and evaluate stages on the
shared JPEG copy). Results accumulate in benchmarks/.cache/ablation/results.json; --doc writes them to
docs/benchmarks.md (section "ablation"), each change beside the baseline of its own run.

    python benchmarks/ablation.py budget-2min --set train.lookahead=5
    python benchmarks/ablation.py --doc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, REPO, machine, require_cifar10, write_section  # noqa: E402
from benchmarks.recipes import run_overrides  # noqa: E402
from classiflow.recipes import load_recipe  # noqa: E402

WORK = CACHE / "ablation"
RESULTS = WORK / "results.json"


def parse_sets(items: list[str]) -> dict:
    """``section.key=value`` pairs, values read as YAML (5, 0.1, null, true)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            sys.exit(f"--set {item!r}: expected section.key=value")
        pairs[key] = yaml.safe_load(value)
    return pairs


def run_pair(recipe: str, change: dict, prepared: Path) -> dict:
    base = load_recipe(recipe, REPO)
    tag = "-".join(f"{k}={v}" for k, v in change.items())
    before = run_overrides(WORK / f"{recipe}-base", base, prepared)
    after = run_overrides(WORK / f"{recipe}-{tag}", base | change, prepared)
    return {"recipe": recipe, "change": change, "machine": machine(), "base": before, "changed": after}


def load_results() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | change | machine | test: recipe → changed | val: recipe → changed | train stage s | loop s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, c = r["base"], r["changed"]
        change = ", ".join(f"`{k}: {v}`" for k, v in r["change"].items())
        lines.append(
            f"| {r['recipe']} | {change} | {r['machine']} "
            f"| {100 * b['test_accuracy']:.2f}% → {100 * c['test_accuracy']:.2f}% "
            f"({100 * (c['test_accuracy'] - b['test_accuracy']):+.2f}) "
            f"| {100 * b['val_accuracy']:.2f}% → {100 * c['val_accuracy']:.2f}% "
            f"| {b['train_stage_seconds']:.0f} → {c['train_stage_seconds']:.0f} "
            f"| {b['train_loop_seconds']:.0f} → {c['train_loop_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?")
    ap.add_argument("--set", dest="sets", nargs="+", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--doc", action="store_true", help="write the accumulated results to docs/benchmarks.md")
    args = ap.parse_args()
    if args.recipe:
        if not args.sets:
            sys.exit("nothing to compare: give --set section.key=value")
        change = parse_sets(args.sets)  # a malformed --set fails before the data is prepared
        prepared = require_cifar10()
        WORK.mkdir(parents=True, exist_ok=True)
        result = run_pair(args.recipe, change, prepared)
        RESULTS.write_text(json.dumps([*load_results(), result], indent=1))
        print(json.dumps(result), flush=True)
    if args.doc:
        body = (
            "Each row: the committed recipe, then the same recipe with one change, one run after the other on the "
            "idle machine (CIFAR-10 from the shared JPEG copy: 45,000 train, 5,000 val, 10,000 test; train stage "
            "= the `classiflow train` process, start-up included).\n\n"
            + table(load_results())
            + "\n\n`python benchmarks/ablation.py <recipe> --set section.key=value`, then `--doc`."
        )
        write_section("ablation", "## One change at a time (`benchmarks/ablation.py`)\n\n" + body)
        print(body)


if __name__ == "__main__":
    main()
