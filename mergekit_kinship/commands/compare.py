"""``mergekit-kinship compare``: strategies side by side at an equal number of merges."""

from __future__ import annotations

import json
import sys

import click

from mergekit_kinship.commands.common import (
    evaluator_option, keep_option, no_progress_bars, quiet_option)


@click.command("compare")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Where to run each strategy (RUN_DIR/<strategy>); resumable like evolve.")
@click.option("--strategies", default="kinship,greedy,random", show_default=True,
              help="Comma-separated strategies to run on RECIPE.")
@click.option("--merges", type=click.IntRange(min=1),
              help="Merge budget of every run (and the count they are compared at).")
@click.option("--methods", metavar="M1,M2,...",
              help="Also vary the two-parent merge method: run every strategy with each of these "
                   "(e.g. slerp,task_arithmetic,ties; the recipe's own merge section for its "
                   "method, documented defaults for the others) into RUN_DIR/<method>/<strategy>.")
@click.option("--no-baselines", is_flag=True,
              help="Do not make the one-shot baselines (every foundation model merged at once "
                   "with each method of the recipe's references.baselines).")
@keep_option
@evaluator_option
@quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def compare_cmd(sources, run_dir, strategies, merges, methods, no_baselines, keep, evaluator,
                quiet, as_json):
    """Compare strategies at an equal number of merges.

    SOURCES is either one recipe file, run once per strategy into RUN_DIR/<strategy>
    (resumable), or finished run directories of `evolve`. Each run is judged by the best
    fitness among the foundation models and its first N children, N = --merges or the fewest
    merges any run made, and set against the references scored with the same evaluation: the
    base model itself and one-shot merges of all foundation models (TIES, DARE-TIES, linear,
    task arithmetic), which a recipe run makes once and shares by content.

    \b
      mergekit-kinship compare recipe.yaml --run-dir runs/cmp --merges 12
      mergekit-kinship compare recipe.yaml --run-dir runs/grid --merges 12 \\
          --strategies kinship,greedy --methods slerp,task_arithmetic,ties
      mergekit-kinship compare runs/kinship runs/greedy
    """
    if quiet:  # before any engine (and its progress-bar library) is imported
        click.get_current_context().with_resource(no_progress_bars())
    import os

    from mergekit_kinship.comparison import (
        compare_strategies, compare_summaries, comparison_table, read_summaries, run_labels)
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.planner import STRATEGIES

    dirs = [s for s in sources if os.path.isdir(s)]
    if dirs:
        if len(dirs) != len(sources):
            raise UserError("give either one recipe file (with --run-dir) or run directories")
        if methods:
            raise UserError("--methods: only with a recipe (finished runs already chose theirs)")
        comparison = compare_summaries(read_summaries(dirs), merges, run_dirs=run_labels(dirs))
    else:
        if len(sources) != 1 or not run_dir:
            raise UserError("compare needs one recipe file and --run-dir, or run directories")
        from mergekit_kinship.commands.common import check_evaluator, prepare
        from mergekit_kinship.tables import print_table

        names = list(dict.fromkeys(s.strip() for s in strategies.split(",") if s.strip()))
        if not names:
            raise UserError(f"--strategies: name at least one of {', '.join(STRATEGIES)}")
        for name in names:
            if name not in STRATEGIES:
                raise UserError(f"--strategies: unknown strategy {name!r} "
                                f"(one of {', '.join(STRATEGIES)})")
        method_names = None
        if methods is not None:
            method_names = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
            if not method_names:
                raise UserError("--methods: name at least one two-parent merge method")
        check_evaluator(evaluator)
        validated = prepare(sources[0])
        comparison = compare_strategies(validated, run_dir, names, merges, keep=keep,
                                        methods=method_names, baselines=not no_baselines,
                                        evaluator=evaluator, progress=not quiet,
                                        on_generation=lambda s, r: print_table(s, r, sys.stderr))
    click.echo(json.dumps(comparison, indent=1) if as_json else comparison_table(comparison))
