"""``lineage`` on model folders: read (or find cached) each model's delta sketch, infer the tree.

:func:`model_lineage` is the API behind ``mergekit-kinship lineage``: the sketches come from
:func:`~mergekit_kinship.sketched_kinship.model_sketches` (cached by content, so a second call
on the same models reads nothing), their per-tensor cross terms from
:func:`~mergekit_kinship.sketch_estimates.cross_terms`, and the calls from the pure
:func:`~mergekit_kinship.lineage.infer_lineage`. Models smaller than the sketch (the default
sketch holds 262,144 weights) are compared exactly; for larger ones the per-tensor estimates
carry the sketch's noise, reported with each edge (``cross_noise``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from mergekit_kinship.errors import UserError

KINDS = ("base-fine-tune", "fine-tune", "merge", "ambiguous", "unrelated")


@dataclass
class ModelLineage:
    """One model's call: ``path`` as the user gave it, ``name`` as tables show it, ``kind`` (one
    of :data:`KINDS`), ``parents`` (paths as given; empty for a fine-tune of the base, None when
    ambiguous or unrelated), ``proportions`` (a merge's share of each parent), ``evidence`` and,
    when ambiguous, the ``alternatives`` it could not choose between (parents as paths).
    ``edges``: one per parent (the base's path for a fine-tune of the base), each
    ``{"parent", "evidence"}`` with the numbers that tie this model to that parent."""

    path: str
    name: str
    kind: str
    parents: Optional[list[str]]
    proportions: Optional[list[float]] = None
    evidence: dict = field(default_factory=dict)
    alternatives: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)


@dataclass
class LineageResult:
    base: str
    models: list[ModelLineage]
    sketch: dict
    exact: bool
    read: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"base": self.base, "exact": self.exact, "sketch": self.sketch, "read": self.read,
                "models": [asdict(m) for m in self.models]}

    def by_path(self) -> dict[str, ModelLineage]:
        return {m.path: m for m in self.models}


def check_models(models, base) -> list[str]:
    """The models as strings; UserError for none, a duplicate, or the base among them."""
    models = [str(m) for m in models]
    if not models:
        raise UserError("lineage needs at least one model")
    seen = set()
    for m in models:
        if m in seen:
            raise UserError(f"model '{m}' is given twice")
        seen.add(m)
    if str(base) in seen:
        raise UserError(f"the base '{base}' is also given as a model: list only its descendants")
    return models


def model_lineage(models, base, *, params=None, cache_dir=None, store=None,
                  progress: bool = False, include=None, exclude=None) -> LineageResult:
    """What each of ``models`` most likely is, relative to ``base`` and to each other."""
    from mergekit_kinship.lineage import infer_lineage
    from mergekit_kinship.sketched_kinship import model_sketches

    models = check_models(models, base)
    found = model_sketches(models, base, params=params, include=include, exclude=exclude,
                           progress=progress, cache_dir=cache_dir, store=store)
    G, noise = tensor_gram(found.sketches)
    layout = found.layout
    exact = bool(layout.exact.all())  # the sign sample plays no part here
    entries = infer_lineage(G, None if exact else noise)
    total = G.sum(0)
    out = []
    for entry in entries:
        parents = None if entry.parents is None else [models[p] for p in entry.parents]
        if entry.kind == "unrelated":
            parents = None
        evidence = _plain(entry.evidence)
        out.append(ModelLineage(
            path=models[entry.index], name=found.names[entry.index], kind=entry.kind,
            parents=parents, proportions=entry.proportions, evidence=evidence,
            alternatives=[{**_plain(a), "parents": [models[p] for p in a["parents"]]}
                          for a in entry.alternatives],
            edges=_edges(entry, models, str(base), total, noise, exact)))
    return LineageResult(base=str(base), models=out, exact=exact,
                         sketch={**layout.params.to_dict(), "entries": layout.size},
                         read=list(found.read))


def _edges(entry, models, base, total, noise, exact) -> list[dict]:
    """Each inferred edge with its own evidence: the parent's share and cosine for a merge, the
    coefficient of the parent's delta in the model's for a fine-tune."""
    import math

    x = entry.index
    if entry.kind == "base-fine-tune":
        return [{"parent": base, "evidence": _plain(entry.evidence)}]
    if entry.kind not in ("fine-tune", "merge"):
        return []
    edges = []
    for k, p in enumerate(entry.parents):
        cosine = float(total[x, p] / math.sqrt(total[x, x] * total[p, p]))
        evidence = {"cosine": cosine, "coefficient": float(total[x, p] / total[p, p])}
        if entry.kind == "merge":
            evidence = {"proportion": float(entry.proportions[k]), "cosine": cosine,
                        "residual": float(entry.evidence["residual"])}
        else:
            evidence["update_fraction"] = float(entry.evidence["update_fraction"])
        if not exact:
            evidence["cross_noise"] = float(noise[x, p])
        edges.append({"parent": models[p], "evidence": evidence})
    return edges


def tensor_gram(sketches):
    """(G, noise): per-tensor cross terms T × N × N (float64 numpy) with each model's exact
    Σδ² per tensor on the diagonal, and the standard deviation of each total cross term."""
    import numpy as np
    import torch

    from mergekit_kinship.sketch_estimates import cross_terms

    _, V, per_tensor = cross_terms(sketches)
    G = per_tensor.numpy().copy()
    q = torch.stack([s.sumsq for s in sketches], 1).numpy()  # T × N, exact
    idx = np.arange(len(sketches))
    G[:, idx, idx] = q
    return G, np.sqrt(np.maximum(V.numpy(), 0.0))


def _plain(d: dict) -> dict:
    """JSON-ready copy: numpy scalars to floats."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            out[k] = [float(x) if hasattr(x, "__float__") and not isinstance(x, int) else x for x in v]
        elif hasattr(v, "__float__") and not isinstance(v, (int, bool)):
            out[k] = float(v)
        else:
            out[k] = v
    return out
