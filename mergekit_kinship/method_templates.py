"""Two-parent merge templates for ``compare --methods``: each method with documented defaults.

The recipe's own ``merge`` section is used for its own method; any other method named in
``--methods`` gets the template below (the recipe's dtype and tokenizer section kept), so that a
strategy × method comparison needs no recipe per method. The defaults are the usual community
settings, never tuned to a family:

- ``slerp``: the paper's layer-wise ``t`` template (the recipe default);
- ``task_arithmetic``: ``weight: 0.5`` per parent (θ₀ + ½δ_A + ½δ_B: the parents' average);
- ``ties``: ``density: 0.5``, ``weight: 1`` per parent, ``normalize: true``;
- ``dare_ties``: the same with DARE's random drop (the recipe's seed);
- ``linear``: ``weight: 1`` per parent (mergekit normalizes: the parents' average).
"""

from __future__ import annotations

from typing import Any

from mergekit_kinship.errors import UserError

TEMPLATES: dict[str, dict[str, Any]] = {
    "slerp": {"method": "slerp"},
    "task_arithmetic": {"method": "task_arithmetic", "model_parameters": {"weight": 0.5}},
    "ties": {"method": "ties", "parameters": {"density": 0.5, "normalize": True},
             "model_parameters": {"weight": 1.0}},
    "dare_ties": {"method": "dare_ties", "parameters": {"density": 0.5, "normalize": True},
                  "model_parameters": {"weight": 1.0}},
    "linear": {"method": "linear", "model_parameters": {"weight": 1.0}},
}


def template_for(method: str, recipe):
    """The :class:`~mergekit_kinship.recipe.MergeTemplate` ``compare --methods`` uses for
    ``method`` on ``recipe``: the recipe's own when it is the recipe's method, else the default
    above (UserError for a method without one: give it its parameters in a recipe)."""
    from pydantic import ValidationError

    from mergekit_kinship.recipe import MergeTemplate

    if method == recipe.merge.method:
        return recipe.merge
    if method not in TEMPLATES:
        raise UserError(f"--methods: no default template for {method!r} (defaults: "
                        f"{', '.join(TEMPLATES)}); compare it with a recipe whose merge.method "
                        f"is {method}")
    data = {**TEMPLATES[method], "dtype": recipe.merge.dtype}
    if recipe.merge.tokenizer is not None:
        data["tokenizer"] = recipe.merge.tokenizer.model_dump(exclude_none=True)
    try:
        return MergeTemplate.model_validate(data)
    except ValidationError as err:  # mergekit changed a method's parameters
        raise UserError(f"--methods: the default template of {method} no longer fits mergekit "
                        f"({err.errors()[0]['msg']})") from None
