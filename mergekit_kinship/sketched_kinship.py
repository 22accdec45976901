"""Kinship matrices from delta sketches: read each model once, ever, and never again.

:func:`model_sketches` returns the sketch of each model (see :mod:`~mergekit_kinship.sketch`):
the cached one when the user cache (or the given store) has it for this model, base and layout
(:mod:`~mergekit_kinship.sketch_store`), else one made by a streaming pass over the models that
have none, which then stores it. :func:`sketch_matrix` is :func:`~mergekit_kinship.
streaming_kinship.kinship_matrix` from those sketches: each value with its stated error bound
(:mod:`~mergekit_kinship.sketch_estimates`). Adding one model to a family whose sketches are
cached reads that model only (once to hash it for its identity, once to sketch it; the others'
identities are remembered by their folders' stamps).

Exact values stay the default everywhere; a sketch is asked for (``matrix --sketch``,
``kinship_matrix(..., sketch=True)``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

from mergekit_kinship.errors import UserError
from mergekit_kinship.metrics import DEFAULT_METRICS, parse_metrics

# Memory for the float64 sketches of one pass (per model: 8 bytes × size × reducing threads);
# more models than fit are sketched in several passes, each reading the base once more.
PASS_MEMORY = 1 << 28


@dataclass
class SketchSet:
    """The sketches of ``names`` (in order), which of them were read now, and the bytes read."""

    names: list[str]
    base_name: str
    sketches: list
    identities: list[str]
    base_identity: str
    read: list[str] = field(default_factory=list)
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def layout(self):
        return self.sketches[0].layout


@dataclass
class SketchedMatrix:
    """A :class:`~mergekit_kinship.streaming_kinship.KinshipMatrix` from sketches: ``values`` as
    there, and ``bounds[metric][i][j]``, the stated error bound of each value (0 on the diagonal
    and for exact sketches). ``read``: the models this call read (the others' sketches were
    cached); ``sketch``: the sketch parameters and size."""

    names: list[str]
    base: str
    metrics: list[str]
    values: dict[str, list[list[Optional[float]]]]
    bounds: dict[str, list[list[Optional[float]]]]
    n_params: int
    n_tensors: int
    sketch: dict
    read: list[str] = field(default_factory=list)
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def mean(self, metric: str = "pcc") -> float:
        metric = parse_metrics(metric)[0]
        vals = [v for i, row in enumerate(self.values[metric]) for j, v in enumerate(row)
                if j > i and v is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    def csv_text(self) -> str:
        """As :meth:`KinshipMatrix.csv_text`, with one more row per model: ``<metric>_bound``."""
        from mergekit_kinship.streaming_kinship import _csv_cell

        lines = [",".join(["metric", "model", *map(_csv_cell, self.names)])]
        for metric in self.metrics:
            for key, grid in ((metric, self.values[metric]), (f"{metric}_bound", self.bounds[metric])):
                for name, row in zip(self.names, grid):
                    cells = ["" if v is None else repr(float(v)) for v in row]
                    lines.append(",".join([key, _csv_cell(name), *cells]))
        return "\n".join(lines) + "\n"


def model_sketches(models, base, *, params=None, include=None, exclude=None, device=None,
                   progress: bool = True, cache_dir=None, store=None) -> SketchSet:
    """The sketch of every model (paths or hub ids) as a delta from ``base``: cached, or made now.

    ``params``: :class:`~mergekit_kinship.sketch.SketchParams` (default: the defaults);
    ``store``: a :class:`~mergekit_kinship.sketch_store.SketchStore` (default: the user cache
    under ``cache_dir``). Models without a stored sketch are read in one pass (several when
    their sketches would not fit in :data:`PASS_MEMORY`) and their sketches stored.
    """
    from mergekit_kinship.kinship_selection import select_tensors
    from mergekit_kinship.kinship_stream import MAX_WORKERS, run_pass
    from mergekit_kinship.models import check_compatible, display_names, open_model
    from mergekit_kinship.sketch import SketchLayout, SketchParams
    from mergekit_kinship.sketch_store import SketchStore, model_identity, sketch_key, user_sketch_dir

    params = params or SketchParams()
    models = [str(m) for m in models]
    opened = []
    try:
        base_model = open_model(base)
        opened.append(base_model)
        for ref in models:
            opened.append(open_model(ref))
        names = display_names(opened[1:])
        check_compatible(opened[1:], base_model)
        items, notes = select_tensors(base_model, opened[1:], names, list(range(len(models))),
                                      include, exclude, None)
        base_name = base_model.name
    finally:
        for model in opened:
            model.close()
    layout = SketchLayout.cached(tuple((it.name, it.numel) for it in items), params)
    store = store or SketchStore([user_sketch_dir(cache_dir)])
    base_identity = model_identity(base, cache_dir)
    identities = [model_identity(m, cache_dir) for m in models]
    keys = [sketch_key(i, base_identity, layout.fingerprint) for i in identities]
    found = [store.get(k) for k in keys]
    missing = [k for k, s in enumerate(found) if s is None]
    bytes_read = 0
    per_model = 8 * layout.size * MAX_WORKERS
    batch = max(1, PASS_MEMORY // per_model)
    for start in range(0, len(missing), batch):
        part = missing[start:start + batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the selection's notes were collected above
            run = run_pass([models[k] for k in part], base, ("euclidean",), include, exclude, [],
                           None, device, progress, sketch=params, read=range(len(part)))
        bytes_read += run.bytes_read
        for k, sketch in zip(part, run.sketches):
            if sketch.layout.fingerprint != layout.fingerprint:
                raise AssertionError("a pass sketched other tensors than selected")
            sketch.meta = {"name": names[k], "model": identities[k], "base": base_identity}
            store.put(keys[k], sketch)
            found[k] = sketch
    for note in notes:
        warnings.warn(note, _warning_class(), stacklevel=3)
    return SketchSet(names=names, base_name=base_name, sketches=found, identities=identities,
                     base_identity=base_identity, read=[names[k] for k in missing],
                     bytes_read=bytes_read, warnings=notes)


def _warning_class():
    from mergekit_kinship.kinship_stream import KinshipWarning

    return KinshipWarning


def sketch_matrix(models, base, metrics=DEFAULT_METRICS, include=None, exclude=None, device=None,
                  progress: bool = True, params=None, cache_dir=None, store=None) -> SketchedMatrix:
    """The N×N kinship matrix of ``models`` from their sketches, each value with its bound.

    Reads only the models whose sketches are not stored yet (see :func:`model_sketches`).
    ``sign_conflict`` needs sketches with a sign sample (``params.signs > 0``).
    """
    from mergekit_kinship.sketch_estimates import estimates

    metrics = parse_metrics(metrics)
    models = list(models)
    if len(models) < 2:
        raise UserError(f"a kinship matrix needs at least two models, got {len(models)}")
    found = model_sketches(models, base, params=params, include=include, exclude=exclude,
                           device=device, progress=progress, cache_dir=cache_dir, store=store)
    if "sign_conflict" in metrics and found.layout.params.signs == 0:
        raise UserError("sign_conflict: these sketches have no sign sample (--sketch-signs 0)")
    est = estimates(found.sketches, metrics)
    values, bounds = {}, {}
    for metric, (value, bound) in est.items():
        values[metric] = [[None if math.isnan(v) else float(v) for v in row] for row in value]
        bounds[metric] = [[None if math.isnan(v) else float(v) for v in row] for row in bound]
    layout = found.layout
    return SketchedMatrix(
        names=found.names, base=found.base_name, metrics=list(metrics), values=values,
        bounds=bounds, n_params=layout.n, n_tensors=len(layout.tensors),
        sketch={**layout.params.to_dict(), "entries": layout.size, "exact": layout.all_exact},
        read=found.read, bytes_read=found.bytes_read, warnings=found.warnings)
