"""The lm-eval adapter: score one model on the recipe's tasks and turn the scores into a fitness.

- :mod:`.settings`: the recipe's ``evaluation:`` block (:class:`EvaluationSettings`) and its
  fingerprint; cheap, imported by the recipe.
- :mod:`.scores`: one model's scores (:class:`EvaluationResult`), :func:`check_scores` (every
  score, from lm-eval or a scores file, passes it) and :func:`fitness`; cheap.
- :mod:`.tasks`: the settings against lm-eval's task index (:func:`validate_evaluation`).
- :mod:`.task_plan`: per task, the n-shot and items a run uses: applied by the runner,
  described by ``plan --dry-run`` (one rule for both).
- :mod:`.runner`: :func:`evaluate`, one model through lm-eval (:mod:`.quiet` keeps the libraries'
  chatter down meanwhile).
- :mod:`.describe`: a run summary's evaluation settings per task, in words (cards, report).

Scores are what lm-eval reports, in [0, 1] for accuracy-like metrics; the fitness is their
weighted mean (the paper's P̄ is the unweighted mean). Importing this package does not import
lm-eval, torch or transformers.
"""
