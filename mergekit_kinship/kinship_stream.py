"""One streaming kinship pass: open the models, pick the tensors, read each byte once, accumulate.

The weights are read in blocks of at most ``BLOCK_BYTES`` per model; each block is reduced to
exact float64 statistics by a :class:`~mergekit_kinship.kinship_accumulators.KinshipAccumulator`'s
reducer and merged into it in file order. Peak scratch memory is ``workers + 1`` I/O buffers of
``BLOCK_BYTES`` per model plus each worker's float64 sub-chunks, independent of the number and size
of the tensors.
"""

from __future__ import annotations

import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from mergekit_kinship.errors import UserError
from mergekit_kinship.kinship_accumulators import KinshipAccumulator, Moments, non_finite_error
from mergekit_kinship.kinship_selection import Item, select_tensors
from mergekit_kinship.models import Model, check_compatible, display_names, open_model

# Bytes read per model per block; workers + 1 blocks per model are in memory at once (read-ahead).
BLOCK_BYTES = 8 * 1024 * 1024
# Threads reducing blocks at once on the CPU (each block by one thread).
MAX_WORKERS = 4
# Metrics undefined for a zero delta.
_NEED_A_DELTA = {"pcc", "cosine", "sign_conflict"}
_NEED_A_DELTA_TEXT = "PCC, cosine and sign conflict"


class KinshipWarning(UserWarning):
    """Something the user should know about a result (e.g. vocabulary rows left out)."""


@dataclass
class KinshipPass:
    """What a streaming pass produced: the accumulator (one row per model read) and what was read."""

    names: list[str]  # display names of every model given
    base_name: str
    accumulator: KinshipAccumulator
    group_tensors: dict[str, int]  # breakdown group -> number of tensors
    n_tensors: int
    warnings: list[str]
    rows: list[int]  # model index -> row in the accumulator (-1: not read)
    bytes_read: int = 0  # checkpoint bytes read from the models and the base
    sketches: list = field(default_factory=list)  # one Sketch per row, when asked for
    tensors: list = field(default_factory=list)  # (name, elements) of every compared tensor

    def value(self, metric: str, i: int, j: int, group: str | None = None, strict: bool = True) -> float | None:
        """Kinship of models i and j over ``group`` (None: everything); ``strict``: an undefined
        value is a :class:`UserError` naming the model, not None."""
        acc = self.accumulator
        value = acc.value(metric, self.rows[i], self.rows[j], group)
        if value is None and strict:
            for k in (i, j):
                if acc.value(metric, self.rows[k], self.rows[k], group) is None:
                    raise _undefined(acc.moments(group), self.rows[k], self.names[k])
        return value


def _undefined(moments: Moments, row: int, name: str) -> UserError:
    """The error for a row whose PCC, cosine or sign conflict is undefined."""
    if moments.is_zero(row):
        return UserError(
            f"model {name} is identical to the base over the compared tensors: its delta is zero, so "
            f"{_NEED_A_DELTA_TEXT} are undefined (euclidean still works)"
        )
    return UserError(f"the delta of model {name} is constant over the compared tensors, so its PCC is undefined")


