"""``mergekit-kinship evolve``: run the kinship-guided Top-k greedy merge loop to its stopping rule."""

from __future__ import annotations

import json
import sys

import click

from mergekit_kinship.commands.common import (
    evaluator_option, executor_option, keep_option, no_progress_bars, quiet_option,
    strategy_option)


@click.command("evolve")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: YAML, weights, scores, journal, summary.json.")
@strategy_option
@keep_option
@click.option("--max-generations", type=click.IntRange(min=1), help="Override stopping.max_generations.")
@click.option("--max-merges", type=click.IntRange(min=1), help="Override stopping.max_merges.")
@executor_option
@click.option("--address", help="[ray] Cluster to join (auto, host:6379, ray://host:10001); "
                                "default: the one running here, else start a local one.")
@click.option("--num-gpus", type=click.FloatRange(min=0),
              help="[ray] GPUs per child (default 1 if the cluster has GPUs, else 0).")
@click.option("--num-cpus", type=click.FloatRange(min=0, min_open=True),
              help="[ray] CPUs per child (default 1).")
@click.option("--retries", type=click.IntRange(min=0),
              help="[ray] Times a failing child is run again (default 2).")
@click.option("--baselines", is_flag=True,
              help="Also merge all foundation models at once with each one-shot baseline of "
                   "the recipe (references.baselines: TIES, DARE-TIES, linear, task "
                   "arithmetic) and score them: references, not pool members.")
@evaluator_option
@quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def evolve_cmd(recipe, run_dir, strategy, keep, max_generations, max_merges, executor, address,
               num_gpus, num_cpus, retries, baselines, evaluator, quiet, as_json):
    """Merge, score and select until the stopping rule: Algorithm 1 of arXiv 2410.12613.

    Prints a table per generation (child, parents, parents' kinship, scores, gain over the
    parents' mean and over the base model, best so far) and writes RUN_DIR/summary.json after
    every generation; it ends saying whether any child beat the base model (scored once as a
    reference unless the recipe's references.base is false) and, with --baselines, the best
    one-shot merge of all foundation models.
    Interrupt it at any time; running it again on the same RUN_DIR continues where it stopped,
    redoing no finished merge or evaluation.

    \b
      mergekit-kinship evolve recipe.yaml --run-dir runs/kinship
      mergekit-kinship evolve recipe.yaml --run-dir runs/greedy --strategy greedy --keep best
    """
    if quiet:  # before any engine (and its progress-bar library) is imported
        click.get_current_context().with_resource(no_progress_bars())
    from mergekit_kinship.commands.common import check_evaluator, prepare
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.evolution import evolve
    from mergekit_kinship.executors import get_executor
    from mergekit_kinship.tables import print_table, verdict_lines

    ray_options = {"address": address, "num_gpus": num_gpus, "num_cpus": num_cpus,
                   "retries": retries}
    ray_options = {k: v for k, v in ray_options.items() if v is not None}
    if executor != "ray" and ray_options:
        flags = ", ".join("--" + k.replace("_", "-") for k in ray_options)
        raise UserError(f"{flags}: only with --executor ray")
    check_evaluator(evaluator)
    work = get_executor(executor, **ray_options)  # connects to Ray only when the first job runs
    validated = prepare(recipe, strategy, max_generations, max_merges)
    table_stream = sys.stderr if as_json else sys.stdout
    try:
        summary = evolve(validated, run_dir, keep=keep, executor=work, evaluator=evaluator,
                         baselines=baselines, progress=not quiet,
                         on_generation=lambda s, r: print_table(s, r, table_stream))
    finally:
        if hasattr(work, "close"):
            work.close()
    best = summary.models[summary.best]
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=1))
    else:
        from mergekit_kinship.summary import summary_path

        click.echo(f"stopped: {summary.stopped} after {len(summary.generations)} generations, "
                   f"{summary.merges} merges; best {best.name} ({summary.best}) "
                   f"fitness {best.fitness:.4f} at {best.path or '(weights not kept)'}")
        for line in verdict_lines(summary):
            click.echo(line)
        click.echo(f"summary: {summary_path(run_dir).resolve()}")
