"""One-shot baselines: every foundation model merged at once, no search (the paper's Table 1).

A search is only worth its merges if its best child beats what one merge of all the fine-tunes
gives. The paper reports three such baselines (TIES, DARE-TIES, linear); task arithmetic is the
fourth a user usually tries. Each is a standard mergekit multi-model config with documented
default parameters, the same for every family (never tuned to one):

- ``linear``: the plain average of the foundation models' weights (``weight: 1`` each,
  mergekit's ``normalize: true``); no ``base_model``.
- ``task_arithmetic``: the shared ancestor plus half of every task vector, θ₀ + 0.5·Σδᵢ
  (``weight: 0.5`` each, not normalized: the weight users commonly give a task vector).
- ``ties``: TIES-merging (trim to ``density: 0.5`` of each delta by magnitude, elect signs,
  average the agreeing entries; ``weight: 1`` each, ``normalize: true``).
- ``dare_ties``: DARE (drop at random to ``density: 0.5`` and rescale) then TIES' sign election;
  random, so the recipe's seed is passed to mergekit.

A baseline's id is ``b-`` + the hash of its configuration with every model replaced by its
content identity (and the seed for DARE), so it is merged and scored once in any run directory
of the same family and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class Baseline:
    """How one baseline merges n foundation models."""

    name: str
    method: str
    per_model: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    takes_ancestor: bool = True  # base_model is the shared ancestor (task-vector methods)
    random: bool = False
    description: str = ""


BASELINES: dict[str, Baseline] = {}


def register_baseline(baseline: Baseline) -> Baseline:
    """Make a baseline available by name; a duplicate name is an error."""
    if baseline.name in BASELINES:
        raise ValueError(f"baseline {baseline.name!r} is already registered")
    BASELINES[baseline.name] = baseline
    return baseline


register_baseline(Baseline("ties", "ties", {"weight": 1.0, "density": 0.5}, {"normalize": True},
                           description="TIES, density 0.5"))
register_baseline(Baseline("dare_ties", "dare_ties", {"weight": 1.0, "density": 0.5},
                           {"normalize": True}, random=True,
                           description="DARE-TIES, density 0.5"))
register_baseline(Baseline("linear", "linear", {"weight": 1.0}, {"normalize": True},
                           takes_ancestor=False, description="average of the weights"))
register_baseline(Baseline("task_arithmetic", "task_arithmetic", {"weight": 0.5},
                           {"normalize": False},
                           description="ancestor + 0.5 x each task vector"))


def baseline_config(baseline: Baseline, models: Sequence[str], ancestor: str, dtype: str,
                    tokenizer: Optional[dict] = None) -> dict[str, Any]:
    """The mergekit configuration (a plain dict) of ``baseline`` over ``models`` (references as
    given: absolute paths, hub ids, or content identities for hashing)."""
    config: dict[str, Any] = {"merge_method": baseline.method}
    if baseline.takes_ancestor:
        config["base_model"] = ancestor
    config["models"] = [{"model": ref, "parameters": dict(baseline.per_model)} for ref in models]
    if baseline.shared:
        config["parameters"] = dict(baseline.shared)
    config["dtype"] = dtype
    if tokenizer is not None:
        config["tokenizer"] = dict(tokenizer)
    return config
