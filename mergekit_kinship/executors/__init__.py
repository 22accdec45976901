"""Executors run a generation's units of work ("merge and score one child").

A unit of work (:class:`~mergekit_kinship.executors.job.ChildJob`) is plain JSON-able data whose
inputs and outputs all live in the run directory, so an executor may run a generation's jobs in
any order or at once (one process each, one GPU each). :data:`EXECUTORS` maps each name to the
class that implements it, as ``"module:attribute"`` imported on first use (the CLI's choices
read the names from here, and ``local`` needs no Ray installed): ``local`` (the default) runs the
jobs one after another in this process, which keeps mergekit and lm-eval imported once for the
whole run; ``ray`` runs a generation's jobs at once on long-lived Ray actors (extra ``[ray]``).
"""

from __future__ import annotations

import importlib
import importlib.util

EXECUTORS: dict[str, str] = {}
# The Python package an executor needs beyond ours, and how to install it.
_REQUIRES = {"ray": ("ray", "Ray", 'pip install "mergekit-kinship[ray]"')}


def register_executor(name: str, target: str) -> None:
    """Make an executor available by name; ``target`` is ``"module:Class"``. A duplicate name is
    an error."""
    if name in EXECUTORS:
        raise ValueError(f"executor {name!r} is already registered")
    EXECUTORS[name] = target


register_executor("local", "mergekit_kinship.executors.local:LocalExecutor")
register_executor("ray", "mergekit_kinship.executors.ray:RayExecutor")


def get_executor(name: str, **options):
    """A fresh executor by name, built with ``options``."""
    from mergekit_kinship.errors import UserError

    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
    package, label, install = _REQUIRES.get(name, (None, None, None))
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"--executor {name} needs {label}: {install}")
    module, _, attr = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)(**options)
