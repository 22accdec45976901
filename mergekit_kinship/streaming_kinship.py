"""Model kinship: similarity of two fine-tunes' weight deltas from their common base.

For models θ_1..θ_N and base θ_0 the delta of model i is δ_i = θ_i − θ_0, flattened over every
compared weight into one global vector (Hu et al., arXiv 2410.12613, §4.1). Kinship of a pair is

- ``pcc``: Pearson correlation of δ_i and δ_j,
- ``cosine``: signed cosine similarity of δ_i and δ_j,
- ``euclidean``: ‖δ_i − δ_j‖ (a distance: larger means less related),
- ``sign_conflict``: over the elements where δ_i and δ_j are both non-zero, the fraction whose
  signs differ (a distance in [0, 1]: the disagreement that TIES-style merges resolve by sign
  election; about 0.5 for unrelated deltas, arccos(ρ)/π for jointly normal ones of PCC ρ).

All four are global: computed from exact float64 moments and exact integer counts of the whole
vectors, never as averages of per-tensor values. One streaming pass reads each model's tensors
once, whatever the number of pairs, in blocks of bounded size, and reduces each block to sums and
a Gram matrix, hence to means, centred co-moments and squared distances (and sign counts), merged
into running totals with Chan et al.'s pairwise formula. PCC never uses the cancelling ``Σxy/n − x̄ȳ`` over the whole vector, and
squared distances that cancel (two near-identical models) are recomputed from the data.

This module is the public API and its result types. The work is done below it:
:mod:`~mergekit_kinship.kinship_selection` (which tensors, which breakdown group),
:mod:`~mergekit_kinship.kinship_stream` (opening the models, the threaded block reads; memory
bounds) and :mod:`~mergekit_kinship.kinship_accumulators` (the float64 accumulators, also for
callers that hold the tensors in memory already).

The models must be fine-tunes of one base: same architecture, hidden size and tensor shapes. A
model with more vocabulary rows than the base (added tokens) is compared on the rows it shares with
the base, with one warning per model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mergekit_kinship.errors import UserError
from mergekit_kinship.kinship_selection import BREAKDOWNS, group_order
from mergekit_kinship.kinship_stream import KinshipWarning, run_pass
from mergekit_kinship.metrics import DEFAULT_METRICS, parse_metrics, self_kinship

__all__ = ["kinship", "kinship_matrix", "KinshipResult", "KinshipMatrix", "KinshipWarning"]


@dataclass
class KinshipResult:
    """Kinship of two models. ``values[metric]`` is a float (``sign_conflict`` is None when no
    element changed in both models); ``breakdown`` (on request) maps a group of tensors
    (``"embeddings"``, ``"layer 3"``, ``"attention"``, ``"head"`` ...) to its own values, ``None``
    where undefined (an unchanged group has no PCC)."""

    model_a: str
    model_b: str
    base: str
    metrics: list[str]
    values: dict[str, float]
    n_params: int
    n_tensors: int
    breakdown: dict[str, dict] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KinshipMatrix:
    """Kinship of every requested pair of N models. ``values[metric]`` is an N×N list of lists:
    diagonal 1.0 (pcc, cosine) or 0.0 (euclidean, sign_conflict), ``None`` for pairs that were not
    requested (or whose sign conflict is undefined: no element changed in both)."""

    names: list[str]
    base: str
    metrics: list[str]
    values: dict[str, list[list[float | None]]]
    n_params: int
    n_tensors: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def mean(self, metric: str = "pcc") -> float:
        """Kinship of the whole group: the mean over computed pairs i<j (the paper's n-model kinship)."""
        metric = parse_metrics(metric)[0]
        vals = [
            v for i, row in enumerate(self.values[metric]) for j, v in enumerate(row) if j > i and v is not None
        ]
        return sum(vals) / len(vals) if vals else float("nan")

    def csv_text(self) -> str:
        """One row per (metric, model): ``metric,model,<name 1>,...,<name N>``; empty = not computed."""
        lines = [",".join(["metric", "model", *map(_csv_cell, self.names)])]
        for metric in self.metrics:
            for name, row in zip(self.names, self.values[metric]):
                cells = ["" if v is None else repr(float(v)) for v in row]
                lines.append(",".join([metric, _csv_cell(name), *cells]))
        return "\n".join(lines) + "\n"


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def kinship(
    model_a,
    model_b,
    base,
    metrics=DEFAULT_METRICS,
    include=None,
    exclude=None,
    breakdown: str | None = None,
    device=None,
    progress: bool = True,
) -> KinshipResult:
    """Kinship of ``model_a`` and ``model_b`` as deltas from ``base`` (paths or hub ids).

    ``include``/``exclude`` are glob patterns (or lists of them) on tensor names, e.g.
    ``exclude=["*embed_tokens*", "lm_head.*"]``. ``breakdown="layer"`` adds one entry per
    transformer layer (plus embeddings, final norm, head); ``"module"`` one per kind of module
    (embeddings, attention, mlp, norm, head) summed over layers. Reads each model once.
    """
    metrics = parse_metrics(metrics)
    if breakdown is not None and breakdown not in BREAKDOWNS:
        raise UserError(f"unknown breakdown '{breakdown}': choose from {', '.join(BREAKDOWNS)}")
    run = run_pass([model_a, model_b], base, metrics, include, exclude, [(0, 1)], breakdown, device, progress)
    values = {m: run.value(m, 0, 1) for m in metrics}
    groups = None
    if breakdown:
        groups = {}
        for group in sorted(run.accumulator.groups, key=group_order):
            entry = {"params": run.accumulator.n_params(group), "tensors": run.group_tensors[group]}
            entry.update({m: run.value(m, 0, 1, group, strict=False) for m in metrics})
            groups[group] = entry
    return KinshipResult(
        model_a=run.names[0],
        model_b=run.names[1],
        base=run.base_name,
        metrics=list(metrics),
        values=values,
        n_params=run.accumulator.n_params(),
        n_tensors=run.n_tensors,
        breakdown=groups,
        warnings=run.warnings,
    )


def kinship_matrix(
    models,
    base,
    metrics=DEFAULT_METRICS,
    include=None,
    exclude=None,
    pairs=None,
    device=None,
    progress: bool = True,
    sketch=False,
) -> KinshipMatrix:
    """The N×N kinship matrix of ``models`` (N ≥ 2) as deltas from ``base``, reading each model once.

    ``pairs`` (list of ``(i, j)`` index pairs) restricts which entries are computed, e.g.
    ``[(best, j) for j in range(N) if j != best]``; models in no pair are not read. Memory and
    ``include``/``exclude`` as for :func:`kinship`. ``sketch`` (``True`` or
    :class:`~mergekit_kinship.sketch.SketchParams`): the matrix from delta sketches instead,
    a :class:`~mergekit_kinship.sketched_kinship.SketchedMatrix` whose every value comes with
    its error bound; only models whose sketch is not cached are read.
    """
    if sketch:
        from mergekit_kinship.sketched_kinship import sketch_matrix

        if pairs is not None:
            raise UserError("pairs: not with sketch (a sketched matrix costs the same for every pair)")
        return sketch_matrix(models, base, metrics, include, exclude, device, progress,
                             params=None if sketch is True else sketch)
    metrics = parse_metrics(metrics)
    models = list(models)
    if len(models) < 2:
        raise UserError(f"a kinship matrix needs at least two models, got {len(models)}")
    n = len(models)
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    else:
        checked = set()
        for pair in pairs:
            i, j = (int(k) for k in pair)
            if not (0 <= i < n and 0 <= j < n):
                raise UserError(f"pair ({i}, {j}) is out of range for {n} models")
            if i != j:
                checked.add((min(i, j), max(i, j)))
        pairs = sorted(checked)
        if not pairs:
            raise UserError("pairs: no pair of two different models")
    run = run_pass(models, base, metrics, include, exclude, pairs, None, device, progress)
    values = {}
    for metric in metrics:
        diag = self_kinship(metric)
        grid = [[diag if i == j else None for j in range(n)] for i in range(n)]
        for i, j in pairs:
            grid[i][j] = grid[j][i] = run.value(metric, i, j)
        values[metric] = grid
    return KinshipMatrix(
        names=run.names,
        base=run.base_name,
        metrics=list(metrics),
        values=values,
        n_params=run.accumulator.n_params(),
        n_tensors=run.n_tensors,
        warnings=run.warnings,
    )


