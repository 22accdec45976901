"""The mergekit methods a child of two parents can be merged with, read from mergekit itself.

mergekit (0.1.5 on) describes each method of its registry (``mergekit.merge_methods``) by a
``MergeMethodSpec``: its parameters, each with a scope (``shared``: one value for the merge;
``input`` / ``non_base``: one value per model) and a default unless required, and an input
contract (a base input required, optional, forbidden or ignored; how many inputs). Everything
below is derived from those, so a method mergekit adds is accepted, or refused with its reason,
without an edit here.

What mergekit cannot tell is our policy, stated here once:

- **Which model is ``base_model``.** A child has two parents, and the family one shared
  ancestor. Of the three layouts a child's YAML can take, the first one mergekit's contract
  accepts is used:

  - ``ancestor``: ``base_model`` is the shared ancestor and the two parents are the models (three
    inputs). Task-vector methods (``task_arithmetic``, ``ties``, ``dare_*``, ``della``, ...) take
    deltas against it, and it stays the same for the whole family tree, so deltas stay defined.
  - ``parent_a``: ``base_model`` is parent A, the fitter parent (two inputs, one of them the
    base): a method whose contract wants a base among exactly two inputs. For ``slerp`` parent A
    is the t = 0 end; the ancestor is never put in such a merge.
  - ``none``: no ``base_model`` (two inputs): a method that ignores or forbids one (``linear``).

  Where the base is optional and both ``ancestor`` and ``none`` are accepted (``nuslerp``,
  ``multislerp``), the role is ``optional`` and the recipe's ``use_base`` chooses (default: the
  ancestor). A method that accepts none of the layouts (``passthrough``: one input) is refused.
- **Whether the merge samples**, so that the recipe's seed goes to mergekit (and into the
  child's identity). mergekit's specs do not say; see :data:`SAMPLING_SPARSIFICATIONS` and
  :data:`SAMPLING_METHODS` (tests/test_recipe.py runs every method and checks them against
  whether it drew from torch's random generator).

mergekit (and torch with it) is imported inside the functions, when a recipe is validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mergekit_kinship.errors import did_you_mean

BaseRole = Literal["parent_a", "ancestor", "none", "optional"]

# The task-arithmetic family names its sparsification (``sparsification_method``); these two
# draw Bernoulli masks: DARE (``random``) and DELLA (``della_magprune``).
SAMPLING_SPARSIFICATIONS = frozenset({"random", "della_magprune"})
# Methods that sample otherwise: arcee_fusion estimates quantiles of a tensor of more than a
# million values from a random sample of it.
SAMPLING_METHODS = frozenset({"arcee_fusion"})

_SCOPES = ("shared", "input", "non_base")  # mergekit's ParameterScope values we understand

# The layouts of a child's YAML, as mergekit's contract sees them: (input ids, base id).
_LAYOUTS = {
    "ancestor": (("ancestor", "parent_a", "parent_b"), "ancestor"),
    "parent_a": (("parent_a", "parent_b"), "parent_a"),
    "none": (("parent_a", "parent_b"), None),
}


@dataclass(frozen=True)
class MergeMethodInfo:
    """What a two-parent merge with one mergekit method needs.

    ``shared``: parameters with one value for the merge (mergekit's ``parameters:``).
    ``per_model``: parameters with a value per parent (``models[i].parameters``); mergekit also
    takes them under ``parameters:`` as the value of every model.
    ``base_takes``: the per-model parameters mergekit also binds for ``base_model`` (scope
    ``input``), so with the ancestor as base they must be given under ``parameters:``.
    ``required``: parameters without a default. ``random``: the merge samples (needs the seed).
    """

    name: str
    base: BaseRole
    shared: frozenset[str] = frozenset()
    per_model: frozenset[str] = frozenset()
    base_takes: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    random: bool = False

    @property
    def parameters(self) -> frozenset[str]:
        return self.shared | self.per_model


def describe(method: Any) -> MergeMethodInfo:
    """What merging two parents with ``method`` (a mergekit ``MergeMethod``) needs.

    Raises ``ValueError`` saying why when the method cannot merge two parents.
    """
    spec = method.spec
    scopes = {p.name: getattr(p.scope, "value", p.scope) for p in spec.parameters}
    unknown = {n: s for n, s in scopes.items() if s not in _SCOPES}
    if unknown:
        name, scope = next(iter(unknown.items()))
        raise ValueError(f"parameter {name!r} of {spec.name} has scope {scope!r}, which "
                         f"mergekit-kinship does not know how to set")
    policy = getattr(spec.contract.base, "value", spec.contract.base)
    accepted = [role for role, (ids, base) in _LAYOUTS.items()
                # mergekit drops an ignored base_model: the ancestor would be a third model
                if not (policy == "ignored" and base is not None)
                and _contract_accepts(spec.contract, ids, base)]
    if not accepted:
        raise ValueError(f"{spec.name} cannot merge two models (mergekit's contract: base "
                         f"{policy}, {_counts(spec.contract)})")
    role: BaseRole = "optional" if {"ancestor", "none"} <= set(accepted) else accepted[0]
    sparsification = getattr(getattr(method, "sparsification_method", None), "value", None)
    return MergeMethodInfo(
        name=spec.name,
        base=role,
        shared=frozenset(n for n, s in scopes.items() if s == "shared"),
        per_model=frozenset(n for n, s in scopes.items() if s != "shared"),
        base_takes=frozenset(n for n, s in scopes.items() if s == "input"),
        required=frozenset(p.name for p in spec.parameters if p.required),
        random=spec.name in SAMPLING_METHODS or sparsification in SAMPLING_SPARSIFICATIONS,
    )


def _contract_accepts(contract, ids, base) -> bool:
    try:
        contract.validate_ids(list(ids), base)
    except ValueError:
        return False
    return True


def _counts(contract) -> str:
    def span(lo, hi, what):
        lo = lo or 0
        count = f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
        return f"{count} {what}{'' if count == '1' else 's'}"

    text = span(contract.min_inputs, contract.max_inputs, "input")
    if contract.min_non_base is not None or contract.max_non_base is not None:
        text += f", {span(contract.min_non_base, contract.max_non_base, 'non-base input')}"
    return text


def _registered() -> dict[str, Any]:
    from mergekit.merge_methods import registry

    return {m.spec.name: m for m in registry.registered_methods()}


def two_parent_methods() -> dict[str, MergeMethodInfo]:
    """Every method of mergekit's registry that can merge two parents, by name (sorted)."""
    out = {}
    for name, method in sorted(_registered().items()):
        try:
            out[name] = describe(method)
        except ValueError:
            continue
    return out


def method_info(name: str) -> MergeMethodInfo:
    """The two-parent facts of mergekit's method ``name``.

    Raises ``ValueError`` (one line) for a name mergekit does not know, with the closest known
    name, or for a method that cannot merge two parents, with the reason.
    """
    registered = _registered()
    if name not in registered:
        hint = did_you_mean(name, list(registered), list_options=False) or (
            f" (mergekit's two-parent methods: {', '.join(two_parent_methods())})")
        raise ValueError(f"unknown merge method {name!r}{hint}")
    return describe(registered[name])


def sign_consensus_methods() -> frozenset[str]:
    """The methods of mergekit's registry that elect one sign per parameter before combining
    deltas (TIES' consensus: ``ties``, ``dare_ties``, ``breadcrumbs_ties``, ``della``), read from
    each method's ``consensus_method``."""
    return frozenset(name for name, method in _registered().items()
                     if getattr(method, "consensus_method", None) is not None)
