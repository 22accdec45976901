"""Per-item results of a model, kept by content in ``RUN/items/<key>.json``.

The key is the hash of the model's identity and the *items fingerprint*
(:func:`~mergekit_kinship.evaluation.settings.items_fingerprint`: the evaluation fingerprint
without the stage plan), so the file of one model serves every stage, every stage plan and every
subset seed: a model moving to the next stage is scored on the new items only, and never on an
item twice. One file per model, rewritten atomically with every new item (old and new merged),
so a kill leaves the old file or the new one.

The file::

    {"format": 1, "items_key": KEY, "model": ID, "identity": IDENTITY,
     "tasks": {TASK: {"total": N, "values": {"17": 1.0, ...}}}}

``total``: how many items the task has (after ``limit``); ``values``: item index (in lm-eval's
document order, as lm-eval's ``samples=`` counts them) -> the item's value of the task's metric.
Only tasks whose score is the mean of its items' values have items (see
:func:`mergekit_kinship.evaluation.runner.evaluate`).
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

from mergekit_kinship.rundir import RunDir

FORMAT = 1
Items = dict[str, dict[int, float]]


def items_path(rd: RunDir, key: str):
    return rd.items_dir / f"{key}.json"


def read_items(rd: RunDir, key: Optional[str]) -> tuple[Items, dict[str, int]]:
    """(task -> index -> value, task -> item count) recorded under ``key``; empty when none."""
    if key is None:
        return {}, {}
    try:
        data = json.loads(items_path(rd, key).read_text())
    except (OSError, ValueError):
        return {}, {}
    if data.get("items_key") != key or data.get("format") != FORMAT:
        return {}, {}
    items = {task: {int(i): float(v) for i, v in entry["values"].items()}
             for task, entry in data["tasks"].items()}
    totals = {task: int(entry["total"]) for task, entry in data["tasks"].items()}
    return items, totals


def record_items(rd: RunDir, key: str, model: str, identity: str, new: Mapping[str, Mapping],
                 totals: Mapping[str, int]) -> tuple[Items, dict[str, int]]:
    """Merge ``new`` (task -> index -> value) into the file under ``key``; returns the whole."""
    items, known = read_items(rd, key)
    for task, values in new.items():
        items.setdefault(task, {}).update({int(i): float(v) for i, v in values.items()})
    known.update({t: int(n) for t, n in totals.items()})
    rd.write_json(items_path(rd, key), {
        "format": FORMAT, "items_key": key, "model": model, "identity": identity,
        "tasks": {task: {"total": known[task],
                         "values": {str(i): v for i, v in sorted(values.items())}}
                  for task, values in items.items() if task in known}})
    return items, known


def select(items: Mapping[str, Mapping[int, float]], wanted: Optional[Mapping[str, list[int]]]
           ) -> Items:
    """The results of the ``wanted`` items (task -> indices; None: all of them)."""
    if wanted is None:
        return {task: dict(values) for task, values in items.items()}
    return {task: {i: items[task][i] for i in indices if i in items.get(task, {})}
            for task, indices in wanted.items()}


def missing(items: Mapping[str, Mapping[int, float]], wanted: Mapping[str, list[int]]
            ) -> dict[str, list[int]]:
    """The ``wanted`` items not in ``items``, task -> sorted indices (tasks with none left out)."""
    out = {}
    for task, indices in wanted.items():
        known = items.get(task, {})
        left = sorted(i for i in indices if i not in known)
        if left:
            out[task] = left
    return out


def means(items: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Each task's score: the mean of its items' values, summed in item order (as lm-eval's
    ``mean`` sums them: the same float for the same items)."""
    return {task: sum(values[i] for i in sorted(values)) / len(values)
            for task, values in items.items() if values}


def stderrs(items: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Each task's standard error from its items (sample standard deviation / sqrt(n), as
    lm-eval's ``mean_stderr``); tasks with fewer than 2 items left out."""
    import math

    out = {}
    for task, values in items.items():
        n = len(values)
        if n > 1:
            mean = math.fsum(values.values()) / n
            var = math.fsum((v - mean) ** 2 for v in values.values()) / (n - 1)
            out[task] = math.sqrt(var / n)
    return out
