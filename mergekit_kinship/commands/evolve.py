"""``mergekit-kinship evolve``: run the kinship-guided Top-k greedy merge loop to its stopping rule."""

from __future__ import annotations

import json
import os
import sys

import click


def prepare(recipe_path: str, strategy: str | None = None, max_generations: int | None = None,
            max_merges: int | None = None):
    """Load and validate a recipe for a run (overrides from flags); checks models and tasks."""
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.recipe import load_recipe, missing_local_models

    recipe = load_recipe(recipe_path)
    updates = {}
    if strategy is not None:
        updates["strategy"] = strategy
    stopping = {}
    if max_generations is not None:
        stopping["max_generations"] = max_generations
    if max_merges is not None:
        stopping["max_merges"] = max_merges
    if stopping:
        updates["stopping"] = recipe.stopping.model_copy(update=stopping)
    if updates:
        recipe = recipe.model_copy(update=updates)
        from mergekit_kinship.recipe import check_top_k

        check_top_k(recipe, "--max-merges" if max_merges is not None else recipe_path)
    missing = missing_local_models(recipe)
    if missing:
        raise UserError(f"{recipe_path}: not a model folder (no config.json): {missing[0]}")
    # A stand-in evaluator (tests) knows its own tasks; lm-eval validates real ones up front.
    if not os.environ.get("MERGEKIT_KINSHIP_EVALUATOR"):
        from mergekit_kinship.evaluation import validate_evaluation

        validate_evaluation(recipe.evaluation)
    return recipe


@click.command("evolve")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: YAML, weights, scores, journal, summary.json.")
@click.option("--strategy", type=click.Choice(["kinship", "greedy", "random"]),
              help="Override the recipe's strategy.")
@click.option("--keep", type=click.Choice(["best", "survivors", "all"]), default="all",
              show_default=True, help="Which children's weights stay on disk when the run stops.")
@click.option("--max-generations", type=click.IntRange(min=1), help="Override stopping.max_generations.")
@click.option("--max-merges", type=click.IntRange(min=1), help="Override stopping.max_merges.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where children are merged and scored: here one after another, or a "
                   "generation at once on a Ray cluster (pip install \"mergekit-kinship[ray]\").")
@click.option("--address", help="[ray] Cluster to join (auto, host:6379, ray://host:10001); "
                                "default: the one running here, else start a local one.")
@click.option("--num-gpus", type=click.FloatRange(min=0),
              help="[ray] GPUs per child (default 1 if the cluster has GPUs, else 0).")
@click.option("--num-cpus", type=click.FloatRange(min=0, min_open=True),
              help="[ray] CPUs per child (default 1).")
@click.option("--retries", type=click.IntRange(min=0),
              help="[ray] Times a failing child is run again (default 2).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def evolve_cmd(recipe, run_dir, strategy, keep, max_generations, max_merges, executor, address,
               num_gpus, num_cpus, retries, as_json):
    """Merge, score and select until the stopping rule: Algorithm 1 of arXiv 2410.12613.

    Prints a table per generation (child, parents, parents' kinship, scores, gain over the
    parents' mean, best so far) and writes RUN_DIR/summary.json after every generation.
    Interrupt it at any time; running it again on the same RUN_DIR continues where it stopped,
    redoing no finished merge or evaluation.
    """
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.evolution import evolve, print_table
    from mergekit_kinship.executors import get_executor

    ray_options = {"address": address, "num_gpus": num_gpus, "num_cpus": num_cpus,
                   "retries": retries}
    ray_options = {k: v for k, v in ray_options.items() if v is not None}
    if executor != "ray" and ray_options:
        flags = ", ".join("--" + k.replace("_", "-") for k in ray_options)
        raise UserError(f"{flags}: only with --executor ray")
    work = get_executor(executor, **ray_options)  # connects to Ray only when the first job runs
    validated = prepare(recipe, strategy, max_generations, max_merges)
    table_stream = sys.stderr if as_json else sys.stdout
    try:
        summary = evolve(validated, run_dir, keep=keep, executor=work,
                         on_generation=lambda s, r: print_table(s, r, table_stream))
    finally:
        if hasattr(work, "close"):
            work.close()
    best = summary["models"][summary["best"]]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        click.echo(f"stopped: {summary['stopped']} after {len(summary['generations'])} generations, "
                   f"{summary['merges']} merges; best {best['name']} ({summary['best']}) "
                   f"fitness {best['fitness']:.4f} at {best['path'] or '(weights not kept)'}")
        click.echo(f"summary: {os.path.join(os.path.abspath(run_dir), 'summary.json')}")
