"""How numbers and plain-text tables look in every printed table, card and report."""

from __future__ import annotations

from typing import Optional, Sequence

MISSING = "-"


def number(value: Optional[float], digits: int = 4, *, signed: bool = False,
           missing: str = MISSING) -> str:
    """``0.7200``; ``+0.0400`` when ``signed``; ``missing`` for None."""
    if value is None:
        return missing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def with_error(value: Optional[float], stderr: Optional[float], digits: int = 4, *,
               signed: bool = False, missing: str = MISSING) -> str:
    """``0.7200 ±0.0210``: a value and its standard error (the value alone when the error is
    unknown)."""
    text = number(value, digits, signed=signed, missing=missing)
    if value is None or stderr is None:
        return text
    return f"{text} ±{stderr:.{digits}f}"


def metric_value(value: Optional[float], metric: str, *, missing: str = MISSING) -> str:
    """A kinship value: 4 significant digits for an unbounded distance (euclidean), else 4
    decimals (pcc, cosine, and sign_conflict, a fraction)."""
    from mergekit_kinship.metrics import is_unbounded

    if value is None:
        return missing
    return f"{value:.4g}" if is_unbounded(metric) else f"{value:.4f}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
               align_right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; trailing spaces trimmed."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in align_right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
