"""The ``mergekit-kinship`` command group.

Commands are registered by name and imported only when used (a lazy click group), so ``--help``
never pays for torch or mergekit. A :class:`~mergekit_kinship.errors.UserError` raised anywhere
below becomes a one-line ``Error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from mergekit_kinship import __version__
from mergekit_kinship.errors import UserError

# command name -> "module:attribute". Pipeline order: kinship (and check) -> plan -> merge/evaluate -> report.
COMMANDS = {
    "kinship": "mergekit_kinship.commands.kinship:kinship_cmd",
    "matrix": "mergekit_kinship.commands.kinship:matrix_cmd",
    "check": "mergekit_kinship.commands.check:check_cmd",
    "demo": "mergekit_kinship.commands.demo:demo_cmd",
    "plan": "mergekit_kinship.commands.plan:plan_cmd",
    "merge": "mergekit_kinship.commands.merge:merge_cmd",
    "evolve": "mergekit_kinship.commands.evolve:evolve_cmd",
    "compare": "mergekit_kinship.commands.compare:compare_cmd",
    "card": "mergekit_kinship.commands.card:card_cmd",
    "report": "mergekit_kinship.commands.report:report_cmd",
}


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mergekit-kinship")
def main():
    """Model kinship and kinship-guided evolutionary merging for mergekit.

    \b
    Measure:  kinship, matrix (how related fine-tunes of one base are), check (a mergekit
              config before merging it)
    Merge:    merge (mergekit-yaml plus the merge's kinship), plan and evolve (the
              kinship-guided Top-k greedy search: mergekit YAML, merges, lm-eval scores,
              the family tree), compare (strategies and merge methods against references)
    Publish:  card (a Hub model card), report (an HTML report of a run)
    Try:      demo (everything above on a toy family, CPU only, offline)
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
