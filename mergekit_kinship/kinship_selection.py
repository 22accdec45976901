"""Which tensors a kinship pass compares, and the breakdown group each belongs to.

Everything here works from the models' headers (names, shapes, dtypes) before any weight is read:
the include/exclude globs, the checks that every model has the base's tensors in the base's
shapes (added vocabulary rows excepted), and the grouping by layer or module kind that
``--breakdown`` reports. Every problem is a one-line :class:`UserError` that names the tensor.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from mergekit_kinship.errors import UserError
from mergekit_kinship.models import Model, TensorInfo

BREAKDOWNS = ("layer", "module")


def _patterns(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED = re.compile(r"embed_tokens|(?:^|\.)wte\.|(?:^|\.)wpe\.|word_embeddings|embed_in|tok_embeddings|position_embeddings")
_HEAD = re.compile(r"^(?:model\.|transformer\.)?(?:lm_head|embed_out|output)\.")
_ATTN = re.compile(r"attn|attention")
_MLP = re.compile(r"mlp|feed_forward|ffn|experts")
_NORM = re.compile(r"norm|(?:^|\.)ln_")


def _kind(name: str) -> str:
    if _EMBED.search(name):
        return "embeddings"
    if _HEAD.search(name):
        return "head"
    if _LAYER.search(name):
        # norm first: "post_attention_layernorm" is a norm, not attention
        if _NORM.search(name):
            return "norm"
        if _ATTN.search(name):
            return "attention"
        if _MLP.search(name):
            return "mlp"
        return "other"
    if _NORM.search(name):
        return "norm"
    return "other"


def group_of(name: str, breakdown: str | None) -> str:
    """The breakdown group of a tensor name: by layer (``"layer 3"``, or ``"embeddings"``,
    ``"norm"``, ``"head"``, ``"other"`` outside the layers) or by module kind."""
    if breakdown is None:
        return "all"
    kind = _kind(name)
    if breakdown == "module":
        return kind
    layer = _LAYER.search(name)
    if layer and kind not in ("embeddings", "head"):
        return f"layer {int(layer.group(1))}"
    return kind


_ORDER = {"embeddings": 0, "attention": 1, "mlp": 2, "norm": 4, "other": 5, "head": 6, "all": 7}


def group_order(group: str) -> tuple[int, int]:
    """Sort key of breakdown groups: embeddings, the layers in order, then norm, other, head."""
    if group.startswith("layer "):
        return (1, int(group.split()[1]))
    return (_ORDER.get(group, 5), 0)


@dataclass
class Item:
    """One compared tensor: the same element range ``[0, numel)`` of every model and the base."""

    name: str
    group: str
    numel: int
    infos: list[TensorInfo]  # base first, then each active model


def select_tensors(base: Model, models: list[Model], names: list[str], active: list[int], include, exclude,
                   breakdown: str | None) -> tuple[list[Item], list[str]]:
    """The tensors to compare, in the base's file order, and notes for the user (a pattern that
    matches nothing, vocabulary rows left out). ``active``: indices of the ``models`` that will be
    read (``names`` are their display names); ``include``/``exclude``: globs on tensor names.
    Checks every name, dtype and shape from the headers, before anything is read."""
    inc, exc = _patterns(include), _patterns(exclude)

    def selected(key: str) -> bool:
        if inc and not any(fnmatch.fnmatchcase(key, p) for p in inc):
            return False
        return not any(fnmatch.fnmatchcase(key, p) for p in exc)

    notes = []
    every = set(base.tensors)
    for i in active:
        every |= set(models[i].tensors)
    for pattern in inc + exc:
        if not any(fnmatch.fnmatchcase(key, pattern) for key in every):
            notes.append(f"pattern '{pattern}' matches no tensor")

    for i in active:
        for key in models[i].tensors:
            if key not in base.tensors and selected(key):
                raise UserError(
                    f"tensor '{key}' of model {names[i]} is not in the base {base.name}: "
                    f"leave it out with --exclude '{key}'"
                )
    items: list[Item] = []
    extra_rows: dict[int, list[str]] = {}
    for key, binfo in base.tensors.items():
        if not selected(key):
            continue
        if binfo.dtype is None:
            raise UserError(
                f"tensor '{key}' of the base {base.name} has dtype {binfo.dtype_name}, not a floating-point "
                f"weight: leave it out with --exclude '{key}'"
            )
        infos = [binfo]
        for i in active:
            info = models[i].tensors.get(key)
            if info is None:
                raise UserError(
                    f"model {names[i]} has no tensor '{key}' (the base has it): leave it out with --exclude '{key}'"
                )
            if info.dtype is None:
                raise UserError(f"tensor '{key}' of model {names[i]} has dtype {info.dtype_name}, not a floating-point weight")
            if info.shape != binfo.shape:
                if added_vocab_rows(key, info, binfo, models[i]):
                    extra_rows.setdefault(i, []).append(key)
                else:
                    raise UserError(
                        f"tensor '{key}' has shape {list(info.shape)} in model {names[i]} but "
                        f"{list(binfo.shape)} in the base {base.name}"
                    )
            infos.append(info)
        items.append(Item(key, group_of(key, breakdown), binfo.numel, infos))
    if not items:
        raise UserError("no tensor to compare: the include/exclude patterns leave out every tensor")
    for i, keys in extra_rows.items():
        info, binfo = models[i].tensors[keys[0]], base.tensors[keys[0]]
        notes.append(
            f"model {names[i]} has {info.shape[0]} vocabulary rows, the base {binfo.shape[0]}: compared on the "
            f"{binfo.shape[0]} shared rows, leaving out {info.shape[0] - binfo.shape[0]} rows of "
            f"{', '.join(keys)}"
        )
    return items, notes


def added_vocab_rows(key: str, info: TensorInfo, binfo: TensorInfo, model: Model) -> bool:
    """A vocabulary matrix (embeddings or head) with added-token rows after the base's rows."""
    return (
        len(info.shape) == len(binfo.shape) >= 1
        and info.shape[1:] == binfo.shape[1:]
        and info.shape[0] > binfo.shape[0]
        and (_kind(key) in ("embeddings", "head") or info.shape[0] == model.vocab_size)
    )
