"""``mergekit-kinship card RUN_DIR CHILD``: (re)write one child's model card, optionally push it."""

from __future__ import annotations

import click


@click.command("card")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("child")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Where to write the card [default: README.md in the child's folder, or "
                   "RUN_DIR/cards/CHILD/README.md when its weights were not kept].")
@click.option("--push-to-hub", "repo_id", metavar="REPO",
              help="Upload the child (weights, tokenizer and card) to this Hub repo (owner/name).")
@click.option("--private", is_flag=True, help="Create the Hub repo as private (with --push-to-hub).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def card_cmd(run_dir, child, out_path, repo_id, private, as_json):
    """Write the model card of CHILD (an id or display name from RUN_DIR/summary.json).

    The card lists the child's hub ancestors as base_model, its lm-eval scores as a model-index,
    its whole lineage as a tree with every merge's method and parents' kinship, its scores against
    its parents', and the exact mergekit YAML.
    """
    import json
    from pathlib import Path

    from mergekit_kinship.card import default_card_path, write_card
    from mergekit_kinship.errors import UserError
    from mergekit_kinship.hub_push import push_to_hub
    from mergekit_kinship.summary import load_summary

    if private and not repo_id:
        raise UserError("--private applies to --push-to-hub only; add --push-to-hub owner/name")
    summary = load_summary(run_dir)
    model_id = summary.find(child)
    target = Path(out_path) if out_path else default_card_path(run_dir, summary, model_id)
    try:
        written = write_card(summary, model_id, target)
    except OSError as err:
        raise UserError(f"{'--out ' if out_path else ''}{target}: cannot write the card "
                        f"({err.strerror or err})") from None
    url = None
    if repo_id:
        url = push_to_hub(written, repo_id, model_dir=summary.models[model_id].path, private=private)
    if as_json:
        click.echo(json.dumps({"model": model_id, "card": str(written), "pushed_to": url}))
    else:
        click.echo(f"card of {summary.models[model_id].name} written to {written}")
        if url:
            click.echo(f"pushed to {url}")
