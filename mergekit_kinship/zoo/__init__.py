"""The built-in toy family: a tiny Llama base, one fine-tuned child per synthetic skill and a
grandchild, plus one lm-eval task per skill (``zoo/tasks``), all built on CPU in about a minute.

>>> fam = build_family()                     # cached in default_cache_dir(), reused when built
>>> fam.base, fam.children["reverse"], fam.task_names
"""

from mergekit_kinship.zoo.family import (
    Family,
    FamilyConfig,
    Stage,
    build_family,
    default_cache_dir,
    evaluation_settings,
)

__all__ = [
    "Family",
    "FamilyConfig",
    "Stage",
    "build_family",
    "default_cache_dir",
    "evaluation_settings",
]
