"""``mergekit-kinship plan``: the next generation as standard mergekit YAML; executes nothing."""

from __future__ import annotations

import json

import click

from mergekit_kinship.commands.common import evaluator_option, strategy_option


@click.command("plan")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Run directory (shared with evolve); the plan goes to RUN_DIR/plan/gen-N/. "
                   "Needed unless --dry-run.")
@click.option("--scores", "scores_file", type=click.Path(dir_okay=False, exists=True),
              help="Scores (and merged folders) of models you evaluated elsewhere.")
@strategy_option
@click.option("--dry-run", is_flag=True,
              help="Only run evolve's pre-flight (schema, models' configs and tensor headers, "
                   "merge template, lm-eval tasks, run directory); no weights are read.")
@evaluator_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan_cmd(recipe, run_dir, scores_file, strategy, dry_run, evaluator, as_json):
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
    from mergekit_kinship.commands.common import check_evaluator, prepare
    from mergekit_kinship.errors import UserError

    check_evaluator(evaluator)
    validated = prepare(recipe, strategy)
    if dry_run:
        from mergekit_kinship.dry_run import dry_run as run_dry

        report = run_dry(validated, recipe, run_dir=run_dir, evaluator=evaluator)
        click.echo(json.dumps(report, indent=1) if as_json else report["text"])
        return
    if not run_dir:
        raise UserError("--run-dir: needed to plan (only --dry-run works without one)")
    from pathlib import Path

    from mergekit_kinship.planning import plan_next

    plan = plan_next(validated, run_dir, scores_file=Path(scores_file) if scores_file else None,
                     evaluator=evaluator)
    if as_json:
        click.echo(json.dumps(plan, indent=1))
        return
    click.echo(f"generation {plan['generation']}: {len(plan['children'])} children "
               f"(strategy {plan['strategy']})")
    from mergekit_kinship.formatting import text_table

    rows = [[c["name"], " x ".join(c["parent_names"]) + (" (explore)" if c["exploration"] else ""),
             ", ".join(f"{k} {v:.4f}" for k, v in (c["parents_kinship"] or {}).items()),
             c["yaml_file"]] for c in plan["children"]]
    if rows:
        table = text_table(["child", "parents", "kinship of parents", "mergekit YAML"], rows)
        click.echo("\n".join("  " + line for line in table.splitlines()))
    if not plan["children"]:
        click.echo("  no untried pair left: the search has converged")
