"""``mergekit-kinship demo``: the built-in family end to end, on CPU, in a few minutes.

1. build (or reuse) the toy family: a tiny Llama base, one child per skill, one grandchild;
2. print the kinship matrix (PCC of weight deltas) of every fine-tune of the base;
3. run a kinship-guided evolution on the family and write its report (:func:`run_evolution`).

Only click and the standard library are imported here; the engines load when the command runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import click


def demo_recipe(family) -> dict:
    """The demo's recipe: the paper's set-up (k = 3, kinship strategy, SLERP template) on the family.

    Built here rather than read from ``recipes/builtin-family.yaml``, which is not installed with
    the package; that file is the editable version (it stops at saturation 0.99, the demo at 0.95).
    """
    settings = family.evaluation_settings()
    return {
        "base": str(family.base),
        "models": [str(p) for p in family.models.values()],
        "top_k": 3,
        "strategy": "kinship",
        "metric": "pcc",
        "merge": {"method": "slerp", "dtype": "float32"},
        "evaluation": {
            "include_path": str(settings["include_path"]),
            "tasks": list(settings["tasks"]),
            "num_fewshot": settings.get("num_fewshot", 0),
            "batch_size": 32,
            "model_args": {"dtype": "float32"},
        },
        # The paper's saturation heuristic (§4.4): once the top-k are near copies of each other
        # (mutual PCC > 0.95) further merges only reshuffle them, so stop there.
        "stopping": {"max_generations": 8, "saturation": 0.95},
        "seed": 0,
    }


# Each library's documented switch for its progress bars, read when the library is imported.
_QUIET_ENVIRONMENT = {
    # The default of every tqdm bar's disable= (tqdm >= 4.66). lm-eval's request bars, which pass
    # disable=False themselves, follow it too (mergekit_kinship.evaluation.runner).
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars follow huggingface_hub's switch
}


@contextlib.contextmanager
def _no_progress_bars():
    """No progress bar at all, for ``--quiet``: each library's own process-level switch, set
    before the CLI imports any of them (the command group imports none) and restored on exit.
    Our own bars are off through ``progress=False``. No function of another library is replaced.
    In a process that imported tqdm earlier (a test's CliRunner) tqdm keeps the default it read
    then; the ``mergekit-kinship`` command is always a fresh process."""
    saved = {name: os.environ.get(name) for name in _QUIET_ENVIRONMENT}
    os.environ.update(_QUIET_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_evolution(family, out_dir: Path, *, progress: bool, table_stream) -> dict:
    """Kinship-guided evolution of the family in ``out_dir/run``, then its report.

    Resumable like any ``evolve`` run: a second demo reuses every finished merge and score.
    Returns a JSON-able summary with the best model and the report's path.
    """
    from mergekit_kinship.evolution import evolve, print_table
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.report import write_report

    from mergekit_kinship.zoo.train import single_threaded

    recipe = parse_recipe(demo_recipe(family), out_dir, source="demo recipe")
    run_dir = out_dir / "run"
    # Tiny models: torch's thread pool costs more than it saves (5-10x slower on busy cores).
    with single_threaded():
        summary = evolve(recipe, run_dir, keep="survivors", progress=progress,
                         on_generation=lambda s, r: print_table(s, r, table_stream))
    report = write_report(run_dir)
    best = summary["models"][summary["best"]]
    foundation = [m["fitness"] for m in summary["models"].values() if m["kind"] == "foundation"]
    return {
        "run_dir": str(run_dir.resolve()),
        "report": str(report),
        "stopped": summary["stopped"],
        "generations": len(summary["generations"]),
        "merges": summary["merges"],
        "best": {"id": summary["best"], "name": best["name"], "fitness": best["fitness"],
                 "path": best["path"]},
        "best_foundation_fitness": max(foundation),
    }


def _check_out_holds_this_family(family, out_dir: Path) -> None:
    """UserError, before anything under ``out_dir`` is written, when ``out_dir/run`` is the demo
    run of another family (another --seed or --family-dir): evolve would refuse it and offer a
    --run-dir, an option the demo does not have."""
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.evolution import check_run_dir_compatible
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.rundir import RunDir

    recipe = parse_recipe(demo_recipe(family), out_dir, source="demo recipe")
    try:
        check_run_dir_compatible(RunDir(out_dir / "run"), recipe)
    except UserError:
        raise UserError(f"--out {out_dir}: holds the demo run of another family (another --seed or "
                        f"--family-dir); choose another --out, or remove {out_dir / 'run'}") from None


def _matrix_table(names: list[str], values: list[list[float | None]], parent: dict[str, str]) -> str:
    width = max(len(n) for n in names)
    col = max(7, width)
    lines = [" " * width + "  " + " ".join(n.rjust(col) for n in names)]
    for name, row in zip(names, values):
        cells = ["—".rjust(col) if v is None else f"{v:+.3f}".rjust(col) for v in row]
        lines.append(name.ljust(width) + "  " + " ".join(cells))
    lines.append("")
    lines.append("parents: " + ", ".join(f"{n} <- {p}" for n, p in parent.items()))
    return "\n".join(lines)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kinship-demo"), show_default=True,
              help="Folder for the demo's results (kinship matrix, evolution run and report).")
@click.option("--family-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the family [default: the cache, $MERGEKIT_KINSHIP_CACHE or "
                   "~/.cache/mergekit-kinship]. A finished family of the same recipe is reused.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the family build.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_cmd(out_dir: Path, family_dir: Path | None, seed: int, as_json: bool, quiet: bool):
    """Build the built-in toy family and show its kinship, then evolve merges on it.

    The family is a tiny Llama base (~250k parameters, character tokenizer) pre-trained briefly on
    four string skills (reverse, sort, rotate, shift), one child fine-tuned on each skill, and a
    grandchild; each skill is a local lm-eval multiple-choice task. Everything runs offline on CPU.
    """
    from mergekit_kinship.errors import UserError

    if quiet:  # first: the libraries read their switches when imported
        click.get_current_context().with_resource(_no_progress_bars())

    def step(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    started = time.perf_counter()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out_dir}: cannot create the folder ({err.strerror})") from err

    step("[1/3] family: building or reusing (about a minute the first time)")
    from mergekit_kinship.zoo import build_family

    family = build_family(family_dir, seed=seed, progress=not quiet)
    step(f"      {family.root}")
    _check_out_holds_this_family(family, out_dir)

    step("[2/3] kinship: PCC of weight deltas from the base")
    from mergekit_kinship.streaming_kinship import kinship_matrix

    names = list(family.models)
    matrix = kinship_matrix([str(p) for p in family.models.values()], str(family.base),
                            metrics=("pcc",), progress=not quiet)
    pcc = matrix.values["pcc"]
    kinship = {"names": names, "metric": "pcc", "values": pcc, "mean": matrix.mean("pcc")}
    (out_dir / "kinship.json").write_text(json.dumps(kinship, indent=2) + "\n")

    step("[3/3] evolution")
    if not as_json:  # the matrix comes first on stdout, then a table per generation
        click.echo(f"Family {family.config_hash} at {family.root}")
        click.echo("Kinship (PCC of deltas from base):")
        click.echo(_matrix_table(names, pcc, family.parent) + "\n")
    evolution = run_evolution(family, out_dir, progress=not quiet,
                              table_stream=sys.stderr if as_json else sys.stdout)

    summary = {
        "family": {
            "root": str(family.root),
            "config_hash": family.config_hash,
            "base": str(family.base),
            "models": {n: str(p) for n, p in family.models.items()},
            "parent": family.parent,
            "skill_of": family.skill_of,
            "tasks_dir": str(family.tasks_dir),
            "task_names": family.task_names,
        },
        "kinship": kinship,
        "evolution": evolution,
        "out": str(out_dir.resolve()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    best = evolution["best"]
    click.echo(f"Evolution stopped ({evolution['stopped']}) after {evolution['generations']} "
               f"generations, {evolution['merges']} merges.")
    click.echo(f"Best: {best['name']} fitness {best['fitness']:.4f} "
               f"(best foundation model {evolution['best_foundation_fitness']:.4f})")
    click.echo(f"Report: {evolution['report']}")
    click.echo(f"Results in {out_dir.resolve()} ({summary['seconds']} s)")
    sys.stdout.flush()
