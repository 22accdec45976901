"""Kinship computed inside a mergekit merge, and the ``kinship.json`` it leaves in the merged folder.

:func:`merge_with_kinship` is ``mergekit.merge.run_merge`` plus kinship: the same merge (the
weights byte for byte), and, from the tensors the merge loads anyway, the kinship of its input
models as deltas from their shared ancestor and each input's kinship with the merged output
(see :mod:`mergekit_kinship.merge_observer` for what is compared and why). The result is a
:class:`MergeKinship`, written as ``OUT/kinship.json``; :func:`read_merge_kinship` reads it back
(``evolve`` records a child's kinship with its parents from it, a card can quote it).

The ancestor is ``ancestor`` when given, else the config's ``base_model`` when the method takes
task vectors from it (``ties``, ``task_arithmetic``, ``dare_*``, ``nuslerp`` with a base, ...).
``slerp``'s ``base_model`` is one of its endpoints and ``linear`` has none: they need ``ancestor``.

This module imports torch and mergekit only inside :func:`merge_with_kinship`; reading and
writing the result is plain JSON.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.errors import UserError
from mergekit_kinship.metrics import METRICS, self_kinship

KINSHIP_FILE = "kinship.json"
FORMAT = 1


class KinshipNotComputed(UserError):
    """The merge was written, but its kinship could not be computed (e.g. NaN in a weight)."""


@dataclass
class MergeKinship:
    """Kinship of a merge's inputs against their ancestor, and of each input with the output.

    ``models``: the inputs' references as the config gives them (config order), ``names`` their
    display names. ``models_kinship[metric]``: N×N (diagonal 1 or 0; None where undefined, e.g. a
    zero delta). ``output_kinship[metric][i]``: input i with the merged output. ``tensors`` /
    ``params``: what the inputs were compared over; ``output_tensors`` / ``output_params``: the
    same for the output (fewer when the merge re-orders the vocabulary). ``extra_bytes``: bytes
    read for kinship only (an ancestor the method does not load, weights the merge dtype rounds).
    """

    method: str
    ancestor: str
    ancestor_name: str
    models: list[str]
    names: list[str]
    metrics: list[str]
    models_kinship: dict[str, list[list[Optional[float]]]]
    output_kinship: dict[str, list[Optional[float]]]
    tensors: int
    params: int
    output_tensors: int
    output_params: int
    extra_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    computed: str = "during the merge (mergekit-kinship merge hook)"
    # Not written to kinship.json: CPU seconds of the reducing thread (reduce_cpu_s) and seconds
    # mergekit's thread waited for it (merge_waited_s), for benchmarks.
    timing: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    # Not written to kinship.json either: the output's delta sketch, when asked for (sketch.py).
    sketch: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("timing", "sketch")}
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MergeKinship":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a kinship.json of format {FORMAT}")
        fields = {k: v for k, v in data.items() if k not in ("format", "timing", "sketch")}
        return cls(**fields)

    def pair(self, i: int, j: int) -> dict[str, Optional[float]]:
        """Kinship of inputs i and j, by metric."""
        return {m: self.models_kinship[m][i][j] for m in self.metrics}

    def with_output(self, i: int) -> dict[str, Optional[float]]:
        """Kinship of input i with the merged output, by metric."""
        return {m: self.output_kinship[m][i] for m in self.metrics}

    def write(self, folder: str | Path) -> Path:
        from mergekit_kinship.atomic_io import write_json

        return write_json(Path(folder) / KINSHIP_FILE, self.to_dict())

    def table(self) -> str:
        """The result as two plain-text tables (the inputs' kinship, then with the output)."""
        from mergekit_kinship.formatting import metric_value, text_table

        lines = [f"kinship of the inputs as deltas from {self.ancestor_name} "
                 f"({self.tensors} tensors, {self.params:,} parameters):"]
        n = len(self.names)
        rows = [[f"{self.names[i]} / {self.names[j]}",
                 *[metric_value(self.models_kinship[m][i][j], m) for m in self.metrics]]
                for i in range(n) for j in range(i + 1, n)]
        if rows:
            lines.append(text_table(["pair", *self.metrics], rows, align_right=range(1, 1 + len(self.metrics))))
        lines.append(f"\neach input with the merged output ({self.output_tensors} tensors, "
                     f"{self.output_params:,} parameters):")
        rows = [[self.names[i], *[metric_value(self.output_kinship[m][i], m) for m in self.metrics]]
                for i in range(n)]
        lines.append(text_table(["model", *self.metrics], rows, align_right=range(1, 1 + len(self.metrics))))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def read_merge_kinship(folder: str | Path) -> Optional[MergeKinship]:
    """The ``kinship.json`` of a merged folder, or None when there is none (or not ours)."""
    try:
        return MergeKinship.from_dict(json.loads(Path(folder, KINSHIP_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def merge_with_kinship(config, out_path: str | Path, options=None, *,
                       config_source: Optional[str] = None, ancestor: Optional[str] = None,
                       write: bool = True, max_in_flight: int = 1, sketch=None) -> MergeKinship:
    """Merge ``config`` (a mergekit ``MergeConfiguration``) into ``out_path`` exactly as
    ``mergekit.merge.run_merge(config, out_path, options, config_source)`` does, and return the
    kinship observed on the way (written to ``out_path/kinship.json`` when ``write``).

    ``ancestor``: the models' shared ancestor (path or hub id); default: the config's
    ``base_model`` when the method takes task vectors from it. Raises :class:`UserError` before
    anything is written when there is no ancestor or the config is not one kinship can observe
    (slices that move layers), and :class:`KinshipNotComputed` after a complete merge whose
    kinship failed. Memory beyond the merge's: the accumulators, float64 scratch, and the inputs
    of ``max_in_flight`` tensors waiting for the reducing thread. ``sketch``
    (:class:`~mergekit_kinship.sketch.SketchParams`): also sketch the output's delta from the
    ancestor (``result.sketch``, not written here: the caller keeps it by the output's identity).
    """
    from mergekit.options import MergeOptions

    from mergekit_kinship import merge_hook as hook
    from mergekit_kinship.merge_observer import MergeObserver

    options = options or MergeOptions()
    method = config.merge_method
    anc = resolve_ancestor(config, ancestor)
    inputs = merge_inputs(config, anc)  # before the planner normalises the config in place
    if not inputs:
        raise UserError(f"the config merges no model other than the ancestor {anc}: "
                        "there is no kinship to compute")
    device = str(options.device or "cpu")
    observer = MergeObserver(inputs, anc, device if device.startswith("cuda") else "cpu",
                             max_in_flight=max_in_flight, sketch=sketch)
    try:
        hook.run_merge_observed(config, str(out_path), options=options,
                                config_source=config_source, observe=observer.tasks)
    finally:
        observed = observer.finish()
    if observed.error is not None:
        raise KinshipNotComputed(f"kinship: {observed.error} (the merge itself was written to "
                                 f"{out_path}; no {KINSHIP_FILE})")
    result = _result(method, anc, inputs, observed)
    result.sketch = observed.sketch
    if write and os.path.isdir(out_path):
        result.write(out_path)
    return result


def resolve_ancestor(config, ancestor: Optional[str]):
    """The ancestor's mergekit model reference (see the module docstring)."""
    from mergekit_kinship import merge_hook as hook

    if ancestor:
        return hook.parse_model(str(ancestor))
    method = config.merge_method
    if config.base_model is not None and _base_is_ancestor(method):
        return config.base_model
    why = (f"{method}'s base_model is one of the models it interpolates, not their ancestor"
           if config.base_model is not None else f"the config ({method}) has no base_model")
    raise UserError(f"{why}: give --base ANCESTOR, the model the inputs were fine-tuned from")


def _base_is_ancestor(method: str) -> bool:
    from mergekit_kinship.merge_methods import method_info

    try:
        return method_info(method).base in ("ancestor", "optional")
    except ValueError:
        return False


def merge_inputs(config, ancestor) -> list:
    """The models a config merges, in config order (each once), without the ancestor."""
    from mergekit_kinship.merge_observer import same_model

    ordered: list = []

    def add(model):
        if not same_model(model, ancestor) and not any(same_model(model, m) for m in ordered):
            ordered.append(model)

    for entry in config.models or []:
        add(entry.model)
    for out_slice in config.slices or []:
        for source in out_slice.sources:
            add(source.model)
    for module in (config.modules or {}).values():
        for entry in module.models or []:
            add(entry.model)
        for out_slice in module.slices or []:
            for source in out_slice.sources:
                add(source.model)
    if config.base_model is not None:
        add(config.base_model)
    return ordered


def _display(models) -> list[str]:
    names = [Path(str(m.model.path)).name if os.path.isdir(str(m.model.path)) else str(m)
             for m in models]
    return [str(m) if names.count(n) > 1 else n for m, n in zip(models, names)]


def _result(method: str, ancestor, inputs, observed) -> MergeKinship:
    k = len(inputs)
    models_kinship, output_kinship = {}, {}
    for metric in METRICS:
        diag = self_kinship(metric)
        models_kinship[metric] = [[diag if i == j else observed.models.metric(metric, i, j)
                                   for j in range(k)] for i in range(k)]
        output_kinship[metric] = [observed.with_output.metric(metric, i, k)
                                  if observed.with_output.n else None for i in range(k)]
    names = _display([ancestor, *inputs])
    return MergeKinship(
        method=method, ancestor=str(ancestor), ancestor_name=names[0],
        models=[str(m) for m in inputs], names=names[1:], metrics=list(METRICS),
        models_kinship=models_kinship, output_kinship=output_kinship,
        tensors=observed.n_tensors, params=observed.models.n,
        output_tensors=observed.n_output_tensors, output_params=observed.with_output.n,
        extra_bytes=observed.extra_bytes, notes=observed.notes, timing=observed.timing)
