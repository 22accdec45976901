"""The zoo: toy families of tiny Llama fine-tunes, each with one lm-eval task per skill, all built
on CPU in about a minute. ``builtin`` (the demo's: four letter skills) and ``digits`` (four digit
skills and one letter skill, for measurements on a second family): :mod:`.families`.

>>> fam = build_family()                     # cached in default_cache_dir(), reused when built
>>> fam.base, fam.children["reverse"], fam.task_names
>>> fam.root / "recipe.yaml"                 # the built-in recipe: mergekit-kinship plan / evolve it
>>> builtin_recipe(fam)                      # the same as a mapping (what the demo runs)
>>> build_family(family="digits")            # the second family, its recipe.yaml likewise
"""

from mergekit_kinship.zoo.builtin_recipe import builtin_recipe, evaluation_settings
from mergekit_kinship.zoo.families import FAMILIES
from mergekit_kinship.zoo.family import (
    Family,
    FamilyConfig,
    Stage,
    build_family,
    default_cache_dir,
)

__all__ = [
    "FAMILIES",
    "Family",
    "FamilyConfig",
    "Stage",
    "build_family",
    "builtin_recipe",
    "default_cache_dir",
    "evaluation_settings",
]
