"""The run summary: one typed schema for ``RUN_DIR/summary.json``, read by every consumer.

``evolve`` writes it after every generation (:func:`write_summary`); ``card``, ``report``,
``compare``, ``plan`` and the demo read it only through :func:`load_summary`, which validates it
against :class:`RunSummary` and its cross-references (parents, generations, best) and turns any
problem into one :class:`~mergekit_kinship.errors.UserError` line that says how to regenerate it.

Format history: format 1 is what every version so far wrote; it loads unchanged (the kinship
metric's alias names ``cs``/``ed`` are read as ``cosine``/``euclidean``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, model_serializer,
                      model_validator)

from mergekit_kinship.errors import UserError

SUMMARY_FILE = "summary.json"
FORMAT = 1
REGENERATE = "run `mergekit-kinship evolve` on this run directory again to rewrite it"


class _Schema(BaseModel):
    # Unknown keys are kept, not refused: a newer version may add fields an older reader ignores.
    model_config = ConfigDict(extra="allow")


class BaseInfo(_Schema):
    """The shared base (the ancestor the deltas are taken from)."""

    name: str
    path: Optional[str] = None
    hub_id: Optional[str] = None


class Screening(_Schema):
    """Why a child was screened out by staged evaluation (:mod:`mergekit_kinship.staging`):
    after ``stage`` (1-based), the upper confidence bound on its full fitness, ``bound``, was
    below ``threshold``, the fitness of ``against`` (the k-th best model). All None for a
    partial score imported from a scores file (the user stopped it)."""

    stage: Optional[int] = None
    bound: Optional[float] = None
    threshold: Optional[float] = None
    against: Optional[str] = None


class ModelEntry(_Schema):
    """One model of the run: a foundation model or a child (merged by this run or elsewhere)."""

    name: str
    # a pool member (foundation model or child), or a reference outside the pool: the shared base
    # itself, or a one-shot baseline merge of every foundation model
    kind: Literal["foundation", "child", "base", "baseline"]
    path: Optional[str] = None  # its weights here; None when pruned (--keep) or a hub model
    hub_id: Optional[str] = None
    identity: Optional[str] = None
    generation: int = 0
    parents: list[str] = Field(default_factory=list)
    exploration: bool = False
    method: Optional[str] = None
    yaml: Optional[str] = None
    parents_kinship: Optional[dict[str, Optional[float]]] = None
    scores: dict[str, float] = Field(default_factory=dict)
    stderr: dict[str, float] = Field(default_factory=dict)
    fitness: Optional[float] = None
    gain: Optional[float] = None  # fitness minus the mean of its parents' fitness
    vs_base: Optional[float] = None  # fitness minus the base model's (when the base was scored)
    failed: Optional[str] = None  # its evaluation failed for good: skipped, never in the pool
    # Standard errors of fitness, gain and vs_base (mergekit_kinship.uncertainty: paired over
    # per-item results where there are some, else from lm-eval's per-task stderr); None: unknown.
    fitness_stderr: Optional[float] = None
    gain_stderr: Optional[float] = None
    vs_base_stderr: Optional[float] = None
    # Items scored per task and each task's item count (empty where unknown). Fewer items than a
    # task has: a partial score, and the model is screened out (never in the top-k).
    items: dict[str, int] = Field(default_factory=dict)
    items_total: dict[str, int] = Field(default_factory=dict)
    screened_out: Optional[Screening] = None
    items_key: Optional[str] = None  # its per-item results: RUN_DIR/items/<items_key>.json

    @property
    def partial(self) -> bool:
        return self.screened_out is not None

    @model_validator(mode="before")
    @classmethod
    def _metric_names(cls, data):
        # Format 1 runs with a cs/ed recipe stored the parents' kinship under the alias.
        if isinstance(data, dict) and isinstance(data.get("parents_kinship"), dict):
            data = {**data, "parents_kinship": {
                _canonical(k): v for k, v in data["parents_kinship"].items()}}
        return data


class GenerationRecord(_Schema):
    """What one generation made and selected."""

    index: int
    children: list[str] = Field(default_factory=list)
    top_k: list[str] = Field(default_factory=list)
    best: Optional[str] = None
    best_fitness: Optional[float] = None
    mean_fitness: Optional[float] = None
    top_k_mutual_pcc: Optional[float] = None
    failed: list[str] = Field(default_factory=list)
    screened: list[str] = Field(default_factory=list)  # its children screened out (staged)


class PoolKinship(BaseModel):
    """The pool's kinship matrix under the run's metric (``values[i][j]``, None if unknown)."""

    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(default_factory=list)
    metric: str = "pcc"
    values: list[list[Optional[float]]] = Field(default_factory=list)
    # The error bound of each value that comes from delta sketches (None where it is exact: a
    # pair the run measured, or the merge hook did); None when every value is exact.
    bounds: Optional[list[list[Optional[float]]]] = None

    @model_validator(mode="before")
    @classmethod
    def _format_1(cls, data):
        # Format 1 stored the matrix under the metric's own key: {"names": [...], "pcc": [[...]]}.
        if isinstance(data, dict) and "values" not in data:
            keys = [k for k in data if k not in ("names", "metric", "bounds")]
            if len(keys) == 1:
                return {"names": data.get("names", []), "metric": _canonical(keys[0]),
                        "values": data[keys[0]], "bounds": data.get("bounds")}
        return data

    @model_serializer
    def _as_format_1(self) -> dict[str, Any]:
        # summary.json keeps format 1's shape: the matrix under the metric's own name.
        data: dict[str, Any] = {"names": list(self.names), self.metric: self.values}
        if self.bounds is not None:
            data["bounds"] = self.bounds
        return data


def _canonical(metric: Any) -> Any:
    from mergekit_kinship.metrics import ALIASES

    return ALIASES.get(metric, metric) if isinstance(metric, str) else metric


class RunSummary(_Schema):
    """Everything a finished (or interrupted) run knows, as ``summary.json`` holds it."""

    format: Literal[1] = FORMAT
    recipe: dict[str, Any] = Field(default_factory=dict)
    strategy: str
    top_k: int
    metric: str = "pcc"
    base: Optional[BaseInfo] = None
    evaluation: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelEntry]
    generations: list[GenerationRecord] = Field(default_factory=list)
    pool_kinship: PoolKinship = Field(default_factory=PoolKinship)
    saturation_threshold: Optional[float] = None
    stopped: Optional[str] = None
    merges: int = 0
    best: Optional[str] = None
    failed: dict[str, ModelEntry] = Field(default_factory=dict)
    # Not pool members: the base model's own score and one-shot baselines, at the same evaluation
    references: dict[str, ModelEntry] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data):
        if isinstance(data, dict) and "metric" in data:
            data = {**data, "metric": _canonical(data["metric"])}
        return data

    @model_validator(mode="after")
    def _references(self):
        if not self.models:
            raise ValueError("models: empty")
        known = set(self.models) | set(self.failed)
        for model_id, model in [*self.models.items(), *self.failed.items(),
                                *self.references.items()]:
            for parent in model.parents:
                if parent not in self.models:
                    raise ValueError(f"models.{model_id}.parents: unknown model {parent!r}")
        for i, generation in enumerate(self.generations):
            for field in ("children", "top_k", "failed", "screened"):
                for model_id in getattr(generation, field):
                    if model_id not in known:
                        raise ValueError(f"generations[{i}].{field}: unknown model {model_id!r}")
        if self.best is not None and self.best not in self.models:
            raise ValueError(f"best: unknown model {self.best!r}")
        return self

    # --- questions every reader asks ----------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self.evaluation.get("tasks") or [])

    def foundation_ids(self) -> list[str]:
        return [i for i, m in self.models.items() if m.kind == "foundation"]

    def child_ids(self) -> list[str]:
        return [i for i, m in self.models.items() if m.kind == "child"]

    def children_in_order(self) -> list[str]:
        """Children in the order the run made them (generation by generation)."""
        return [cid for g in self.generations for cid in g.children]

    def final_top_k(self) -> list[str]:
        return list(self.generations[-1].top_k) if self.generations else []

    def base_reference(self) -> Optional[ModelEntry]:
        """The base model's own entry, when the run scored it."""
        return next((m for m in self.references.values()
                     if m.kind == "base" and m.fitness is not None), None)

    def baselines(self) -> dict[str, ModelEntry]:
        """The scored one-shot baselines, by id."""
        return {i: m for i, m in self.references.items()
                if m.kind == "baseline" and m.fitness is not None}

    def items_scored(self) -> int:
        """Items scored over every model of the pool and every reference (0 where unknown)."""
        return sum(sum(m.items.values()) for m in [*self.models.values(),
                                                   *self.references.values()])

    def best_child(self) -> Optional[str]:
        """The fittest fully scored child of the run (ties: the first made)."""
        children = [i for i in self.children_in_order() if self.models.get(i) is not None
                    and self.models[i].fitness is not None and not self.models[i].partial]
        return max(children, key=lambda i: (self.models[i].fitness, -children.index(i)),
                   default=None)

    def best_foundation_fitness(self) -> Optional[float]:
        values = [m.fitness for m in self.models.values()
                  if m.kind == "foundation" and m.fitness is not None]
        return max(values) if values else None

    def entry(self, model_id: str) -> ModelEntry:
        """A model of the pool or a failed child."""
        return self.models.get(model_id) or self.failed[model_id]

    def find(self, name_or_id: str, what: str = "CHILD") -> str:
        """The id of the model called ``name_or_id`` (its id, or its unique display name)."""
        if name_or_id in self.models:
            return name_or_id
        named = [i for i, m in self.models.items() if m.name == name_or_id]
        if len(named) == 1:
            return named[0]
        if named:
            raise UserError(f"{what}: several models are named {name_or_id!r}; use its id "
                            f"({', '.join(named)})")
        raise UserError(f"{what}: no model {name_or_id!r} in this run "
                        f"(names: {', '.join(m.name for m in self.models.values())})")

    def lineage(self, model_id: str) -> list[str]:
        """``model_id`` and all its ancestors, each once, oldest generation first (foundation
        models before children of their generation, then in the run's order)."""
        seen: set[str] = set()
        stack = [model_id]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.models[current].parents)
        order = {m: i for i, m in enumerate(self.models)}
        return sorted(seen, key=lambda m: (self.models[m].generation,
                                           self.models[m].kind != "foundation", order[m]))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_summary(data: Any, where: str = SUMMARY_FILE) -> RunSummary:
    """Validate a summary mapping; UserError (one line naming the field) if it is not one."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: not a run summary (a JSON object); {REGENERATE}")
    if data.get("format") != FORMAT:
        raise UserError(f"{where}: summary format {data.get('format')!r} is not {FORMAT} "
                        f"(written by another version of mergekit-kinship); {REGENERATE}")
    try:
        return RunSummary.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{where}: {loc + ': ' if loc else ''}{msg}; {REGENERATE}") from None


def summary_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def load_summary(run_dir: str | os.PathLike) -> RunSummary:
    """Read and validate ``RUN_DIR/summary.json``; UserError (one line) when the folder is not a
    run directory, the file is missing or truncated, or it fails the schema."""
    path = summary_path(run_dir)
    if not Path(run_dir).is_dir():
        raise UserError(f"RUN_DIR {run_dir} is not a folder")
    if not path.is_file():
        raise UserError(f"{path} not found: run `mergekit-kinship evolve` on this run "
                        f"directory first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); {REGENERATE}") from None
    return parse_summary(data, str(path))


def write_summary(run_dir: str | os.PathLike, summary: RunSummary) -> Path:
    """Write ``summary`` to ``RUN_DIR/summary.json`` atomically."""
    from mergekit_kinship.atomic_io import write_json

    return write_json(summary_path(run_dir), summary.to_json())
