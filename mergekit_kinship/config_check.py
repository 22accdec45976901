"""Diagnose an existing mergekit config before merging: the kinship of the models it merges.

:func:`check_config` reads a mergekit YAML with mergekit's own schema
(``mergekit.config.MergeConfiguration``: ``models:`` lists, ``slices:`` with layer ranges,
``modules:``, per-model parameters), takes every model it merges and the shared ancestor, and
measures their pairwise kinship, every metric, in one streaming pass over the weights (nothing is
merged). Each pair then gets one line of what the paper's findings suggest:

- **near-duplicates**: PCC above the saturation threshold (the paper's 0.9, §4.4, by default):
  a merge of the two is unlikely to gain over either;
- **strongly conflicting deltas**: sign conflict at or above :data:`CONFLICT_THRESHOLD`: where
  their deltas are averaged (linear, SLERP) much of them cancels; a sign-consensus method (TIES,
  DARE-TIES) elects one sign per weight first, and may fit better.

The ancestor is the config's ``base_model`` when its method takes deltas against it (a
task-vector method: mergekit_kinship.merge_methods says which), else the ``base`` given (the CLI's
``--base``). Model paths are read as mergekit reads them: relative to the working directory; a hub
id needs the Hugging Face cache when offline. Kinship always compares the whole models, every
tensor: a config that takes layer ranges (``slices:``) gets a note saying which layers it uses.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from mergekit_kinship.errors import UserError
from mergekit_kinship.findings import PAPER_SATURATION
from mergekit_kinship.metrics import METRICS

# Sign conflict from which a pair's deltas count as strongly conflicting. Unrelated deltas sit at
# 0.5; for jointly normal deltas of PCC ρ it is arccos(ρ)/π, so 0.40 is ρ ≈ 0.31. Measured on the
# built-in family (benchmarks/sign_conflict_methods.py, BENCHMARKS.md): TIES gained more than
# SLERP for 8 of its 9 sibling pairs (sign conflict 0.38-0.44; 5 of the 6 at 0.40 or more) and
# less for its near-duplicate pair (0.12); sign conflict tracked TIES − SLERP with r = +0.58 over
# the 10 pairs (PCC: −0.52). Ten pairs are a hint, not a law: hence "may fit better".
CONFLICT_THRESHOLD = 0.40


@dataclass
class MergeInputs:
    """What a mergekit config merges, as it names the models (``path[@revision]``)."""

    method: str
    models: list[str]  # every input model, in order of first mention
    base_models: list[str]  # the config's base_model, then any slice's own
    layer_ranges: dict[str, list[tuple[int, int]]]  # model -> the layer ranges its slices take


@dataclass
class PairFinding:
    """One pair of input models and what the paper's findings suggest for it."""

    a: str
    b: str
    pcc: Optional[float]
    sign_conflict: Optional[float]
    near_duplicates: bool
    conflicting: bool
    advice: str


@dataclass
class ConfigCheck:
    """The result of :func:`check_config`. ``matrix`` is a
    :class:`~mergekit_kinship.streaming_kinship.KinshipMatrix` of every metric."""

    config: str
    method: str
    ancestor: str
    ancestor_source: str
    models: list[str]
    matrix: object
    pairs: list[PairFinding]
    saturation: float
    conflict_threshold: float
    sign_consensus: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "matrix"}
        out["matrix"] = self.matrix.to_dict()
        return out


def _ref(reference) -> str:
    """How a mergekit ``ModelReference`` names its model (``+lora`` kept, for a clear error)."""
    text = str(reference.model)
    return f"{text}+{reference.lora}" if reference.lora else text


