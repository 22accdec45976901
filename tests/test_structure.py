"""The shape of the package, checked: small modules, one loop that reads like Algorithm 1, and
no environment variable that changes what a user's run does."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mergekit_kinship"
# Environment variables the package reads, each for a documented reason; any other read of the
# environment would be a hidden switch on what a user's run does.
ALLOWED_ENVIRONMENT = {
    ("zoo/family.py", "MERGEKIT_KINSHIP_CACHE"),  # where the built-in family is cached
    ("hub_push.py", "HF_HUB_OFFLINE"),  # huggingface_hub's own switch, read to fail early
    ("card.py", "HF_HUB_OFFLINE"),
}


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_no_module_is_over_about_450_lines():
    long = {name: text.count("\n") for name, text in _sources() if text.count("\n") > 460}
    assert not long, long


def test_the_loop_reads_like_algorithm_1_on_one_screen():
    from mergekit_kinship.evolution import evolve

    source = inspect.getsource(evolve)
    body = source[source.index('"""', source.index('"""') + 3) + 3:]
    assert len(body.strip().splitlines()) <= 40
    for step in ("add_foundation", "merge_and_score", "relate", "plan(", "top_k", "stop_reason"):
        assert step in body, step


def _environment_reads(tree: ast.AST):
    """Names read with os.environ.get("X"), os.getenv("X") or os.environ["X"]."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            if ast.unparse(node.func) in ("os.environ.get", "os.getenv", "environ.get"):
                yield node.args[0].value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            if ast.unparse(node.value) in ("os.environ", "environ"):
                yield node.slice.value


def test_only_documented_environment_variables_are_read():
    reads = {(name, variable) for name, text in _sources()
             for variable in _environment_reads(ast.parse(text))}
    assert reads <= ALLOWED_ENVIRONMENT, reads - ALLOWED_ENVIRONMENT
    assert ("zoo/family.py", "MERGEKIT_KINSHIP_CACHE") in reads  # the check sees real reads


def test_engines_never_import_the_cli():
    """Imports flow one way: cli -> commands -> engines."""
    for name, text in _sources():
        if name.startswith("commands/") or name in ("cli.py", "__main__.py"):
            continue
        assert not re.search(r"^\s*(from|import) mergekit_kinship\.(cli|commands)\b", text, re.M), name
