"""The built-in toy family: a tiny Llama base, one fine-tuned child per synthetic skill and a
grandchild, plus one lm-eval task per skill (``zoo/tasks``), all built on CPU in about a minute.

>>> fam = build_family()                     # cached in default_cache_dir(), reused when built
>>> fam.base, fam.children["reverse"], fam.task_names
>>> fam.root / "recipe.yaml"                 # the built-in recipe: mergekit-kinship plan / evolve it
>>> builtin_recipe(fam)                      # the same as a mapping (what the demo runs)
"""

from mergekit_kinship.zoo.builtin_recipe import builtin_recipe, evaluation_settings
from mergekit_kinship.zoo.family import (
    Family,
    FamilyConfig,
    Stage,
    build_family,
    default_cache_dir,
)

__all__ = [
    "Family",
    "FamilyConfig",
    "Stage",
    "build_family",
    "builtin_recipe",
    "default_cache_dir",
    "evaluation_settings",
]