def read_merge_config(path: str | Path) -> MergeInputs:
    """The method, input models, base models and layer ranges of the mergekit YAML at ``path``.

    Raises :class:`UserError` for a file that cannot be read or parsed, a multi-document
    (``mergekit-multi``) file, or a config mergekit's schema refuses."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except OSError as err:
        raise UserError(f"{path}: cannot read the config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        what = (f"{len(documents)} documents (a mergekit-multi config): check one merge at a time"
                if len(documents) > 1 else "no mapping: not a mergekit config")
        raise UserError(f"{path}: {what}")
    from mergekit.config import MergeConfiguration

    try:
        config = MergeConfiguration.model_validate(documents[0])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UserError(f"{path}: not a mergekit config: {where}: {first['msg']}") from None
    except (RuntimeError, ValueError) as err:  # mergekit's own validators raise RuntimeError
        raise UserError(f"{path}: not a mergekit config: {str(err).splitlines()[0]}") from None

    models: list[str] = []
    bases = [_ref(config.base_model)] if config.base_model else []
    ranges: dict[str, list[tuple[int, int]]] = {}

    def add_slices(slices):
        for piece in slices or []:
            if piece.base_model and _ref(piece.base_model) not in bases:
                bases.append(_ref(piece.base_model))
            for source in piece.sources:
                models.append(_ref(source.model))
                ranges.setdefault(_ref(source.model), []).append(tuple(source.layer_range))

    models += [_ref(m.model) for m in config.models or []]
    add_slices(config.slices)
    for module in (config.modules or {}).values():
        models += [_ref(m.model) for m in module.models or []]
        add_slices(module.slices)
    return MergeInputs(method=config.merge_method, models=list(dict.fromkeys(models)),
                       base_models=bases, layer_ranges=ranges)


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def choose_ancestor(inputs: MergeInputs, base: Optional[str], config: str) -> tuple[str, str]:
    """(ancestor, where it comes from): ``base`` when given, else the config's base_model when
    its method takes deltas against it; UserError (one line) when neither applies."""
    from mergekit_kinship.merge_methods import method_info

    if base is not None:
        return str(base), "--base"
    try:
        role = method_info(inputs.method).base
    except ValueError as err:
        raise UserError(f"{config}: {err}: give the shared ancestor with --base") from None
    if role in ("ancestor", "optional") and inputs.base_models:
        if len(inputs.base_models) > 1:
            raise UserError(f"{config}: slices name different base models "
                            f"({', '.join(inputs.base_models)}): give the shared ancestor with --base")
        return inputs.base_models[0], (f"the config's base_model: {inputs.method} takes the "
                                       f"models' deltas from it")
    why = {"parent_a": "uses base_model as an end point of the merge, not as their ancestor",
           "none": "takes no base_model"}.get(role, "has no base_model")
    raise UserError(f"{config}: {inputs.method} {why}: give the shared ancestor with --base")


def pair_advice(pcc: Optional[float], conflict: Optional[float], *, method: str, consensus: bool,
                saturation: float, threshold: float) -> tuple[bool, bool, str]:
    """(near-duplicates, conflicting, one line of advice) for a pair's PCC and sign conflict."""
    near = pcc is not None and pcc > saturation
    clash = conflict is not None and conflict >= threshold
    said = []
    if near:
        said.append(f"near-duplicates (PCC {pcc:.4f} > {saturation:.2f}, the paper's saturation, "
                    f"§4.4): a merge of the two is unlikely to gain over either")
    if clash:
        tail = (f"{method} elects one sign per weight, which suits them" if consensus else
                f"averaged by {method}, they partly cancel; a sign-consensus method (ties, "
                f"dare_ties) may fit better")
        said.append(f"strongly conflicting deltas (sign conflict {conflict:.4f} ≥ {threshold:.2f}): {tail}")
    if not said:
        pcc_text = "undefined" if pcc is None else f"{pcc:.4f} ≤ {saturation:.2f}"
        conflict_text = "undefined" if conflict is None else f"{conflict:.4f} < {threshold:.2f}"
        said.append(f"no warning (PCC {pcc_text}, sign conflict {conflict_text})")
    return near, clash, "; ".join(said)


def check_config(config: str | Path, base: Optional[str] = None, *,
                 saturation: float = PAPER_SATURATION, conflict: float = CONFLICT_THRESHOLD,
                 include=None, exclude=None, device=None, progress: bool = True) -> ConfigCheck:
    """The kinship of the models a mergekit config merges, and one finding per pair.

    Reads each model's headers, then its weights once (:func:`kinship_matrix`, every metric);
    merges nothing. ``base`` overrides the ancestor taken from the config. Raises
    :class:`UserError` for an unreadable config, no ancestor, fewer than two models besides the
    ancestor, or models that cannot be opened (a hub id offline and not in the cache)."""
    from mergekit_kinship.merge_methods import sign_consensus_methods
    from mergekit_kinship.streaming_kinship import KinshipWarning, kinship_matrix

    if not 0.0 < conflict <= 1.0:
        raise UserError(f"the sign-conflict threshold must be in (0, 1], got {conflict}")
    if not -1.0 < saturation <= 1.0:
        raise UserError(f"the saturation threshold must be in (-1, 1], got {saturation}")
    inputs = read_merge_config(config)
    ancestor, source = choose_ancestor(inputs, base, str(config))
    notes = []
    models = []
    for model in inputs.models + [b for b in inputs.base_models if source == "--base"]:
        if _same_model(model, ancestor):
            notes.append(f"{model} is the ancestor itself: not compared")
        elif not any(_same_model(model, m) for m in models):
            models.append(model)
    notes = list(dict.fromkeys(notes))
    if len(models) < 2:
        raise UserError(f"{config}: {len(models)} model(s) besides the ancestor {ancestor}: "
                        f"kinship needs two")
    if inputs.layer_ranges:
        used = "; ".join(f"{m} layers " + ", ".join(f"[{a}, {b})" for a, b in r)
                         for m, r in inputs.layer_ranges.items())
        notes.append(f"the config takes layer ranges ({used}); kinship compares the whole "
                     f"models, every tensor")
    try:
        with warnings.catch_warnings():  # the engine's notes (e.g. added vocabulary) go to notes
            warnings.simplefilter("ignore", KinshipWarning)
            matrix = kinship_matrix(models, ancestor, metrics=METRICS, include=include,
                                    exclude=exclude, device=device, progress=progress)
    except UserError as err:  # say which config named the model that failed
        raise UserError(f"{config}: {err}") from None
    consensus = inputs.method in sign_consensus_methods()
    pairs = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            pcc = matrix.values["pcc"][i][j]
            clash = matrix.values["sign_conflict"][i][j]
            near, strong, advice = pair_advice(pcc, clash, method=inputs.method, consensus=consensus,
                                               saturation=saturation, threshold=conflict)
            pairs.append(PairFinding(matrix.names[i], matrix.names[j], pcc, clash, near, strong, advice))
    return ConfigCheck(config=str(config), method=inputs.method, ancestor=matrix.base,
                       ancestor_source=source, models=matrix.names, matrix=matrix, pairs=pairs,
                       saturation=saturation, conflict_threshold=conflict, sign_consensus=consensus,
                       notes=notes + matrix.warnings)
