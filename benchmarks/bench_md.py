"""BENCHMARKS.md, shared by the benchmark scripts: each owns one section between its own
``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers and rewrites only that section."""

from __future__ import annotations

import sys
from pathlib import Path

MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(section: str, start: str, end: str, md: Path = MD) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) in place of the text
    between those markers in ``md``, or append it when the markers are not there yet."""
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text)
    print(f"wrote {md}", file=sys.stderr)
