"""The classiflow command: one sub-command per stage of the table (what ``dvc repro`` calls), plus check,
promote, rollback, recipes, serve, predict, run, sweep and train-agent.

A stage command calls the stage's function directly and imports only what that stage needs: no Prefect,
and MLflow only once the stage starts. ``classiflow run`` runs the same functions as the Prefect
``train-flow`` (``flows/train.py``).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from classiflow.config import Params, load_params
from classiflow.errors import ClassiflowError
from classiflow.pipeline import STAGES, Stage

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err = Console(stderr=True)
ParamsFile = Annotated[str, typer.Option("--params", "-p", help="Parameter file.")]


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("classiflow")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err, show_path=False, show_time=False))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _user_errors(fn):
    """Turn user mistakes into one red line and exit status 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except ClassiflowError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _stage(stage: Stage) -> None:
    def run(params: ParamsFile = "params.yaml") -> None:
        from classiflow.tracking.stage import run_stage

        run_stage(stage.name, ".", load_params(params))

    run.__name__ = stage.name
    run.__doc__ = f"Run the {stage.name} stage in the current directory (what `dvc repro` calls)."
    app.command(stage.name)(_user_errors(run))


for _stage_entry in STAGES:
    _stage(_stage_entry)


@app.command("train-agent")
@_user_errors
def train_agent(params: ParamsFile = "params.yaml") -> None:
    """Lend this machine's train.processes to the train stage another node leads (train.nodes > 1)."""
    from classiflow.layout import Layout
    from classiflow.stages.train import join_as_agent

    join_as_agent(Layout.at("."), load_params(params))


@app.command()
@_user_errors
def check(params: ParamsFile = "params.yaml") -> None:
    """Validate the parameter file and print the resolved values."""
    cfg = load_params(params)
    Console().print_json(json.dumps(cfg.flat()))


def _model_name(cfg: Params, name: str | None) -> str:
    from classiflow.tracking.refs import default_name

    return name or default_name(cfg)


