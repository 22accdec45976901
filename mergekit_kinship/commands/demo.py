"""``mergekit-kinship demo``: the built-in family end to end, on CPU, in a few minutes.

1. build (or reuse) the toy family: a tiny Llama base, one child per skill, one grandchild;
2. print the kinship matrix (PCC of weight deltas) of every fine-tune of the base;
3. run a kinship-guided evolution on the family and write its report (:func:`run_evolution`).

Only click and the standard library are imported here; the engines load when the command runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


def run_evolution(family, out_dir: Path, *, progress: bool) -> dict | None:
    """EVOLUTION STEP: wire the evolution engine in here.

    Given the built ``family`` (:class:`mergekit_kinship.zoo.Family`) and the demo's ``out_dir``,
    run a kinship-guided evolution on ``family.models`` with base ``family.base``, scored with
    ``family.evaluation_settings()`` (include_path, tasks, metric "acc", zero-shot, fitness = mean),
    write its report under ``out_dir``, and return a JSON-able summary for ``--json`` (it should
    carry ``"report"``: the report's path, and ``"best"``: name and fitness). Budget: the whole
    demo must stay under 5 minutes on 2 CPU cores (family ~1 min, one lm-eval scoring ~1 s).

    Returns None while the evolution engine is not wired in; the demo then stops after step 2.
    """
    return None


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

    step("[2/3] kinship: PCC of weight deltas from the base")
    from mergekit_kinship.kinship import kinship_matrix

    names = list(family.models)
    matrix = kinship_matrix([str(p) for p in family.models.values()], str(family.base),
                            metrics=("pcc",), progress=not quiet)
    pcc = matrix.values["pcc"]
    kinship = {"names": names, "metric": "pcc", "values": pcc, "mean": matrix.mean("pcc")}
    (out_dir / "kinship.json").write_text(json.dumps(kinship, indent=2) + "\n")

    step("[3/3] evolution")
    evolution = run_evolution(family, out_dir, progress=not quiet)
    if evolution is None:
        step("      not available in this version: stopping after the kinship matrix")

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
    click.echo(f"Family {family.config_hash} at {family.root}")
    click.echo("Kinship (PCC of deltas from base):")
    click.echo(_matrix_table(names, pcc, family.parent))
    if evolution is not None:
        click.echo(f"Evolution report: {evolution.get('report')}")
    click.echo(f"Results in {out_dir.resolve()} ({summary['seconds']} s)")
    sys.stdout.flush()
