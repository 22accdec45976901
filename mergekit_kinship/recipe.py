"""The evolution recipe: what to merge, how, how to score it, and when to stop.

A recipe is a YAML file validated up front by pydantic (``extra="forbid"`` everywhere), so an
unknown key or a misspelled merge parameter is a one-line error that names its field and the
closest valid name, even where mergekit itself would silently fall back to a default. Paths in a
recipe are relative to the recipe file. ``metric`` takes the names of
:mod:`mergekit_kinship.metrics` (``pcc``, ``cosine``, ``euclidean``, ``sign_conflict``, or an
alias such as the paper's ``cs`` / ``ed``) and keeps the canonical one.

The merge section names any mergekit method that can merge two parents; its parameters, which of
them are required and which model is ``base_model`` come from mergekit's own method specs
(:mod:`mergekit_kinship.merge_methods`, which states the few rules of ours).

Importing this module is cheap (pydantic + yaml; the evaluation settings model comes from
:mod:`mergekit_kinship.evaluation`); validating a merge section imports mergekit. Nothing here
touches weights or the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergekit_kinship.errors import UserError, did_you_mean
from mergekit_kinship.hub import is_hub_id, split_revision
from mergekit_kinship.evaluation.settings import EvaluationSettings
from mergekit_kinship.merge_methods import MergeMethodInfo, method_info
from mergekit_kinship.metrics import canonical
from mergekit_kinship.planner import STRATEGIES
from mergekit_kinship.recipe_errors import FieldError, format_validation_error, yaml_error_text


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
        if self.hub is not None and not is_hub_id(self.hub, org_required=True):
            raise ValueError(f"hub id {self.hub!r} is not of the form org/name")
        if self.hub is not None and "@" in self.hub:
            repo, revision = split_revision(self.hub)
            if self.revision is not None and revision != self.revision:
                raise ValueError(f"hub {self.hub!r} names revision {revision!r}, "
                                 f"revision says {self.revision!r}")
            self.hub, self.revision = repo, revision
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
    """How every child is merged from its two parents: any two-parent method of mergekit."""

    model_config = ConfigDict(extra="forbid")
    method: str = "slerp"
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    model_parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    # Methods whose base is optional (nuslerp): task vectors of the ancestor (default) or none.
    use_base: Optional[bool] = None
    tokenizer: Optional[TokenizerSpec] = None  # parents with different vocabularies

    @model_validator(mode="before")
    @classmethod
    def _paper_default(cls, data):
        # The paper's t template is the default of a slerp merge only (and of no merge section).
        if isinstance(data, dict) and data.get("method", "slerp") == "slerp" \
                and "parameters" not in data:
            data = {**data, "parameters": {"t": PAPER_SLERP_T}}
        return data

    @field_validator("method")
    @classmethod
    def _known_method(cls, name):
        method_info(name)  # ValueError: the closest known name, or why it cannot merge two
        return name

    @model_validator(mode="after")
    def _check_parameters(self):
        info = self.spec
        for key in self.parameters:
            if key not in info.parameters:
                raise FieldError(("parameters", key), f"not a parameter of {self.method}"
                                  + did_you_mean(key, info.parameters))
        for key in self.model_parameters:
            if key not in info.per_model:
                raise FieldError(("model_parameters", key), f"not a per-model parameter of "
                                  f"{self.method}" + did_you_mean(key, info.per_model))
        for key in sorted(info.required):
            if key not in self.parameters and key not in self.model_parameters:
                raise FieldError(("parameters",), f"{self.method} needs parameter '{key}'")
        if self.use_base is not None and info.base != "optional":
            raise FieldError(("use_base",), f"{self.method} has no optional base_model "
                              f"(its base_model is {_ROLE_TEXT[info.base]})")
        # mergekit binds an `input`-scoped parameter for base_model too, and the ancestor is no
        # parent: a required one given per parent only would fail in the middle of a merge.
        per_parent_only = sorted((info.base_takes & info.required) - set(self.parameters))
        if self.base_role == "ancestor" and per_parent_only:
            raise FieldError(("model_parameters", per_parent_only[0]), f"{self.method} also "
                              f"needs it for base_model (the ancestor): give it under parameters")
        return self

    @property
    def spec(self) -> MergeMethodInfo:
        """What mergekit says the method needs (:func:`.merge_methods.method_info`)."""
        return method_info(self.method)

    @property
    def base_role(self) -> Literal["parent_a", "ancestor", "none"]:
        """Which model is mergekit's ``base_model`` in a child's YAML."""
        role = self.spec.base
        if role == "optional":
            return "ancestor" if self.use_base in (None, True) else "none"
        return role


_ROLE_TEXT = {"parent_a": "parent A", "ancestor": "the shared ancestor", "none": "none"}


class Stopping(BaseModel):
    """When the loop ends. The paper's rule (top-k unchanged after a generation) always applies."""

    model_config = ConfigDict(extra="forbid")
    max_generations: int = Field(10, ge=1)
    max_merges: Optional[int] = Field(None, ge=1)
    saturation: Optional[float] = Field(None, gt=-1.0, le=1.0)  # mutual PCC of the top-k


