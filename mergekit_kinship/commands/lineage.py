"""``mergekit-kinship lineage MODELS... --base BASE``: what each model most likely is, from its weights.

Only click is imported here; the engine (torch, the sketches) loads when the command runs.
"""

from __future__ import annotations

import json
import os

import click


@click.command("lineage")
@click.argument("models", nargs=-1, required=True)
@click.option("--base", "-b", required=True, metavar="BASE", help="The common base model (folder or hub id).")
@click.option("--json", "as_json", is_flag=True, help=(
    "Print JSON: one entry per model given (path as given, parents, evidence, edges)."))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw the tree to this image file (.png, .svg or .pdf).")
@click.option("--sketch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="CountSketch entries per model [default: 262144; a smaller model is compared exactly].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def lineage_cmd(models, base, as_json, plot_path, sketch_size, quiet):
    """What each of MODELS most likely is: a fine-tune of BASE, a fine-tune of another listed
    model, a merge of listed models (with their proportions), or unrelated; ambiguous where the
    weights fit two explanations equally well (then both are shown, none is guessed).

    Read from each model's delta sketch (made once, cached by content like matrix --sketch): a
    merge is a fit of its delta on two listed models' deltas, tensor by tensor, with the residual
    as evidence; a fine-tune carries its parent's whole delta plus an update of its own.
    """
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.lineage_tree import counts_line, lineage_text
    from mergekit_kinship.model_lineage import model_lineage

    if plot_path and not plot_path.lower().endswith((".png", ".svg", ".pdf")):
        raise UserError(f"--plot {plot_path}: give a .png, .svg or .pdf file name")
    folder = os.path.dirname(os.path.abspath(plot_path)) if plot_path else None
    if folder and not os.path.isdir(folder):
        raise UserError(f"--plot {plot_path}: no such folder {folder}")
    params = None
    if sketch_size is not None:
        from mergekit_kinship.sketch import SketchParams

        params = SketchParams(size=sketch_size)
    from mergekit_kinship.commands.kinship import _warn_on_stderr

    result = _warn_on_stderr(lambda: model_lineage(list(models), base, params=params,
                                                   progress=not quiet))
    base_name = os.path.basename(os.path.normpath(base)) or base
    if plot_path:
        from mergekit_kinship.lineage_figure import plot_lineage

        try:
            plot_lineage(result, plot_path, base_name)
        except OSError as err:
            raise UserError(f"cannot write {plot_path}: {err.strerror or err}") from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        how = ("exactly (every model fits in its sketch)" if result.exact else
               f"from sketches of {result.sketch['entries']:,} entries (each edge's cross_noise in --json)")
        n = len(result.models)
        click.echo(f"lineage of {n} model{'s' * (n != 1)} (deltas from {base_name}), {how}; "
                   f"read {len(result.read)}, {len(result.models) - len(result.read)} sketches cached")
        click.echo(counts_line(result))
        click.echo("")
        click.echo(lineage_text(result, base_name))
    if plot_path:
        click.echo(f"wrote the tree to {plot_path}", err=True)
