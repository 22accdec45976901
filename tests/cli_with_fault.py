"""Run the mergekit-kinship CLI with a fault hook installed: SIGKILL at the n-th checkpoint.

    python tests/cli_with_fault.py merge:4 evolve recipe.yaml --run-dir RUN ...

The hook is installed in this process only (mergekit_kinship.rundir.set_fault_hook); nothing
in the environment can arm it, so a user's run never has one.
"""

from __future__ import annotations

import os
import signal
import sys


def kill_at(target: str):
    """A fault hook that SIGKILLs this process the n-th time checkpoint ``point`` is reached
    (``target`` = ``point:n``, n default 1)."""
    point, _, count = target.partition(":")
    wanted, seen = int(count or 1), {}

    def hook(name: str) -> None:
        seen[name] = seen.get(name, 0) + 1
        if name == point and seen[name] == wanted:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    from mergekit_kinship.cli import main
    from mergekit_kinship.rundir import set_fault_hook

    set_fault_hook(kill_at(sys.argv[1]))
    sys.exit(main(sys.argv[2:], prog_name="mergekit-kinship"))
