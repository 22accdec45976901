"""mergekit-kinship: model kinship and kinship-guided evolutionary merging for mergekit.

The public API is imported lazily so that ``import mergekit_kinship`` (and the CLI's ``--help``)
stays fast: torch and mergekit load only when a function that needs them is first used.

    from mergekit_kinship import kinship, kinship_matrix
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "kinship": "mergekit_kinship.streaming_kinship",
    "kinship_matrix": "mergekit_kinship.streaming_kinship",
    "KinshipResult": "mergekit_kinship.streaming_kinship",
    "KinshipMatrix": "mergekit_kinship.streaming_kinship",
    "UserError": "mergekit_kinship.errors",
    # for a scorer of one's own (evolve --evaluator MODULE:FUNCTION)
    "EvaluationResult": "mergekit_kinship.evaluation.scores",
    "EvaluationSettings": "mergekit_kinship.evaluation.settings",
    "fitness": "mergekit_kinship.evaluation.scores",
    "build_family": "mergekit_kinship.zoo",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mergekit_kinship' has no attribute {name!r}")
