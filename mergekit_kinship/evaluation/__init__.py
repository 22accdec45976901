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