def _print_outcome(outcome: Any) -> None:
    out, d, dry = Console(highlight=False, soft_wrap=True), outcome.decision, outcome.dry_run
    name, v = outcome.name, outcome.version
    if outcome.action == "noop":
        out.print(f"{name} version {v}: {d.reason}", markup=False)
        return
    if outcome.action == "rollback":
        verb = "dry run: would roll back" if dry else "rolled back"
        out.print(f"{verb} {name} @champion from version {outcome.champion_before} to {v}", markup=False)
        return
    what = outcome.source or f"{name} version {v}"
    if outcome.action == "promote":
        copy = f"a copy in {name}" if dry else f"{name} version {outcome.champion_after}"
        copied = f" (copied as {copy})" if outcome.source else ""
        verb = "dry run: would promote" if dry else "promoted"
        out.print(f"{verb} {what} to @champion{copied}: {d.reason}", markup=False)
    else:
        verb = "dry run: would refuse" if dry else "not promoted:"
        out.print(f"{verb} {what}: {d.reason}", markup=False)

    def acc(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    p_value = "n/a" if d.p_value is None else f"{d.p_value:.4g} ({d.test}; discordant {d.b} vs {d.c} of {d.n})"
    champion = f"version {outcome.champion_before}" if outcome.champion_before else "none"
    latency = f"; latency {d.candidate_latency_ms} ms, budget {d.max_latency_ms:g}" if d.max_latency_ms else ""
    out.print(
        f"  accuracy {acc(d.candidate_accuracy)} vs champion ({champion}) {acc(d.champion_accuracy)}; "
        f"McNemar p={p_value}; policy {d.policy}, alpha {d.alpha:g}{latency}",
        markup=False,
    )


@app.command()
@_user_errors
def promote(
    name: Annotated[str | None, typer.Option(help="Registered model (default: from params).")] = None,
    version: Annotated[
        str | None, typer.Option(help="Version, @alias or models:/<name>/<version> (default: @challenger).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote whatever the gate says, across data hashes and models.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the decision; change and record nothing.")] = False,
    params: ParamsFile = "params.yaml",
) -> None:
    """Move @champion to a version that passes the gate (McNemar's test on the same test split).

    Exits 3 when the gate refuses (also with --dry-run), so it can gate a CI job.
    """
    from classiflow.tracking.aliases import promote as do_promote

    cfg = load_params(params)
    outcome = do_promote(cfg, _model_name(cfg, name), version, force, dry_run)
    _print_outcome(outcome)
    if not outcome.decision.promote:
        raise typer.Exit(3)


@app.command()
@_user_errors
def rollback(
    name: Annotated[str | None, typer.Option(help="Registered model (default: from params).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; change nothing.")] = False,
    params: ParamsFile = "params.yaml",
) -> None:
    """Give @champion back to the previous champion (repeat to walk further back)."""
    from classiflow.tracking.aliases import rollback as do_rollback

    cfg = load_params(params)
    _print_outcome(do_rollback(cfg, _model_name(cfg, name), dry_run))


@app.command()
@_user_errors
def recipes() -> None:
    """List the named training recipes (recipes/*.yaml)."""
    from rich.table import Table

    from classiflow.recipes import list_recipes

    table = Table("recipe", "description")
    for name, description in list_recipes().items():
        table.add_row(name, description)
    Console().print(table)


@app.command()
@_user_errors
def recipe(name: Annotated[str, typer.Argument(help="Recipe name, e.g. fast.")]) -> None:
    """Print a recipe as `dvc exp run` arguments: dvc exp run $(classiflow recipe fast)."""
    import shlex

    from classiflow.recipes import dvc_set_args, load_recipe

    print(" ".join(shlex.quote(a) for a in dvc_set_args(load_recipe(name))))


@app.command()
@_user_errors
def weights(
    out: Annotated[
        str, typer.Argument(help="Where to write the .safetensors file.")
    ] = "weights/tf_efficientnet_lite0.safetensors",
) -> None:
    """Write the EfficientNet-Lite0 ImageNet weights (installed with classiflow[lite0]) for model.pretrained."""
    from classiflow.models.lite0 import ARCH, write_lite0

    written = write_lite0(out)
    Console(highlight=False).print(
        f"{out}: {ARCH} ImageNet weights, licence {written['license']}, sha256 {written['sha256']}\n"
        f"use: -S model.name=timm/{ARCH} -S model.width=null -S model.pretrained={out}"
    )


# serve and predict live in classiflow/cli_serving.py (the slim serving image's whole CLI path)
from classiflow.cli_serving import predict, serve  # noqa: E402

app.command()(_user_errors(predict))
app.command()(_user_errors(serve))


def _parse_set(values: list[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ClassiflowError(f"--set {item!r}: expected key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@app.command()
@_user_errors
def run(
    set_: Annotated[list[str], typer.Option("--set", "-S", help="Override, e.g. -S train.epochs=2")] = [],  # noqa: B006
    recipe: Annotated[str | None, typer.Option(help="Apply a named recipe first (see `classiflow recipes`).")] = None,
    workdir: Annotated[str | None, typer.Option(help="Where the run writes (default runs/<flow run>).")] = None,
    params: ParamsFile = "params.yaml",
) -> None:
    """Run the whole pipeline as the Prefect train-flow (the API from PREFECT_API_URL, else ephemeral)."""
    from classiflow.recipes import load_recipe

    overrides = _parse_set(set_)
    load_params(params, (load_recipe(recipe) if recipe else {}) | overrides)
    train_flow = _flow("train.py:train_flow")
    result = train_flow(params_file=params, overrides=overrides, workdir=workdir, recipe=recipe)
    Console().print_json(json.dumps(result))


@app.command()
@_user_errors
def sweep(
    set_: Annotated[list[str], typer.Option("--set", "-S", help="Override, e.g. -S sweep.trials=4")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="Study name: the same name adds trials to it.")] = None,
    params: ParamsFile = "params.yaml",
) -> None:
    """Run the sweep section's Optuna study; its trials run as train-flow on the Prefect workers of PREFECT_API_URL."""
    import os

    from classiflow.sweep.study import check_space

    overrides = _parse_set(set_)
    check_space(load_params(params, overrides))
    if not os.environ.get("PREFECT_API_URL"):
        raise ClassiflowError(
            "classiflow sweep: its trials run on Prefect workers; set PREFECT_API_URL to the server they poll "
            "(README, Prefect)"
        )
    result = _flow("sweep.py:sweep_flow")(params_file=params, overrides=overrides, name=name)
    Console().print_json(json.dumps({k: v for k, v in result.items() if k != "trials"}, default=str))


def _flow(entrypoint: str) -> Any:
    """A flow of the project's ``flows/`` folder, loaded as Prefect loads a deployment's entrypoint."""
    from prefect.flows import load_flow_from_entrypoint

    from classiflow.layout import project_root

    path = project_root() / "flows" / entrypoint
    if not path.with_name(entrypoint.partition(":")[0]).is_file():
        raise ClassiflowError(f"{path.parent}: no flows here; run from the classiflow project folder")
    return load_flow_from_entrypoint(str(path))


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="classiflow")
