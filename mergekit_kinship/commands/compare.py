"""``mergekit-kinship compare``: strategies side by side at an equal number of merges."""

from __future__ import annotations

import json
import sys

import click


@click.command("compare")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Where to run each strategy (RUN_DIR/<strategy>); resumable like evolve.")
@click.option("--strategies", default="kinship,greedy,random", show_default=True,
              help="Comma-separated strategies to run on RECIPE.")
@click.option("--merges", type=click.IntRange(min=1),
              help="Merge budget of every run (and the count they are compared at).")
@click.option("--runs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Compare finished run directories instead of running RECIPE (repeatable).")
@click.option("--keep", type=click.Choice(["best", "survivors", "all"]), default="all",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def compare_cmd(recipe, run_dir, strategies, merges, runs, keep, as_json):
    """Compare strategies at an equal number of merges.

    Either run RECIPE once per strategy (into RUN_DIR/<strategy>), or read finished run
    directories given with --runs. Each run is judged by the best fitness among the foundation
    models and its first N children, N = --merges or the fewest merges any run made.
    """
    from mergekit_kinship.comparison import (
        compare_strategies, compare_summaries, comparison_table, read_summaries)
    from mergekit_kinship.errors import UserError

    if runs:
        if recipe:
            raise UserError("give either RECIPE (with --run-dir) or --runs, not both")
        comparison = compare_summaries(read_summaries(runs), merges)
    else:
        if not recipe or not run_dir:
            raise UserError("compare needs RECIPE and --run-dir, or --runs DIR ...")
        from mergekit_kinship.commands.evolve import prepare
        from mergekit_kinship.evolution import print_table

        names = [s.strip() for s in strategies.split(",") if s.strip()]
        for name in names:
            if name not in ("kinship", "greedy", "random"):
                raise UserError(f"--strategies: unknown strategy {name!r}")
        validated = prepare(recipe)
        comparison = compare_strategies(validated, run_dir, names, merges, keep=keep,
                                        on_generation=lambda s, r: print_table(s, r, sys.stderr))
    click.echo(json.dumps(comparison, indent=1) if as_json else comparison_table(comparison))
