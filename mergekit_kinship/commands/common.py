"""What several commands share: loading a recipe with flag overrides, and their common options.

Choices are read from the registries (strategies from the planner, executors from
:mod:`mergekit_kinship.executors`, ``--keep`` from the run directory), never typed again here.
Importing this module stays light: the registries are plain dicts in modules that import no
torch, mergekit or lm-eval.
"""

from __future__ import annotations

import contextlib
import os

import click

from mergekit_kinship.executors import EXECUTORS
from mergekit_kinship.planner import STRATEGIES
from mergekit_kinship.rundir import KEEP_CHOICES

EVALUATOR_HELP = ("Score models with this Python function instead of lm-eval: MODULE:FUNCTION, "
                  "(model_path, EvaluationSettings) -> EvaluationResult. Its scores are kept "
                  "apart from lm-eval's; the recipe's tasks are then not checked against lm-eval.")


def strategy_option(fn):
    return click.option("--strategy", type=click.Choice(list(STRATEGIES)),
                        help="Override the recipe's strategy.")(fn)


def keep_option(fn):
    return click.option("--keep", type=click.Choice(list(KEEP_CHOICES)), default="all",
                        show_default=True,
                        help="Which children's weights stay on disk when the run stops: the best "
                             "model's, the final top-k's (survivors), or all.")(fn)


def executor_option(fn):
    return click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local",
                        show_default=True,
                        help="Where children are merged and scored: here one after another, or "
                             "a generation at once on a Ray cluster (pip install "
                             "\"mergekit-kinship[ray]\").")(fn)


def evaluator_option(fn):
    return click.option("--evaluator", metavar="MODULE:FUNCTION", help=EVALUATOR_HELP)(fn)


def quiet_option(fn):
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bars (tables and results still print).")(fn)


def prepare(recipe_path: str, strategy: str | None = None, max_generations: int | None = None,
            max_merges: int | None = None):
    """Load and validate a recipe file, with the flags' overrides applied (the pre-flight of
    the run itself comes later, in :func:`mergekit_kinship.preflight.preflight`)."""
    from mergekit_kinship.recipe import check_top_k, load_recipe

    recipe = load_recipe(recipe_path)
    updates: dict = {}
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
        check_top_k(recipe, "--max-merges" if max_merges is not None else recipe_path)
    return recipe


def check_evaluator(reference: str | None) -> None:
    """An ``--evaluator`` that cannot be imported is one line before any work."""
    if reference is not None:
        from mergekit_kinship.executors.job import resolve_evaluator

        resolve_evaluator(reference)


# Each library's documented switch for its progress bars, read when the library is imported.
_QUIET_ENVIRONMENT = {
    # The default of every tqdm bar's disable= (tqdm >= 4.66). lm-eval's request bars, which pass
    # disable=False themselves, follow it too (mergekit_kinship.evaluation.runner).
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars follow huggingface_hub's switch
}


@contextlib.contextmanager
def no_progress_bars():
    """No progress bar at all, for ``--quiet``: each library's own process-level switch, set
    before the CLI imports any of them (the command group imports none) and restored on exit.
    Our own bars are off through ``progress=False``. No function of another library is replaced.
    In a process that imported tqdm earlier (a test's CliRunner) tqdm keeps the default it read
    then; the ``mergekit-kinship`` command is always a fresh process."""
    saved = {name: os.environ.get(name) for name in _QUIET_ENVIRONMENT}
    os.environ.update(_QUIET_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
