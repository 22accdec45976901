"""``mergekit-kinship plan``: the next generation as standard mergekit YAML; executes nothing."""

from __future__ import annotations

import json

import click


@click.command("plan")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False),
              help="Run directory (shared with evolve); the plan goes to RUN_DIR/plan/gen-N/.")
@click.option("--scores", "scores_file", type=click.Path(dir_okay=False, exists=True),
              help="Scores (and merged folders) of models you evaluated elsewhere.")
@click.option("--strategy", type=click.Choice(["kinship", "greedy", "random"]),
              help="Override the recipe's strategy.")
@click.option("--dry-run", is_flag=True,
              help="Only validate the recipe (schema, merge template, tasks); no weights are read.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan_cmd(recipe, run_dir, scores_file, strategy, dry_run, as_json):
    """Plan the next generation from the pool's kinship and the scores known so far.

    Writes one mergekit YAML per child (absolute paths, a comment header with its lineage; run
    each with `mergekit-yaml FILE OUT_DIR`) and RUN_DIR/plan/gen-N/plan.json. After merging and
    evaluating them elsewhere, give their folders and scores with --scores FILE and plan again:

    \b
      format: 1
      models:
        <foundation name>: {scores: {<task>: 0.61, ...}}
        g1-1: {path: /merged/g1-1, scores: {<task>: 0.66, ...}}
    """
    if dry_run:
        from mergekit_kinship.evolution import dry_run

        report = dry_run(recipe, strategy)
        click.echo(json.dumps(report, indent=1) if as_json else report["text"])
        return
    from pathlib import Path

    from mergekit_kinship.commands.evolve import prepare
    from mergekit_kinship.evolution import plan_next

    validated = prepare(recipe, strategy)
    plan = plan_next(validated, run_dir, scores_file=Path(scores_file) if scores_file else None)
    if as_json:
        click.echo(json.dumps(plan, indent=1))
        return
    click.echo(f"generation {plan['generation']}: {len(plan['children'])} children "
               f"(strategy {plan['strategy']})")
    for c in plan["children"]:
        kin = ", ".join(f"{k} {v:.4f}" for k, v in (c["parents_kinship"] or {}).items())
        click.echo(f"  {c['name']}  {' x '.join(c['parent_names'])}"
                   f"{' (explore)' if c['exploration'] else ''}  {kin}  -> {c['yaml_file']}")
    if not plan["children"]:
        click.echo("  no untried pair left: the search has converged")
