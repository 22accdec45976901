"""The kinship of one merge: its input models pairwise, and each input with the merged output,
as deltas from one shared ancestor.

Two sources, one result type (:class:`MergeKinship`):

- ``OUT_DIR/kinship.json``, written during the merge by ``mergekit-kinship merge`` (read by
  :func:`read_kinship_json`, which tolerates the file's absence and any shape it does not know:
  it then returns None and the caller measures the kinship itself);
- :func:`measure`: the streaming engine
  (:func:`mergekit_kinship.streaming_kinship.kinship_matrix`) over the inputs and the output,
  reading each model once.

Shapes :func:`read_kinship_json` understands (keys in any of the spellings listed):

- the inputs: a list of names under ``inputs`` / ``models`` / ``names``, at the top level or in
  the pairwise block; the ancestor under ``base`` / ``ancestor``;
- pairwise kinship under ``pairwise`` / ``kinship`` / ``inputs`` / ``values`` / ``matrix``: a
  ``{metric: N x N matrix}`` mapping (``KinshipMatrix.to_dict()``'s ``values``), or a block
  holding one under ``values``, or a list of ``{"a"/"model_a", "b"/"model_b", metric: value}``
  (or ``"values": {metric: value}``) records;
- each input with the output under ``output`` / ``with_output`` / ``vs_output`` /
  ``output_kinship``: ``{metric: [value per input]}``, ``{input: {metric: value}}``, or a list
  of ``{"model"/"input", metric: value}`` records.

Importing this module is cheap; torch is imported by :func:`measure` only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mergekit_kinship.metrics import ALIASES, METRICS

KINSHIP_FILE = "kinship.json"

Values = dict[str, Optional[float]]  # metric -> value (None: undefined, e.g. a zero delta)


@dataclass
class MergeKinship:
    """``pairs[(i, j)]`` (i < j, indices into ``inputs``) and ``with_output[i]`` map each metric to
    its value; ``source`` says where the numbers come from (``kinship.json`` or ``measured``)."""

    inputs: list[str]
    ancestor: Optional[str]
    metrics: list[str]
    pairs: dict[tuple[int, int], Values] = field(default_factory=dict)
    with_output: list[Values] = field(default_factory=list)
    source: str = "measured"


def measure(inputs: list[str], ancestor: str, output: str | os.PathLike,
            metrics=METRICS, progress: bool = False) -> MergeKinship:
    """Kinship of ``inputs`` pairwise and of each with ``output`` (model references: folders or
    hub ids), deltas from ``ancestor``; one streaming pass, each model read once (memory: one
    block of tensors, float64 accumulators). UserError as the engine raises them."""
    from mergekit_kinship.streaming_kinship import kinship_matrix

    matrix = kinship_matrix([*inputs, str(output)], ancestor, metrics=tuple(metrics),
                            progress=progress)
    n = len(inputs)
    return MergeKinship(
        inputs=list(inputs), ancestor=ancestor, metrics=list(matrix.metrics),
        pairs={(i, j): {m: matrix.values[m][i][j] for m in matrix.metrics}
               for i in range(n) for j in range(i + 1, n)},
        with_output=[{m: matrix.values[m][i][n] for m in matrix.metrics} for i in range(n)],
        source="measured")


def read_kinship_json(model_dir: str | os.PathLike, inputs: list[str]) -> Optional[MergeKinship]:
    """The kinship recorded in ``model_dir/kinship.json`` for the merge of ``inputs`` (as its
    config names them), or None when the file is absent, unreadable, of a shape this reader does
    not know, or about other inputs. Never raises for the file's content."""
    path = Path(model_dir) / KINSHIP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        return _parse(data, inputs)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


# ------------------------------------------------------------------------------ the reader

_NAMES = ("inputs", "models", "names", "input_models")
_PAIRWISE = ("pairwise", "kinship", "inputs", "values", "matrix", "input_kinship")
_OUTPUT = ("output", "with_output", "vs_output", "output_kinship", "inputs_vs_output")
_A, _B = ("a", "model_a", "first"), ("b", "model_b", "second")


