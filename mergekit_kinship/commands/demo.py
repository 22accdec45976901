"""``mergekit-kinship demo``: the built-in family end to end, on CPU, in a few minutes.

1. build (or reuse) the toy family: a tiny Llama base, one child per skill, one grandchild;
2. print the kinship matrix (PCC of weight deltas) of every fine-tune of the base;
3. run a kinship-guided evolution on the family and write its report (:func:`run_evolution`).

The evolution's recipe is the built-in one (``mergekit_kinship/zoo/builtin-family.yaml``) with
the family's paths put in by :func:`mergekit_kinship.zoo.builtin_recipe`, the same recipe that
``build_family`` writes into the family folder for ``plan`` and ``evolve``; the demo overrides
nothing else.

Only click and the standard library are imported here; the engines load when the command runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from mergekit_kinship.commands.common import no_progress_bars


def run_evolution(family, out_dir: Path, *, progress: bool, table_stream) -> dict:
    """Kinship-guided evolution of the family in ``out_dir/run``, then its report.

    Resumable like any ``evolve`` run: a second demo reuses every finished merge and score.
    Returns a JSON-able summary with the best model and the report's path.
    """
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.report import write_report
    from mergekit_kinship.tables import print_table, verdict_lines
    from mergekit_kinship.zoo import builtin_recipe
    from mergekit_kinship.zoo.train import single_threaded

    recipe = parse_recipe(builtin_recipe(family), out_dir, source="built-in recipe")
    run_dir = out_dir / "run"
    # Tiny models: torch's thread pool costs more than it saves (5-10x slower on busy cores).
    with single_threaded():
        summary = evolve(recipe, run_dir, keep="survivors", progress=progress,
                         on_generation=lambda s, r: print_table(s, r, table_stream))
    report = write_report(run_dir)
    best = summary.models[summary.best]
    return {
        "run_dir": str(run_dir.resolve()),
        "report": str(report),
        "stopped": summary.stopped,
        "generations": len(summary.generations),
        "merges": summary.merges,
        "best": {"id": summary.best, "name": best.name, "fitness": best.fitness,
                 "path": best.path},
        "best_foundation_fitness": summary.best_foundation_fitness(),
        "base_fitness": summary.base_reference().fitness if summary.base_reference() else None,
        "verdict": verdict_lines(summary),
    }


def _check_out_holds_this_family(family, out_dir: Path) -> None:
    """UserError, before anything under ``out_dir`` is written, when ``out_dir/run`` is the demo
    run of another family (another --seed or --family-dir): evolve would refuse it and offer a
    --run-dir, an option the demo does not have."""
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.preflight import check_run_dir_compatible
    from mergekit_kinship.recipe import parse_recipe
    from mergekit_kinship.rundir import RunDir
    from mergekit_kinship.zoo import builtin_recipe

    recipe = parse_recipe(builtin_recipe(family), out_dir, source="built-in recipe")
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
        click.get_current_context().with_resource(no_progress_bars())

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
    from mergekit_kinship.atomic_io import write_json

    write_json(out_dir / "kinship.json", kinship, indent=2)

    step("[3/3] evolution")
    if not as_json:  # the matrix comes first on stdout, then a table per generation
        click.echo(f"Family {family.config_hash} at {family.root} "
                   f"(its recipe for plan and evolve: {family.root / 'recipe.yaml'})")
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
    for line in evolution["verdict"]:
        click.echo(line[0].upper() + line[1:] + ".")
    click.echo(f"Report: {evolution['report']}")
    click.echo(f"Results in {out_dir.resolve()} ({summary['seconds']} s)")
    sys.stdout.flush()
