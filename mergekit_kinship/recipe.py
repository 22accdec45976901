"""The evolution recipe: what to merge, how, how to score it, and when to stop.

A recipe is a YAML file validated up front by pydantic (``extra="forbid"`` everywhere), so an
unknown key or a misspelled merge parameter is an error that names its field, even where mergekit
itself would silently fall back to a default. Paths in a recipe are relative to the recipe file.

The merge methods a two-parent merge can use live in one registry (:data:`MERGE_METHODS`), each
with the role of ``base_model`` in its mergekit YAML:

- ``parent_a``: endpoint interpolation (``slerp``); parent A is the t = 0 end. The shared ancestor
  is never put in a slerp.
- ``ancestor``: task-vector methods (``task_arithmetic``, ``ties``, ``dare_*``, ``breadcrumbs``,
  ``della``, ...): deltas are taken against the shared ancestor, which stays the same for the
  whole family tree so deltas remain well defined.
- ``none``: ``linear`` must not have a ``base_model``.
- ``optional``: ``nuslerp`` runs on task vectors of the ancestor (``use_base: true``, the
  default) or interpolates the two parents directly (``use_base: false``; mergekit's nuslerp then
  wants exactly two non-base models, so parent A cannot be its base_model).

Importing this module is cheap (pydantic + yaml; the evaluation settings model comes from
:mod:`mergekit_kinship.evaluation`); nothing here touches weights or the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergekit_kinship.errors import UserError
from mergekit_kinship.evaluation import EvaluationSettings
from mergekit_kinship.planner import STRATEGIES

# ---------------------------------------------------------------------------------------------
# Merge method registry
# ---------------------------------------------------------------------------------------------

BaseRole = Literal["parent_a", "ancestor", "none", "optional"]


@dataclass(frozen=True)
class MergeMethodSpec:
    """What a two-parent merge with one mergekit method needs.

    ``shared``: parameters that apply to the whole merge (mergekit's ``parameters:``).
    ``per_model``: parameters set per parent (mergekit's ``models[i].parameters``); mergekit also
    accepts them under the global ``parameters:`` as a default for both parents.
    ``random``: the method samples (DARE, DELLA), so the recipe seed is passed to mergekit.
    """

    name: str
    base: BaseRole
    shared: frozenset[str] = frozenset()
    per_model: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    random: bool = False


MERGE_METHODS: dict[str, MergeMethodSpec] = {}


def register_method(spec: MergeMethodSpec) -> MergeMethodSpec:
    """Make a merge method available by name; a duplicate name is an error (like mergekit's)."""
    if spec.name in MERGE_METHODS:
        raise ValueError(f"merge method {spec.name!r} is already registered")
    MERGE_METHODS[spec.name] = spec
    return spec


_TA_SHARED = frozenset({"int8_mask", "normalize", "rescale", "lambda"})
_TA_MODEL = frozenset({"weight", "density"})
_W = frozenset({"weight"})

register_method(MergeMethodSpec("slerp", "parent_a", frozenset({"t"}), required=frozenset({"t"})))
register_method(MergeMethodSpec("nuslerp", "optional",
                                frozenset({"nuslerp_row_wise", "nuslerp_flatten"}), _W, _W))
register_method(MergeMethodSpec("linear", "none", frozenset({"normalize"}), _W, _W))
register_method(MergeMethodSpec("task_arithmetic", "ancestor", _TA_SHARED, _TA_MODEL, _W))
register_method(MergeMethodSpec("ties", "ancestor", _TA_SHARED, _TA_MODEL, _W))
register_method(MergeMethodSpec("dare_ties", "ancestor", _TA_SHARED, _TA_MODEL, _W, random=True))
register_method(MergeMethodSpec("dare_linear", "ancestor", _TA_SHARED, _TA_MODEL, _W, random=True))
register_method(MergeMethodSpec("breadcrumbs", "ancestor", _TA_SHARED,
                                _TA_MODEL | {"gamma"}, _W))
register_method(MergeMethodSpec("breadcrumbs_ties", "ancestor", _TA_SHARED,
                                _TA_MODEL | {"gamma"}, _W))
register_method(MergeMethodSpec("della", "ancestor", _TA_SHARED, _TA_MODEL | {"epsilon"}, _W,
                                random=True))
register_method(MergeMethodSpec("della_linear", "ancestor", _TA_SHARED,
                                _TA_MODEL | {"epsilon"}, _W, random=True))
register_method(MergeMethodSpec("sce", "ancestor", frozenset({"int8_mask", "select_topk"})))
register_method(MergeMethodSpec("model_stock", "ancestor", frozenset({"filter_wise"})))

# The paper's SLERP template (authors' notebook): t per layer, interpolated over the depth.
PAPER_SLERP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]

# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

Scalar = Union[bool, int, float]
ScalarOrGradient = Union[Scalar, list[float]]


class ConditionalValue(BaseModel):
    """One entry of a mergekit parameter list: a value for the tensors that match ``filter``."""

    model_config = ConfigDict(extra="forbid")
    filter: Optional[str] = None
    value: ScalarOrGradient


ParameterValue = Union[ScalarOrGradient, list[ConditionalValue], ConditionalValue]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpec(BaseModel):
    """A model of the recipe: a local folder (``path``) or a hub repository (``hub``)."""

    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    path: Optional[str] = None
    hub: Optional[str] = None
    revision: Optional[str] = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' or 'hub'")
        if self.hub is not None and not _HUB_ID.match(self.hub):
            raise ValueError(f"hub id {self.hub!r} is not of the form org/name")
        return self

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path or self.hub).name

    @property
    def reference(self) -> str:
        """What mergekit and transformers load: an absolute folder, or ``org/name[@revision]``."""
        if self.path is not None:
            return self.path
        return f"{self.hub}@{self.revision}" if self.revision else self.hub


class TokenizerSpec(BaseModel):
    """mergekit's ``tokenizer:`` section: which vocabulary a child gets.

    Needed when parents' vocabularies differ (a fine-tune that added tokens, e.g.
    openchat-3.5-1210's 32002 rows over Mistral-7B's 32000): mergekit refuses such parents
    unless told. ``union`` keeps every parent's tokens, ``base`` takes mergekit's base model's
    (parent A for slerp), or name a model. Checked in full by mergekit's own schema when a
    child's YAML is validated.
    """

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    pad_to_multiple_of: Optional[int] = Field(None, ge=1)


class MergeTemplate(BaseModel):
    """How every child is merged from its two parents."""

    model_config = ConfigDict(extra="forbid")
    method: str = "slerp"
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    model_parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    use_base: Optional[bool] = None  # nuslerp only: task vectors of the ancestor (default) or not
    tokenizer: Optional[TokenizerSpec] = None  # parents with different vocabularies

    @model_validator(mode="before")
    @classmethod
    def _paper_default(cls, data):
        # The paper's t template is the default of a slerp merge only (and of no merge section).
        if isinstance(data, dict) and data.get("method", "slerp") == "slerp" \
                and "parameters" not in data:
            data = {**data, "parameters": {"t": PAPER_SLERP_T}}
        return data

    @model_validator(mode="after")
    def _check_method(self):
        spec = MERGE_METHODS.get(self.method)
        if spec is None:
            raise ValueError(f"unknown merge method {self.method!r} "
                             f"(two-parent methods: {', '.join(sorted(MERGE_METHODS))})")
        allowed = spec.shared | spec.per_model
        for key in self.parameters:
            if key not in allowed:
                raise ValueError(f"parameters.{key}: not a parameter of {self.method} "
                                 f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
        for key in self.model_parameters:
            if key not in spec.per_model:
                raise ValueError(f"model_parameters.{key}: not a per-model parameter of "
                                 f"{self.method} (allowed: {', '.join(sorted(spec.per_model)) or 'none'})")
        for key in spec.required:
            if key not in self.parameters and key not in self.model_parameters:
                raise ValueError(f"{self.method} needs parameter '{key}'")
        if self.use_base is not None and spec.base != "optional":
            raise ValueError(f"use_base: only nuslerp takes it, not {self.method}")
        return self

    @property
    def spec(self) -> MergeMethodSpec:
        return MERGE_METHODS[self.method]

    @property
    def base_role(self) -> Literal["parent_a", "ancestor", "none"]:
        """Which model is mergekit's ``base_model`` in a child's YAML."""
        if self.spec.base == "optional":
            return "ancestor" if self.use_base in (None, True) else "none"
        return self.spec.base


class Stopping(BaseModel):
    """When the loop ends. The paper's rule (top-k unchanged after a generation) always applies."""

    model_config = ConfigDict(extra="forbid")
    max_generations: int = Field(10, ge=1)
    max_merges: Optional[int] = Field(None, ge=1)
    saturation: Optional[float] = Field(None, gt=-1.0, le=1.0)  # mutual PCC of the top-k


class Recipe(BaseModel):
    """A validated recipe; model paths are absolute once loaded by :func:`load_recipe`."""

    model_config = ConfigDict(extra="forbid")
    base: ModelSpec
    models: list[ModelSpec] = Field(min_length=2)
    top_k: int = Field(3, ge=2)
    strategy: str = "kinship"
    metric: Literal["pcc", "cs", "ed"] = "pcc"
    merge: MergeTemplate = Field(default_factory=MergeTemplate)
    evaluation: EvaluationSettings
    stopping: Stopping = Field(default_factory=Stopping)
    seed: int = 0

    @field_validator("base", mode="before")
    @classmethod
    def _base_str(cls, v):
        return _model_from_str(v)

    @field_validator("models", mode="before")
    @classmethod
    def _models_str(cls, v):
        return [_model_from_str(m) for m in v] if isinstance(v, list) else v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v):
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r} (one of: {', '.join(STRATEGIES)})")
        return v

    @model_validator(mode="after")
    def _unique_names(self):
        names = [m.display_name for m in self.models]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two foundation models are named {name!r}; give them 'name:'")
        return self

    @property
    def foundation_names(self) -> list[str]:
        return [m.display_name for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _model_from_str(value, base_dir: Path = Path(".")):
    """A bare string is a hub id when it looks like ``org/name`` and is no local folder."""
    if not isinstance(value, str):
        return value
    local = (value.startswith(("/", "./", "../", "~")) or not _HUB_ID.match(value)
             or (base_dir / value).exists())
    return {"path": value} if local else {"hub": value}


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "union[")))
    msg = first["msg"].removeprefix("Value error, ")
    extra = "" if len(err.errors()) == 1 else f" (and {len(err.errors()) - 1} more)"
    return f"{source}: {loc or 'recipe'}: {msg}{extra}"


