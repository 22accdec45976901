"""``mergekit-kinship check MERGE.yaml``: diagnose an existing mergekit config before merging it."""

from __future__ import annotations

import json

import click

from mergekit_kinship.config_check import CONFLICT_THRESHOLD
from mergekit_kinship.findings import PAPER_SATURATION


@click.command("check")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--base", "-b", default=None, metavar="BASE",
              help="The shared ancestor (folder or hub id). Default: the config's base_model when "
                   "its method takes deltas from it (ties, task_arithmetic, dare_*, ...).")
@click.option("--saturation", type=float, default=PAPER_SATURATION, show_default=True,
              help="PCC above which two models are near-duplicates (the paper's §4.4).")
@click.option("--conflict", type=float, default=CONFLICT_THRESHOLD, show_default=True,
              help="Sign conflict from which two models' deltas are strongly conflicting.")
@click.option("--include", multiple=True, metavar="GLOB", help="Compare only matching tensors, repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out matching tensors, repeatable.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check_cmd(config, base, saturation, conflict, include, exclude, device, quiet, as_json):
    """Kinship of the models the mergekit CONFIG merges, before merging: their pairwise matrix
    (pcc, cosine, euclidean, sign_conflict) and one line per pair on what the paper's findings
    suggest: near-duplicates (a merge unlikely to gain) and strongly conflicting deltas (where a
    sign-consensus method such as ties may fit better than slerp or linear).

    Reads the config with mergekit's own schema (models:, slices: with layer ranges, modules:),
    each model's headers, then its weights once; merges nothing. Paths are relative to the
    working directory, as for mergekit-yaml.
    """
    from mergekit_kinship.commands.kinship import matrix_tables
    from mergekit_kinship.config_check import check_config

    result = check_config(config, base, saturation=saturation, conflict=conflict,
                          include=include or None, exclude=exclude or None, device=device,
                          progress=not quiet)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    matrix = result.matrix
    click.echo(f"check of {result.config}: {result.method} of {len(result.models)} models, "
               f"ancestor {result.ancestor} ({result.ancestor_source})")
    click.echo(f"{matrix.n_params:,} parameters in {matrix.n_tensors} tensors")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(matrix_tables(matrix))
    click.echo("")
    click.echo(f"what the paper's findings suggest (near-duplicates: PCC above {result.saturation:.2f}; "
               f"strongly conflicting: sign conflict from {result.conflict_threshold:.2f}):")
    for pair in result.pairs:
        click.echo(f"  {pair.a} × {pair.b}: {pair.advice}")
