"""The lm-eval adapter: score one model on the recipe's tasks and turn the scores into a fitness.

- :mod:`.settings`: the recipe's ``evaluation:`` block (:class:`EvaluationSettings`) and its
  fingerprint; cheap, imported by the recipe.
- :mod:`.scores`: one model's scores (:class:`EvaluationResult`), :func:`check_scores` (every
  score, from lm-eval or a scores file, passes it) and :func:`fitness`; cheap.
- :mod:`.tasks`: the settings against lm-eval's task index (:func:`validate_evaluation`).
- :mod:`.runner`: :func:`evaluate`, one model through lm-eval.

Scores are what lm-eval reports, in [0, 1] for accuracy-like metrics; the fitness is their
weighted mean (the paper's P̄ is the unweighted mean). Importing this package does not import
lm-eval, torch or transformers.
"""

# re-exported for callers not yet moved (issue 10 merge)
from mergekit_kinship.evaluation.runner import evaluate, resolve_device  # noqa: F401
from mergekit_kinship.evaluation.scores import EvaluationResult, check_scores, fitness  # noqa: F401
from mergekit_kinship.evaluation.settings import (  # noqa: F401
    DEFAULT_METRIC,
    FINGERPRINT_FORMAT,
    EvaluationSettings,
    evaluation_fingerprint,
    fingerprint_hash,
    lm_eval_version,
)
from mergekit_kinship.evaluation.tasks import task_manager_for, validate_evaluation  # noqa: F401