def parse_recipe(data: Any, base_dir: Path, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; relative paths are resolved against ``base_dir``.

    Raises :class:`UserError` with one line naming the first bad field. Touches no weights.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping")
    base_dir = Path(base_dir).resolve()
    data = dict(data)
    # Decide "folder or hub id" for bare strings relative to the recipe file, not the cwd.
    if "base" in data:
        data["base"] = _model_from_str(data["base"], base_dir)
    if isinstance(data.get("models"), list):
        data["models"] = [_model_from_str(m, base_dir) for m in data["models"]]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_error(source, err)) from None
    check_top_k(recipe, source)
    for spec in [recipe.base, *recipe.models]:
        if spec.path is not None:
            spec.path = str((base_dir / Path(spec.path).expanduser()).resolve())
    ev = recipe.evaluation
    if ev.include_path is not None:
        ev.include_path = str((base_dir / Path(ev.include_path).expanduser()).resolve())
    return recipe


def check_top_k(recipe: Recipe, source: str = "recipe") -> None:
    """``top_k`` fits the pool it first selects from (again after a --max-merges override)."""
    n = len(recipe.models)
    first_children = n * (n - 1) // 2  # generation 1 merges every foundation pair
    if recipe.stopping.max_merges is not None:
        first_children = min(first_children, recipe.stopping.max_merges)
    if recipe.top_k > n + first_children:
        # The first top-k is chosen from the foundation models and generation 1's children; a
        # larger k keeps every model and selects nothing.
        raise UserError(f"{source}: top_k: {recipe.top_k} is larger than the pool it selects "
                        f"from ({n} foundation models + {first_children} children of "
                        f"generation 1)")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (see :func:`parse_recipe`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_recipe(data, path.parent, source=str(path))


def missing_local_models(recipe: Recipe) -> list[str]:
    """Local model folders of the recipe that do not exist (yet)."""
    return [s.path for s in [recipe.base, *recipe.models]
            if s.path is not None and not Path(s.path, "config.json").is_file()]