def torch_device(device) -> torch.device:
    """The device for the float64 reduction: the given one, checked, or cuda if there is one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device '{device}': {err}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device '{device}': kinship runs on 'cpu' or 'cuda' (float64 accumulators)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}': no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{device}': only {torch.cuda.device_count()} CUDA GPU(s) here")
    return dev


def run_pass(model_refs, base_ref, metrics, include, exclude, pairs, breakdown, device, progress,
             sketch=None, read=None) -> KinshipPass:
    """Open the base and the models, check them, and stream every model in some pair once.

    ``metrics`` are canonical names; ``pairs`` normalised ``(i, j)`` with i < j. The notes of
    tensor selection are also issued as :class:`KinshipWarning`s (at the caller's caller).
    ``sketch`` (:class:`~mergekit_kinship.sketch.SketchParams`): also sketch the delta of every
    model read, from the same float64 deltas (``KinshipPass.sketches``, one per row). ``read``:
    indices of models to read although they are in no pair (only sketched: with no pair at all,
    no exact moments are accumulated, only sketches).
    """
    dev = torch_device(device)
    opened: list[Model] = []
    try:
        base = open_model(base_ref)
        opened.append(base)
        models = []
        for ref in model_refs:
            models.append(open_model(ref))
            opened.append(models[-1])
        names = display_names(models)
        check_compatible(models, base)
        if set(metrics) & _NEED_A_DELTA:
            for model, name in zip(models, names):
                if model.path.resolve() == base.path.resolve():
                    raise UserError(f"model {name} is the base itself: its delta is zero, so "
                                    f"{_NEED_A_DELTA_TEXT} are undefined")
        active = sorted({k for pair in pairs for k in pair} | set(read or ()))
        rows = [active.index(k) if k in active else -1 for k in range(len(models))]
        items, notes = select_tensors(base, models, names, active, include, exclude, breakdown)
        for note in notes:
            warnings.warn(note, KinshipWarning, stacklevel=3)
        acc = KinshipAccumulator(len(active), [(rows[i], rows[j]) for i, j in pairs], dev, metrics=metrics)
        sources = [base] + [models[i] for i in active]
        labels = [f"model {base.name}"] + [f"model {names[i]}" for i in active]
        builder = None
        if sketch is not None:
            from mergekit_kinship.sketch import SketchBuilder, SketchLayout

            layout = SketchLayout.cached(tuple((it.name, it.numel) for it in items), sketch)
            builder = SketchBuilder(layout, len(active), dev)
        read_bytes = _stream(items, sources, labels, acc, progress, builder, exact=bool(pairs))
    finally:
        for model in opened:
            model.close()
    group_tensors: dict[str, int] = {}
    for item in items:
        group_tensors[item.group] = group_tensors.get(item.group, 0) + 1
    sketches = builder.finish([{"name": names[i]} for i in active]) if builder else []
    return KinshipPass(names, base.name, acc, group_tensors, len(items), notes, rows, read_bytes,
                       sketches, [(it.name, it.numel) for it in items])


def _stream(items: list[Item], sources: list[Model], labels: list[str], acc: KinshipAccumulator, progress,
            builder=None, exact: bool = True) -> int:
    """Read every item's bytes once from every source (base first), block by block, and merge
    the blocks' statistics into ``acc`` under each item's group; returns the bytes read.
    ``builder`` (a :class:`~mergekit_kinship.sketch.SketchBuilder`) is fed the same deltas;
    without ``exact`` it is fed alone (no moments: a pass that only sketches).

    One thread reads ahead while ``workers`` threads reduce earlier blocks, each with
    single-threaded torch ops: on a busy machine, torch's own intra-op threads stall at their
    barriers (a 2×2048 float64 ``mm`` took 30 ms instead of 20 µs), whereas independent blocks
    need no synchronisation. Blocks are merged in file order, so results do not depend on timing.
    Memory: ``workers + 1`` sets of one ``BLOCK_BYTES`` buffer per source.
    """
    from tqdm.auto import tqdm

    dev = acc.device
    jobs = []
    for item in items:
        if not item.numel:  # an empty tensor adds nothing (and has no item size to divide by)
            continue
        itemsize = max(info.itemsize for info in item.infos)
        step = max(1, BLOCK_BYTES // itemsize)
        for start in range(0, item.numel, step):
            jobs.append((item, start, min(step, item.numel - start)))
    total_bytes = sum(count * info.itemsize for item, _, count in jobs for info in item.infos)

    threads = torch.get_num_threads()
    workers = max(1, min(MAX_WORKERS, threads, len(jobs))) if dev.type == "cpu" else 1
    n_sets = workers + 1
    pinned = dev.type == "cuda"
    bufsets = [[torch.empty(BLOCK_BYTES, dtype=torch.uint8, pin_memory=pinned) for _ in sources] for _ in range(n_sets)]

    def read(k: int):
        item, start, count = jobs[k]
        return [src.read(info, start, count, buf) for src, info, buf in zip(sources, item.infos, bufsets[k % n_sets])]

    local = threading.local()

    def reduce(k: int, blocks):
        if not hasattr(local, "reducer"):
            if dev.type == "cpu":
                torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
            local.reducer = acc.reducer()
        item, start, count = jobs[k]
        feed = None if builder is None else (lambda d, s: builder.add(d, item.name, start + s))
        if not exact:
            if not local.reducer.deltas_only(blocks, count, feed):
                raise non_finite_error(item.name, blocks, labels)
            return None
        stats = local.reducer.reduce(blocks, count, feed)
        if stats is None:  # the buffers are still this block's: find the culprit now
            raise non_finite_error(item.name, blocks, labels)
        return stats

    # Without an explicit disable=, tqdm's own TQDM_DISABLE environment variable still applies.
    quiet = {} if progress else {"disable": True}
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="kinship",
               file=sys.stderr, leave=False, **quiet)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(workers) as reducers:
            reads = {k: reader.submit(read, k) for k in range(min(n_sets, len(jobs)))}
            reductions: dict = {}
            merged = 0
            for k in range(len(jobs)):
                reductions[k] = reducers.submit(reduce, k, reads.pop(k).result())
                # Merge finished blocks in order; each frees its buffer set for a read ahead.
                while reductions and (len(reductions) >= workers or k == len(jobs) - 1):
                    item, _, count = jobs[merged]
                    stats = reductions.pop(merged).result()
                    if exact:
                        acc.merge(item.group, stats)
                    bar.update(sum(count * info.itemsize for info in item.infos))
                    if merged + n_sets < len(jobs):
                        reads[merged + n_sets] = reader.submit(read, merged + n_sets)
                    merged += 1
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return total_bytes
