"""``mergekit-kinship card``: the model card of a run's child (``card RUN_DIR CHILD``) or of any
merged model folder (``card MODEL_DIR``), optionally pushed to the Hub."""

from __future__ import annotations

import click


@click.command("card")
@click.argument("path", metavar="RUN_DIR|MODEL_DIR", type=click.Path(file_okay=False))
@click.argument("child", metavar="[CHILD]", required=False)
@click.option("--base", metavar="MODEL",
              help="MODEL_DIR only: the shared ancestor the kinship is measured against (path or "
                   "hub id) [default: the config's base_model when its method takes one].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Where to write the card [default: README.md in the model's folder; for a "
                   "child whose weights were not kept, RUN_DIR/cards/CHILD/README.md].")
@click.option("--push-to-hub", "repo_id", metavar="REPO",
              help="Upload the model (weights, tokenizer and card) to this Hub repo (owner/name).")
@click.option("--private", is_flag=True, help="Create the Hub repo as private (with --push-to-hub).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (MODEL_DIR's kinship pass).")
def card_cmd(path, child, base, out_path, repo_id, private, as_json, quiet):
    """Write a Hub model card (README.md).

    \b
    card RUN_DIR CHILD   a child of a run (an id or display name from RUN_DIR/summary.json):
                         its hub ancestors as base_model, its lm-eval scores as a model-index,
                         its whole lineage with every merge's parents' kinship, its scores
                         against its parents', the lineage file that rebuilds it from the
                         foundation models (also written to RUN_DIR/lineage/) and its own YAML.
    card MODEL_DIR       a folder mergekit-yaml or mergekit-multi merged into: its inputs'
                         kinship, pairwise and with the merged model (from kinship.json when
                         present, else measured), the inputs' hub ids as base_model; an existing
                         README.md is updated in place, only our own section is rewritten.
    """
    import json
    from pathlib import Path

    from mergekit_kinship.errors import UserError
    from mergekit_kinship.hub_push import push_to_hub
    from mergekit_kinship.merged_card import is_merged_model
    from mergekit_kinship.summary import summary_path

    if private and not repo_id:
        raise UserError("--private applies to --push-to-hub only; add --push-to-hub owner/name")
    folder = Path(path)
    if child is None:
        if summary_path(folder).is_file():
            raise UserError(f"{folder} is a run directory: name the model, `card {path} CHILD` "
                            f"(an id or display name from its summary.json)")
        if not is_merged_model(folder):
            raise UserError(f"{folder}: neither a merged model folder (no mergekit_config.yml) "
                            f"nor a run directory with a CHILD to card")
        from mergekit_kinship.merged_card import write_merged_card

        written = write_merged_card(folder, base, out_path=out_path, progress=not quiet)
        model, name, model_dir = str(folder), folder.resolve().name, folder
    else:
        if base is not None:
            raise UserError("--base applies to a merged model folder (card MODEL_DIR) only: a "
                            "run's shared base is in its summary")
        written, model, name, model_dir = _run_child_card(folder, child, out_path)
    url = push_to_hub(written, repo_id, model_dir=model_dir, private=private) if repo_id else None
    if as_json:
        click.echo(json.dumps({"model": model, "card": str(written), "pushed_to": url}))
    else:
        click.echo(f"card of {name} written to {written}")
        if url:
            click.echo(f"pushed to {url}")


def _run_child_card(run_dir, child, out_path):
    """Write the card (and, for a child, its lineage file) of CHILD of the run in ``run_dir``.
    Returns (card path, model id, display name, its weights' folder or None)."""
    from pathlib import Path

    from mergekit_kinship.card import default_card_path, write_card
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.lineage_file import write_lineage
    from mergekit_kinship.summary import load_summary

    summary = load_summary(run_dir)
    model_id = summary.find(child)
    model = summary.models[model_id]
    target = Path(out_path) if out_path else default_card_path(run_dir, summary, model_id)
    if model.kind == "child" and model.yaml:  # a run older than lineage files gets them here
        try:
            write_lineage(run_dir, summary, model_id)
        except ValueError:
            pass  # its YAML and the summary disagree: the card says there is no lineage file
        except OSError as err:
            raise UserError(f"{err.filename or run_dir}: cannot write the lineage file "
                            f"({err.strerror or err})") from None
    try:
        written = write_card(summary, model_id, target)
    except OSError as err:
        raise UserError(f"{'--out ' if out_path else ''}{target}: cannot write the card "
                        f"({err.strerror or err})") from None
    return written, model_id, model.name, model.path
