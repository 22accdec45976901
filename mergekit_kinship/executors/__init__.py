"""Executors run a generation's units of work ("merge and score one child").

A unit of work (:class:`~mergekit_kinship.executors.job.ChildJob`) is plain JSON-able data whose
inputs and outputs all live in the run directory, so an executor may run a generation's jobs in
any order or at once (one process each, one GPU each). The registry maps a name to an executor
class; a duplicate name is an error. ``local`` (the default) runs the jobs one after another in
this process, which keeps mergekit and lm-eval imported once for the whole run; ``ray`` runs a
generation's jobs at once on long-lived Ray actors (optional extra ``[ray]``).
"""

from __future__ import annotations

from typing import Callable

EXECUTORS: dict[str, Callable[[], object]] = {}


def register_executor(name: str, factory: Callable[[], object]) -> None:
    if name in EXECUTORS:
        raise ValueError(f"executor {name!r} is already registered")
    EXECUTORS[name] = factory


def get_executor(name: str, **options):
    """A fresh executor by name, built with ``options`` (imports its module lazily: the default
    ``local`` executor needs no Ray installed)."""
    if name == "local" and name not in EXECUTORS:
        from mergekit_kinship.executors import local  # noqa: F401  (registers itself)
    if name == "ray" and name not in EXECUTORS:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            from mergekit_kinship.errors import UserError

            raise UserError('--executor ray needs Ray: pip install "mergekit-kinship[ray]"')
        from mergekit_kinship.executors import ray  # noqa: F401  (registers itself)
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r} (known: {', '.join(sorted(EXECUTORS)) or 'local'})")
    return EXECUTORS[name](**options)
