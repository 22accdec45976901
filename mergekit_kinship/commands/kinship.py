"""``mergekit-kinship kinship`` and ``mergekit-kinship matrix``: kinship of fine-tunes of one base.

Only click and the package's pure modules (metric names, formatting) are imported here; the engine
(torch) loads when a command runs.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import click

from mergekit_kinship.formatting import metric_value, text_table
from mergekit_kinship.metrics import ALIASES, DEFAULT_METRICS, METRICS


def _metric_help() -> str:
    names = []
    for metric in METRICS:
        aliases = [a for a, c in ALIASES.items() if c == metric]
        names.append(f"{metric} ({', '.join(aliases)})" if aliases else metric)
    return (f"Comma-separated metrics: {', '.join(names)}; 'all' for every one (sign_conflict "
            f"is not in the default: on a CPU it adds 15-35% to a pass).")


_METRIC_HELP = _metric_help()
_PATTERN_HELP = "Glob pattern on tensor names, repeatable."


def _selection_options(fn):
    fn = click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(fn)
    fn = click.option("--exclude", multiple=True, metavar="GLOB", help=(
        "Leave out matching tensors. " + _PATTERN_HELP + " E.g. --exclude 'lm_head.*' --exclude '*embed_tokens*'."))(fn)
    fn = click.option("--include", multiple=True, metavar="GLOB", help=(
        "Compare only matching tensors. " + _PATTERN_HELP + " E.g. --include '*self_attn*' --include '*mlp*'."))(fn)
    fn = click.option("--metric", "-m", default=",".join(DEFAULT_METRICS), show_default=True, help=_METRIC_HELP)(fn)
    fn = click.option("--base", "-b", required=True, metavar="BASE", help="The common base model (folder or hub id).")(fn)
    return fn


def _warn_on_stderr(run):
    """Run ``run()`` and print the engine's warnings as one 'Warning: ...' line each on stderr."""
    from mergekit_kinship.streaming_kinship import KinshipWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KinshipWarning)
        result = run()
    for w in caught:
        if issubclass(w.category, KinshipWarning):
            click.echo(f"Warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Names in the first column, numbers right-aligned in the others."""
    return text_table(header, rows, align_right=range(1, len(header)))


def matrix_tables(result) -> str:
    """One table per metric of a KinshipMatrix, each under its name and mean over pairs; a
    sketched matrix's values each with their bound (``0.3720 ± 0.0040``)."""
    from mergekit_kinship.sketch_estimates import with_bound

    bounds = getattr(result, "bounds", None)
    parts = []
    for m in result.metrics:
        rows = []
        for i, (name, row) in enumerate(zip(result.names, result.values[m])):
            cells = ([with_bound(v, b, m) if i != j else metric_value(v, m)
                      for j, (v, b) in enumerate(zip(row, bounds[m][i]))] if bounds
                     else [metric_value(v, m) for v in row])
            rows.append([name, *cells])
        parts += ["", f"{m}  (mean over pairs {metric_value(result.mean(m), m)})", _table(["", *result.names], rows)]
    return "\n".join(parts)


@click.command("kinship")
@click.argument("model_a")
@click.argument("model_b")
@_selection_options
@click.option("--breakdown", type=click.Choice(["layer", "module"]), default=None,
              help="Also show kinship per transformer layer, or per module kind (attention, mlp, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def kinship_cmd(model_a, model_b, base, metric, include, exclude, quiet, device, breakdown, as_json):
    """Kinship of MODEL_A and MODEL_B: similarity of their weight deltas from BASE.

    pcc and cosine are in [-1, 1] (higher: more related); euclidean is the distance between the
    deltas (lower: more related); sign_conflict is the fraction of the weights changed by both
    models whose changes have opposite signs (lower: more related; about 0.5 for unrelated
    deltas). Values are global over every compared weight.
    """
    from mergekit_kinship.streaming_kinship import kinship

    result = _warn_on_stderr(lambda: kinship(
        model_a, model_b, base, metrics=metric, include=include or None, exclude=exclude or None,
        breakdown=breakdown, device=device, progress=not quiet,
    ))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(
        f"kinship of {result.model_a} and {result.model_b} (deltas from {result.base}): "
        f"{result.n_params:,} parameters in {result.n_tensors} tensors"
    )
    click.echo(_table(["metric", "value"], [[m, metric_value(result.values[m], m)] for m in result.metrics]))
    if result.breakdown:
        click.echo("")
        rows = [
            [group, f"{entry['params']:,}", *[metric_value(entry[m], m) for m in result.metrics]]
            for group, entry in result.breakdown.items()
        ]
        click.echo(_table([breakdown, "params", *result.metrics], rows))


@click.command("matrix")
@click.argument("models", nargs=-1, required=True)
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the matrix to this CSV file (one row per metric and model).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw an annotated heatmap to this image file (e.g. kinship.png).")
@click.option("--sketch", is_flag=True, help=(
    "From delta sketches: each value with its error bound; models whose sketch is cached "
    "(~/.cache/mergekit-kinship/sketches) are not read again."))
@click.option("--sketch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="CountSketch entries per model with --sketch [default: 262144]; bounds shrink as 1/sqrt.")
def matrix_cmd(models, base, metric, include, exclude, quiet, device, as_json, csv_path, plot_path,
               sketch, sketch_size):
    """Kinship matrix of two or more MODELS, all as deltas from BASE.

    Each model is read once, however many pairs there are. The matrix's mean over pairs is the
    paper's kinship of the whole group. With --sketch, from each model's delta sketch (made
    once, cached by content): adding a model to a sketched family reads that model only.
    """
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.metrics import parse_metrics
    from mergekit_kinship.streaming_kinship import kinship_matrix

    parse_metrics(metric)  # an unknown metric fails before anything else
    if len(models) < 2:
        raise UserError(f"matrix needs at least two models, got {len(models)}")
    if plot_path and not plot_path.lower().endswith((".png", ".pdf", ".svg", ".jpg", ".jpeg")):
        raise UserError(f"--plot {plot_path}: give a .png, .pdf, .svg or .jpg file name")
    for option, path in (("--csv", csv_path), ("--plot", plot_path)):
        # click checks only a file that exists: a missing folder would fail after the whole read
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise UserError(f"{option} {path}: no such folder {folder}")
    if sketch_size is not None and not sketch:
        raise UserError("--sketch-size: only with --sketch")
    params = True
    if sketch_size is not None:
        from mergekit_kinship.sketch import SketchParams

        params = SketchParams(size=sketch_size)
    result = _warn_on_stderr(lambda: kinship_matrix(
        list(models), base, metrics=metric, include=include or None, exclude=exclude or None,
        device=device, progress=not quiet, sketch=params if sketch else False,
    ))
    try:
        if csv_path:
            with open(csv_path, "w", encoding="utf-8") as fh:
                fh.write(result.csv_text())
        if plot_path:
            from mergekit_kinship.heatmap import plot_matrix

            plot_matrix(result, plot_path)
    except OSError as err:
        raise UserError(f"cannot write {err.filename or csv_path or plot_path}: {err.strerror or err}") from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(
            f"kinship matrix of {len(result.names)} models (deltas from {result.base}): "
            f"{result.n_params:,} parameters in {result.n_tensors} tensors"
        )
        if sketch:
            exact = " (exact: each model fits in it)" if result.sketch["exact"] else ""
            cached = len(result.names) - len(result.read)
            click.echo(f"from sketches of {result.sketch['entries']:,} entries{exact}; read "
                       f"{len(result.read)} models, {cached} sketches were cached; ± is each "
                       f"value's error bound (4 standard deviations)")
        click.echo(matrix_tables(result))
    for path, what in ((csv_path, "csv"), (plot_path, "heatmap")):
        if path:
            click.echo(f"wrote {what} to {path}", err=True)
    sys.stdout.flush()