def _first(data: dict, keys, kind) -> Any:
    return next((data[k] for k in keys if isinstance(data.get(k), kind)), None)


def _metric(name) -> Optional[str]:
    name = ALIASES.get(name, name) if isinstance(name, str) else None
    return name if name in METRICS else None


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _values(record: dict) -> Values:
    """``{metric: value}`` from a record (its own keys, or its ``values`` mapping)."""
    source = record.get("values") if isinstance(record.get("values"), dict) else record
    return {_metric(k): _number(v) for k, v in source.items() if _metric(k)}


def _is_name_list(value) -> bool:
    return isinstance(value, list) and value and all(isinstance(v, str) for v in value)


def _parse(data: dict, inputs: list[str]) -> Optional[MergeKinship]:
    if not isinstance(data, dict):
        return None
    block = next((data[k] for k in _PAIRWISE if isinstance(data.get(k), dict)), None)
    names = next((data[k] for k in _NAMES if _is_name_list(data.get(k))), None)
    if names is None and block is not None:
        names = next((block[k] for k in _NAMES if _is_name_list(block.get(k))), None)
    order = _match(names, inputs)
    if order is None:
        return None
    n = len(inputs)
    pairs: dict[tuple[int, int], Values] = {}
    records = next((data[k] for k in _PAIRWISE if isinstance(data.get(k), list)), None)
    if block is not None:
        grid = block.get("values") if isinstance(block.get("values"), dict) else block
        for metric, matrix in grid.items():
            if _metric(metric) and isinstance(matrix, list):
                for i in range(n):
                    for j in range(i + 1, n):
                        a, b = sorted((order[i], order[j]))
                        pairs.setdefault((a, b), {})[_metric(metric)] = _number(matrix[i][j])
    elif records is not None:
        for record in records:
            a = order[names.index(_first(record, _A, str))]
            b = order[names.index(_first(record, _B, str))]
            pairs[tuple(sorted((a, b)))] = _values(record)
    with_output = [{} for _ in range(n)]
    output = next((data[k] for k in _OUTPUT if isinstance(data.get(k), (dict, list))), None)
    if isinstance(output, dict) and isinstance(output.get("values"), dict):
        output = output["values"]
    if isinstance(output, dict):
        for key, value in output.items():
            if _metric(key) and isinstance(value, list):  # {metric: [per input]}
                for i, v in enumerate(value[:n]):
                    with_output[order[i]][_metric(key)] = _number(v)
            elif key in names and isinstance(value, dict):  # {input: {metric: value}}
                with_output[order[names.index(key)]] = _values(value)
    elif isinstance(output, list):
        for record in output:
            name = _first(record, ("model", "input", "name"), str)
            with_output[order[names.index(name)]] = _values(record)
    metrics = [m for m in METRICS if any(m in v for v in [*pairs.values(), *with_output])]
    if not metrics or (n > 1 and len(pairs) < n * (n - 1) // 2):
        return None
    return MergeKinship(inputs=list(inputs), ancestor=_first(data, ("base", "ancestor"), str),
                        metrics=metrics, pairs=pairs, with_output=with_output,
                        source=KINSHIP_FILE)


def _match(names: Optional[list[str]], inputs: list[str]) -> Optional[list[int]]:
    """``order[k]``: the index in ``inputs`` of the file's k-th name, or None when the file is
    about other models. Names match exactly or by their last path component (a file that names
    them otherwise is not trusted: the caller measures the kinship itself)."""
    if names is None or len(names) != len(inputs):
        return None

    def short(ref: str) -> str:
        return Path(str(ref).partition("@")[0].rstrip("/")).name

    for key in (str, short):
        wanted = [key(i) for i in inputs]
        if len(set(wanted)) == len(wanted) and sorted(map(key, names)) == sorted(wanted):
            return [wanted.index(key(name)) for name in names]
    return None