class References(BaseModel):
    """What every child is measured against besides its parents (none of it enters the pool).

    ``base``: score the shared base itself once, as the foundation models are (turn it off when
    the base would be scored unfairly, e.g. a pre-trained base on chat-formatted tasks).
    ``baselines``: the one-shot merges of all foundation models that ``compare`` and
    ``evolve --baselines`` make and score (:mod:`mergekit_kinship.baselines`).
    """

    model_config = ConfigDict(extra="forbid")
    base: bool = True
    baselines: list[str] = Field(default_factory=lambda: ["ties", "dare_ties", "linear",
                                                          "task_arithmetic"])

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names):
        from mergekit_kinship.baselines import BASELINES

        for name in names:
            if name not in BASELINES:
                raise ValueError(f"unknown baseline {name!r}" + did_you_mean(name, list(BASELINES)))
        if len(set(names)) != len(names):
            raise ValueError("a baseline is listed twice")
        return names


class Recipe(BaseModel):
    """A validated recipe; model paths are absolute once loaded by :func:`load_recipe`."""

    model_config = ConfigDict(extra="forbid")
    base: ModelSpec
    models: list[ModelSpec] = Field(min_length=2)
    top_k: int = Field(3, ge=2)
    strategy: str = "kinship"
    metric: Literal["pcc", "cosine", "euclidean", "sign_conflict"] = "pcc"
    merge: MergeTemplate = Field(default_factory=MergeTemplate)
    evaluation: EvaluationSettings
    stopping: Stopping = Field(default_factory=Stopping)
    references: References = Field(default_factory=References)
    seed: int = 0

    @field_validator("base", mode="before")
    @classmethod
    def _base_str(cls, v):
        return _model_from_str(v)

    @field_validator("models", mode="before")
    @classmethod
    def _models_str(cls, v):
        return [_model_from_str(m) for m in v] if isinstance(v, list) else v

    @field_validator("metric", mode="before")
    @classmethod
    def _canonical_metric(cls, name):
        try:
            return canonical(name)  # cs -> cosine, ed -> euclidean: one vocabulary everywhere
        except UserError as err:
            raise ValueError(str(err)) from None

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
    local = (value.startswith(("/", "./", "../", "~")) or not is_hub_id(value, org_required=True)
             or (base_dir / value).exists())
    if local:
        return {"path": value}
    repo, revision = split_revision(value)  # org/name@revision
    return {"hub": repo, **({"revision": revision} if revision else {})}


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
        raise UserError(format_validation_error(source, err, Recipe)) from None
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
        raise UserError(f"{path}: {yaml_error_text(err)}") from None
    return parse_recipe(data, path.parent, source=str(path))
