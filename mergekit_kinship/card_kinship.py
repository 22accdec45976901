"""The kinship a merged model's card shows: its input models pairwise, and each with the merge.

Two sources, one result (:class:`CardKinship`):

- ``OUT_DIR/kinship.json``, written during the merge by ``mergekit-kinship merge`` (its format is
  :class:`mergekit_kinship.merge_kinship.MergeKinship`), used when it is about the same inputs
  and the same ancestor as the card (:func:`from_kinship_json`);
- :func:`measure`: the streaming engine over the inputs and the merged folder, each read once.

Importing this module is cheap; torch is imported by :func:`measure` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from mergekit_kinship.merge_kinship import KINSHIP_FILE, read_merge_kinship
from mergekit_kinship.metrics import METRICS

Values = dict[str, Optional[float]]  # metric -> value (None: undefined, e.g. a zero delta)


@dataclass
class CardKinship:
    """``pairs[(i, j)]`` (i < j, indices into ``inputs``) and ``with_output[i]`` map each metric to
    its value; ``source`` says where the numbers come from (``kinship.json`` or ``measured``)."""

    inputs: list[str]
    ancestor: Optional[str]
    metrics: list[str]
    pairs: dict[tuple[int, int], Values] = field(default_factory=dict)
    with_output: list[Values] = field(default_factory=list)
    source: str = "measured"


def measure(inputs: list[str], ancestor: str, output: str | os.PathLike,
            metrics=METRICS, progress: bool = False) -> CardKinship:
    """Kinship of ``inputs`` pairwise and of each with ``output`` (model references: folders or
    hub ids), deltas from ``ancestor``; one streaming pass, each model read once (memory: one
    block of tensors, float64 accumulators). UserError as the engine raises them."""
    from mergekit_kinship.streaming_kinship import kinship_matrix

    matrix = kinship_matrix([*inputs, str(output)], ancestor, metrics=tuple(metrics),
                            progress=progress)
    n = len(inputs)
    return CardKinship(
        inputs=list(inputs), ancestor=ancestor, metrics=list(matrix.metrics),
        pairs={(i, j): {m: matrix.values[m][i][j] for m in matrix.metrics}
               for i in range(n) for j in range(i + 1, n)},
        with_output=[{m: matrix.values[m][i][n] for m in matrix.metrics} for i in range(n)],
        source="measured")


def same_model(ref: str) -> str:
    """A key under which two spellings of one local folder are equal."""
    return os.path.realpath(ref) if os.path.exists(ref) else str(ref)


def from_kinship_json(model_dir: str | os.PathLike, inputs: list[str],
                      ancestor: Optional[str]) -> Optional[CardKinship]:
    """The kinship ``model_dir/kinship.json`` recorded for the merge of ``inputs`` (as the config
    names them) against ``ancestor``, in ``inputs``' order; None when there is no such file, or it
    is about other models or another ancestor (the caller then measures)."""
    recorded = read_merge_kinship(model_dir)
    if recorded is None:
        return None
    keys = [same_model(m) for m in recorded.models]
    wanted = [same_model(m) for m in inputs]
    if sorted(keys) != sorted(wanted) or len(set(keys)) != len(keys):
        return None
    if ancestor is not None and same_model(recorded.ancestor) != same_model(ancestor):
        return None
    at = [keys.index(w) for w in wanted]  # input i of the card is model at[i] of the file
    n = len(inputs)
    metrics = [m for m in METRICS if m in recorded.metrics]
    return CardKinship(
        inputs=list(inputs), ancestor=recorded.ancestor, metrics=metrics,
        pairs={(i, j): {m: recorded.models_kinship[m][at[i]][at[j]] for m in metrics}
               for i in range(n) for j in range(i + 1, n)},
        with_output=[{m: recorded.output_kinship[m][at[i]] for m in metrics} for i in range(n)],
        source=KINSHIP_FILE)
