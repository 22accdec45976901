"""The README stays a tour and the docs hold together: every command it names exists, every
command has its example, every relative link (and its #anchor) resolves, and it stays short."""

import re
from pathlib import Path

import pytest

from mergekit_kinship.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # characters: a tour read in five minutes; the reference lives in docs/


def _code(text: str) -> list[str]:
    """Lines of fenced code blocks and inline code spans (where commands are written)."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    return [line for block in fenced for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", prose)


def _commands(text: str) -> set[str]:
    """Sub-commands invoked as ``mergekit-kinship NAME`` at the start of a shell command."""
    names = set()
    for line in _code(text):
        line = line.strip().removeprefix("$ ")
        for match in re.finditer(r"(?:^|&&\s*|;\s*)mergekit-kinship\s+([a-z][\w-]*)", line):
            names.add(match.group(1))
    return names


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def test_readme_is_a_short_tour():
    size = len(README.read_text())
    assert size < README_LIMIT, f"README.md has {size} characters; move reference material to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_named_exists(page):
    unknown = _commands(page.read_text()) - set(COMMANDS)
    assert not unknown, f"{page.name} names commands the CLI does not have: {sorted(unknown)}"


def test_the_tour_shows_every_command():
    missing = set(COMMANDS) - _commands(README.read_text())
    assert not missing, f"README.md has no example of: {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            broken.append(f"{target} (no heading #{anchor} in {where.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_links_every_docs_page_and_the_index_lists_them():
    readme_links = {(ROOT / t.partition("#")[0]).resolve() for t in _links(README)}
    index_links = {(ROOT / "docs" / t.partition("#")[0]).resolve()
                   for t in _links(ROOT / "docs" / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert page.resolve() in index_links, f"docs/README.md does not list {page.name}"
            assert page.resolve() in readme_links, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_recipes_and_docs_named_in_examples_exist(page):
    """An example that names a shipped recipe or a docs page names one that exists (the built-in
    family's recipe is written by build_family into the family folder, not shipped in recipes/)."""
    named = {m for line in _code(page.read_text())
             for m in re.findall(r"(?<![\w/.-])((?:recipes|docs)/[\w.-]+\.(?:ya?ml|md))", line)}
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"{page.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_example_is_left_to_check(page):
    """Examples are pasted from real runs of the current code: no 'check after merge' marker left."""
    assert "check after merge" not in page.read_text()
