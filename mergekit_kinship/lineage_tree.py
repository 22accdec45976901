"""The inferred lineage as text: a tree under the base, then what could not be placed.

Every fine-tune hangs under its parent (the base's own fine-tunes under the base). A merge has
two (or more) parents but a text tree gives each line one: it is drawn under the parent with the
larger share, and its line names every parent with its proportion. Ambiguous models (the
evidence fits two explanations equally well) and unrelated ones are listed after the tree with
their alternatives and evidence, never placed in it. :func:`depths` (generations below the base)
is shared with the picture (:mod:`~mergekit_kinship.lineage_figure`).
"""

from __future__ import annotations

from mergekit_kinship.formatting import text_table


def depths(result) -> dict[str, int]:
    """Generations below the base of every placed model (fine-tunes and merges); a model whose
    parents form a cycle (never produced by :func:`~mergekit_kinship.lineage.infer_lineage`)
    is placed one below the base."""
    by_path = result.by_path()
    memo: dict[str, int] = {}

    def depth(path: str, seen: frozenset) -> int:
        if path in memo:
            return memo[path]
        m = by_path[path]
        parents = [p for p in (m.parents or []) if p in by_path and p not in seen]
        d = 1 + max((depth(p, seen | {path}) for p in parents), default=0)
        memo[path] = d
        return d

    for m in result.models:
        if m.kind in ("base-fine-tune", "fine-tune", "merge"):
            depth(m.path, frozenset())
    return memo


def tree_parent(m) -> str | None:
    """The parent a model is drawn under: its only one, or a merge's largest share (None: the base)."""
    if not m.parents:
        return None
    if m.proportions and len(m.proportions) == len(m.parents):
        return m.parents[max(range(len(m.parents)), key=lambda k: m.proportions[k])]
    return m.parents[0]


def tree_children(result) -> dict:
    """tree parent's path (None: the base) -> the models drawn under it, in the given order."""
    placed = {m.path for m in result.models if m.kind in ("base-fine-tune", "fine-tune", "merge")}
    children: dict = {}
    for m in result.models:
        if m.path in placed:
            parent = tree_parent(m)
            # A child of an unplaced (ambiguous) model hangs at the top; its line names the parent.
            children.setdefault(parent if parent in placed else None, []).append(m)
    return children


def describe(m, names: dict[str, str]) -> str:
    """What a model is, in words, with the evidence that decided it."""
    ev = m.evidence
    if m.kind == "base-fine-tune":
        return (f"fine-tune of the base (carries no listed model's whole delta; largest |cosine| "
                f"{ev['largest_abs_cosine']:.3f})")
    if m.kind == "fine-tune":
        return (f"fine-tune of {names[m.parents[0]]} (carries {ev['coefficient']:.2f}× its delta, "
                f"cosine {ev['cosine']:.3f}, own update {100 * ev['update_fraction']:.0f}%)")
    if m.kind == "merge":
        parts = " + ".join(f"{p:.2f}·{names[q]}" for p, q in zip(m.proportions, m.parents))
        text = f"merge {parts} (residual {100 * ev['residual']:.1f}%"
        if "template_deviation" in ev:
            text += f", template deviation {ev['template_deviation']:.3f}"
        return text + ")"
    if m.kind == "unrelated":
        return (f"unrelated to this base's family (delta {ev['norm_over_median']:.0f}× the median "
                "norm, |cosine| < 0.1 with every other model)")
    options = []
    for alt in m.alternatives:
        if not alt["parents"]:
            options.append("fine-tune of the base")
            continue
        what = ("fine-tune of " if len(alt["parents"]) == 1 else "merge of ") + " + ".join(
            names[p] for p in alt["parents"])
        score = (f"template deviation {alt['template_deviation']:.3f}" if "template_deviation" in alt
                 else f"residual {100 * alt['residual']:.1f}%" if "residual" in alt
                 else f"cosine {alt['cosine']:.3f}")
        options.append(f"{what} ({score})")
    return "ambiguous, not guessed: " + "; or ".join(options)


def lineage_text(result, base_name: str = "base") -> str:
    """The tree (see the module docstring), then the ambiguous and unrelated models."""
    names = {m.path: m.name for m in result.models}
    children = tree_children(result)
    rows: list[list[str]] = [[base_name, "the base"]]

    def walk(parent, prefix):
        kids = children.get(parent, [])
        for k, m in enumerate(kids):
            last = k == len(kids) - 1
            rows.append([prefix + ("└─ " if last else "├─ ") + m.name, describe(m, names)])
            walk(m.path, prefix + ("   " if last else "│  "))

    walk(None, "")
    lines = [text_table(["model", "inferred"], rows)]
    unplaced = [m for m in result.models if m.kind in ("ambiguous", "unrelated")]
    if unplaced:
        lines += ["", text_table(["not placed", "why"], [[m.name, describe(m, names)] for m in unplaced])]
    return "\n".join(lines)


def counts_line(result) -> str:
    kinds = [m.kind for m in result.models]
    labels = {"base-fine-tune": ("fine-tune of the base", "fine-tunes of the base"),
              "fine-tune": ("fine-tune of a listed model", "fine-tunes of a listed model"),
              "merge": ("merge", "merges"), "ambiguous": ("ambiguous", "ambiguous"),
              "unrelated": ("unrelated", "unrelated")}
    parts = [f"{kinds.count(k)} {one if kinds.count(k) == 1 else many}"
             for k, (one, many) in labels.items() if k in kinds]
    return f"{len(kinds)} model{'s' * (len(kinds) != 1)}: " + ", ".join(parts)
