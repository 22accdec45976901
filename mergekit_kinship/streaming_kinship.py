"""Model kinship: similarity of two fine-tunes' weight deltas from their common base.

For models θ_1..θ_N and base θ_0 the delta of model i is δ_i = θ_i − θ_0, flattened over every
compared weight into one global vector (Hu et al., arXiv 2410.12613, §4.1). Kinship of a pair is

- ``pcc``: Pearson correlation of δ_i and δ_j,
- ``cosine``: signed cosine similarity of δ_i and δ_j,
- ``euclidean``: ‖δ_i − δ_j‖ (a distance: larger means less related).

All three are global: computed from exact float64 moments of the whole vectors, never as averages
of per-tensor values. One streaming pass reads each model's tensors once, whatever the number of
pairs: the weights are read in blocks of at most ``BLOCK_BYTES`` per model, and each block is
reduced in float64 sub-chunks (``CPU_SUBCHUNK`` elements, small enough to stay in cache) to sums
and a Gram matrix, hence to means, centred co-moments and squared distances, which are merged
into running totals with Chan et al.'s pairwise formula. PCC never uses the cancelling
``Σxy/n − x̄ȳ`` over the whole vector: co-moments are centred per sub-chunk, and a sub-chunk whose
mean dominates its spread is centred explicitly. Squared distances come from the Gram matrix and,
where they cancel (two near-identical models), are recomputed directly from the block. Peak
scratch memory is ``workers + 1`` I/O buffers of ``BLOCK_BYTES`` per model plus N float64
sub-chunks per worker, independent of the number and size of the tensors.

The models must be fine-tunes of one base: same architecture, hidden size and tensor shapes. A
model with more vocabulary rows than the base (added tokens) is compared on the rows it shares with
the base, with one warning per model.
"""

from __future__ import annotations

import fnmatch
import math
import re
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import torch

from mergekit_kinship.errors import UserError
from mergekit_kinship.models import Model, TensorInfo, check_compatible, display_names, open_model

METRICS = ("pcc", "cosine", "euclidean")
ALIASES = {"cs": "cosine", "cos": "cosine", "ed": "euclidean", "pearson": "pcc"}
BREAKDOWNS = ("layer", "module")

# Bytes read per model per block; workers + 1 blocks per model are in memory at once (read-ahead).
BLOCK_BYTES = 8 * 1024 * 1024
# float64 elements per model reduced at once on the CPU (None: 2**18 / N, at least 65536), so
# that the N rows stay in L2/L3 cache across the passes over them (measured best on a 2-core
# EPYC: 131072 for N = 2, 65536 for N = 8). On a GPU a whole block is one sub-chunk.
CPU_SUBCHUNK: int | None = None
# Threads reducing blocks at once on the CPU (each block by one thread).
MAX_WORKERS = 4
# Squared distances computed from moments lose about -log10(ratio) digits when
# ‖x−y‖² < ratio·(‖x‖²+‖y‖²); below this ratio they are recomputed from the data.
_CANCELLATION_RATIO = 1e-3


class KinshipWarning(UserWarning):
    """Something the user should know about a result (e.g. vocabulary rows left out)."""


def parse_metrics(metrics) -> tuple[str, ...]:
    """Canonical metric names from ``"pcc,cs"`` or a sequence; aliases cs→cosine, ed→euclidean.

    Raises :class:`UserError` for an unknown or empty list, before anything is read.
    """
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out: list[str] = []
    for raw in metrics:
        key = str(raw).strip().lower()
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key not in METRICS:
            raise UserError(f"unknown metric '{raw}': choose from {', '.join(METRICS)} (aliases cs, ed)")
        if key not in out:
            out.append(key)
    if not out:
        raise UserError(f"no metric given: choose from {', '.join(METRICS)}")
    return tuple(out)


@dataclass
class KinshipResult:
    """Kinship of two models. ``values[metric]`` is a float; ``breakdown`` (on request) maps a group
    of tensors (``"embeddings"``, ``"layer 3"``, ``"attention"``, ``"head"`` ...) to its own values,
    ``None`` where undefined (an unchanged group has no PCC)."""

    model_a: str
    model_b: str
    base: str
    metrics: list[str]
    values: dict[str, float]
    n_params: int
    n_tensors: int
    breakdown: dict[str, dict] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class KinshipMatrix:
    """Kinship of every requested pair of N models. ``values[metric]`` is an N×N list of lists:
    diagonal 1.0 (pcc, cosine) or 0.0 (euclidean), ``None`` for pairs that were not requested."""

    names: list[str]
    base: str
    metrics: list[str]
    values: dict[str, list[list[float | None]]]
    n_params: int
    n_tensors: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def mean(self, metric: str = "pcc") -> float:
        """Kinship of the whole group: the mean over computed pairs i<j (the paper's n-model kinship)."""
        metric = parse_metrics(metric)[0]
        vals = [
            v for i, row in enumerate(self.values[metric]) for j, v in enumerate(row) if j > i and v is not None
        ]
        return sum(vals) / len(vals) if vals else float("nan")

    def csv_text(self) -> str:
        """One row per (metric, model): ``metric,model,<name 1>,...,<name N>``; empty = not computed."""
        lines = [",".join(["metric", "model", *map(_csv_cell, self.names)])]
        for metric in self.metrics:
            for name, row in zip(self.names, self.values[metric]):
                cells = ["" if v is None else repr(float(v)) for v in row]
                lines.append(",".join([metric, _csv_cell(name), *cells]))
        return "\n".join(lines) + "\n"


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def kinship(
    model_a,
    model_b,
    base,
    metrics=METRICS,
    include=None,
    exclude=None,
    breakdown: str | None = None,
    device=None,
    progress: bool = True,
) -> KinshipResult:
    """Kinship of ``model_a`` and ``model_b`` as deltas from ``base`` (paths or hub ids).

    ``include``/``exclude`` are glob patterns (or lists of them) on tensor names, e.g.
    ``exclude=["*embed_tokens*", "lm_head.*"]``. ``breakdown="layer"`` adds one entry per
    transformer layer (plus embeddings, final norm, head); ``"module"`` one per kind of module
    (embeddings, attention, mlp, norm, head) summed over layers. Reads each model once.
    """
    metrics = parse_metrics(metrics)
    if breakdown is not None and breakdown not in BREAKDOWNS:
        raise UserError(f"unknown breakdown '{breakdown}': choose from {', '.join(BREAKDOWNS)}")
    run = _run([model_a, model_b], base, metrics, include, exclude, [(0, 1)], breakdown, device, progress)
    total = run.total()
    values = {m: run.value(total, m, 0, 1) for m in metrics}
    groups = None
    if breakdown:
        groups = {}
        for group, moments in sorted(run.groups.items(), key=lambda kv: _group_order(kv[0])):
            entry = {"params": moments.n, "tensors": run.group_tensors[group]}
            entry.update({m: run.value(moments, m, 0, 1, strict=False) for m in metrics})
            groups[group] = entry
    return KinshipResult(
        model_a=run.names[0],
        model_b=run.names[1],
        base=run.base_name,
        metrics=list(metrics),
        values=values,
        n_params=total.n,
        n_tensors=run.n_tensors,
        breakdown=groups,
        warnings=run.warnings,
    )


def kinship_matrix(
    models,
    base,
    metrics=METRICS,
    include=None,
    exclude=None,
    pairs=None,
    device=None,
    progress: bool = True,
) -> KinshipMatrix:
    """The N×N kinship matrix of ``models`` (N ≥ 2) as deltas from ``base``, reading each model once.

    ``pairs`` (list of ``(i, j)`` index pairs) restricts which entries are computed, e.g.
    ``[(best, j) for j in range(N) if j != best]``; models in no pair are not read. Memory and
    ``include``/``exclude`` as for :func:`kinship`.
    """
    metrics = parse_metrics(metrics)
    models = list(models)
    if len(models) < 2:
        raise UserError(f"a kinship matrix needs at least two models, got {len(models)}")
    n = len(models)
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    else:
        checked = set()
        for pair in pairs:
            i, j = (int(k) for k in pair)
            if not (0 <= i < n and 0 <= j < n):
                raise UserError(f"pair ({i}, {j}) is out of range for {n} models")
            if i != j:
                checked.add((min(i, j), max(i, j)))
        pairs = sorted(checked)
        if not pairs:
            raise UserError("pairs: no pair of two different models")
    run = _run(models, base, metrics, include, exclude, pairs, None, device, progress)
    total = run.total()
    values = {}
    for metric in metrics:
        diag = 0.0 if metric == "euclidean" else 1.0
        grid = [[diag if i == j else None for j in range(n)] for i in range(n)]
        for i, j in pairs:
            grid[i][j] = grid[j][i] = run.value(total, metric, i, j)
        values[metric] = grid
    return KinshipMatrix(
        names=run.names,
        base=run.base_name,
        metrics=list(metrics),
        values=values,
        n_params=total.n,
        n_tensors=run.n_tensors,
        warnings=run.warnings,
    )


# ---------------------------------------------------------------------------------------------
# Tensor selection and grouping


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


def _group_order(group: str) -> tuple[int, int]:
    if group.startswith("layer "):
        return (1, int(group.split()[1]))
    return (_ORDER.get(group, 5), 0)


@dataclass
class _Item:
    """One compared tensor: the same element range ``[0, numel)`` of every model and the base."""

    name: str
    group: str
    numel: int
    infos: list[TensorInfo]  # base first, then each active model


def _select(base: Model, models: list[Model], names: list[str], active: list[int], include, exclude, breakdown):
    """Compared tensors, in the base's file order, and warnings. Checks every shape before reading."""
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
    items: list[_Item] = []
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
        items.append(_Item(key, group_of(key, breakdown), binfo.numel, infos))
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


# ---------------------------------------------------------------------------------------------
# Streaming float64 moments


class _Moments:
    """Exact running moments of the deltas of N models over n elements, in float64 on the CPU:
    means ``m`` (N), centred co-moments ``C`` (N×N, C_ij = Σ(x_i − m_i)(x_j − m_j)) and squared
    distances ``E`` (N×N, E_ij = Σ(x_i − x_j)²). Merged with Chan et al.'s pairwise update."""

    def __init__(self, n_models: int):
        self.n = 0
        self.m = torch.zeros(n_models, dtype=torch.float64)
        self.C = torch.zeros(n_models, n_models, dtype=torch.float64)
        self.E = torch.zeros(n_models, n_models, dtype=torch.float64)

    def merge(self, n: int, m: torch.Tensor, C: torch.Tensor, E: torch.Tensor) -> None:
        if n == 0:
            return
        total = self.n + n
        d = m - self.m
        self.C += C + torch.outer(d, d) * (self.n * n / total)
        self.m += d * (n / total)
        self.E += E
        self.n = total

    def metric(self, metric: str, i: int, j: int) -> float | None:
        """Kinship of rows i and j; ``None`` where undefined (a zero or constant delta)."""
        if metric == "euclidean":
            return math.sqrt(max(float(self.E[i, j]), 0.0))
        if metric == "pcc":
            M = self.C
        else:  # raw second moments: Σx_i x_j = C_ij + n m_i m_j
            M = self.C + self.n * torch.outer(self.m, self.m)
        if not (float(M[i, i]) > 0.0 and float(M[j, j]) > 0.0):
            return None
        value = float(M[i, j]) / math.sqrt(float(M[i, i]) * float(M[j, j]))
        return min(1.0, max(-1.0, value))

    def undefined(self, row: int, name: str) -> UserError:
        """The error for a row whose PCC or cosine is undefined."""
        if float(self.C[row, row]) + self.n * float(self.m[row]) ** 2 == 0.0:
            return UserError(
                f"model {name} is identical to the base over the compared tensors: its delta is zero, so "
                "PCC and cosine are undefined (euclidean still works)"
            )
        return UserError(f"the delta of model {name} is constant over the compared tensors, so its PCC is undefined")


@dataclass
class _Run:
    """What a streaming pass produced: moments per group, with model index -> moments row."""

    names: list[str]
    base_name: str
    groups: dict[str, _Moments]
    group_tensors: dict[str, int]
    n_tensors: int
    warnings: list[str]
    rows: list[int]  # model index -> row in the moments (-1: not read)

    def total(self) -> _Moments:
        total = _Moments(max(self.rows) + 1)
        for moments in self.groups.values():
            total.merge(moments.n, moments.m, moments.C, moments.E)
        return total

    def value(self, moments: _Moments, metric: str, i: int, j: int, strict: bool = True) -> float | None:
        """Kinship of models i and j; ``strict``: an undefined value is a UserError, not None."""
        value = moments.metric(metric, self.rows[i], self.rows[j])
        if value is None and strict:
            for k in (i, j):
                if moments.metric(metric, self.rows[k], self.rows[k]) is None:
                    raise moments.undefined(self.rows[k], self.names[k])
        return value


def _device(device) -> torch.device:
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


def _run(model_refs, base_ref, metrics, include, exclude, pairs, breakdown, device, progress) -> _Run:
    dev = _device(device)
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
        if "pcc" in metrics or "cosine" in metrics:
            for model, name in zip(models, names):
                if model.path.resolve() == base.path.resolve():
                    raise UserError(
                        f"model {name} is the base itself: its delta is zero, so PCC and cosine are undefined"
                    )
        active = sorted({k for pair in pairs for k in pair})
        rows = [active.index(k) if k in active else -1 for k in range(len(models))]
        items, notes = _select(base, models, names, active, include, exclude, breakdown)
        for note in notes:
            warnings.warn(note, KinshipWarning, stacklevel=3)
        pair_rows = [(rows[i], rows[j]) for i, j in pairs]
        sources = [base] + [models[i] for i in active]
        groups = _stream(items, sources, [base.name] + [names[i] for i in active], pair_rows, dev, progress)
    finally:
        for model in opened:
            model.close()
    group_tensors: dict[str, int] = {}
    for item in items:
        group_tensors[item.group] = group_tensors.get(item.group, 0) + 1
    return _Run(names, base.name, groups, group_tensors, len(items), notes, rows)


def _stream(items: list[_Item], sources: list[Model], source_names: list[str], pair_rows, dev, progress):
    """Read every item's bytes once from every source (base first), block by block, and reduce
    the blocks to moments per group.

    One thread reads ahead while ``workers`` threads reduce earlier blocks, each with
    single-threaded torch ops: on a busy machine, torch's own intra-op threads stall at their
    barriers (a 2×2048 float64 ``mm`` took 30 ms instead of 20 µs), whereas independent blocks
    need no synchronisation. Blocks are merged in file order, so results do not depend on timing.
    Memory: ``workers + 1`` sets of one ``BLOCK_BYTES`` buffer per source.
    """
    from tqdm.auto import tqdm

    n_models = len(sources) - 1
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

    sub = (CPU_SUBCHUNK or max(65536, 2**18 // n_models)) if dev.type == "cpu" else BLOCK_BYTES
    local = threading.local()

    def reduce(k: int, blocks):
        if not hasattr(local, "reducer"):
            if dev.type == "cpu":
                torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
            local.reducer = _BlockReducer(n_models, sub, dev, pair_rows)
        item, _, count = jobs[k]
        stats = local.reducer.reduce(blocks, count)
        if stats is None:  # the buffers are still this block's: find the culprit now
            raise _non_finite(item, blocks, source_names)
        return stats

    groups: dict[str, _Moments] = {}
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
                    groups.setdefault(item.group, _Moments(n_models)).merge(count, *stats)
                    bar.update(sum(count * info.itemsize for info in item.infos))
                    if merged + n_sets < len(jobs):
                        reads[merged + n_sets] = reader.submit(read, merged + n_sets)
                    merged += 1
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return groups


def _non_finite(item: _Item, blocks, source_names) -> UserError:
    for block, name in zip(blocks, source_names):
        if not bool(torch.isfinite(block).all()):
            return UserError(f"NaN or Inf in tensor '{item.name}' of model {name}")
    return UserError(f"NaN or Inf in the deltas of tensor '{item.name}' (overflow?)")


class _BlockReducer:
    """Reduces one block (the same element range of base and N models) to exact float64 moments.

    Per sub-chunk of ``sub`` elements: deltas in float64, their sums and their raw Gram matrix
    (one GEMM). The centred co-moments follow as G − n·m mᵀ, which is exact to ~1e-13 unless a
    sub-chunk's mean dominates its spread; such sub-chunks (rare: deltas are centred near zero) are
    reduced again with explicit centring. Scratch: N+1 float64 rows of ``sub`` elements on ``dev``.
    """

    def __init__(self, n_models: int, sub: int, dev: torch.device, pair_rows):
        self.n, self.sub, self.dev = n_models, sub, dev
        self.D = None
        self.b = None
        self.pair_mask = torch.zeros(n_models, n_models, dtype=torch.bool, device=dev)
        for i, j in pair_rows:
            self.pair_mask[i, j] = self.pair_mask[j, i] = True

    def _scratch(self, size: int):
        if self.D is None or self.D.shape[1] < size:
            self.D = torch.empty(self.n, size, dtype=torch.float64, device=self.dev)
            self.b = torch.empty(size, dtype=torch.float64, device=self.dev)
        return self.D, self.b

    def _deltas(self, base, models, s: int, e: int) -> torch.Tensor:
        d, bb = self.D[:, : e - s], self.b[: e - s]
        bb.copy_(base[s:e])
        for row, model in enumerate(models):
            d[row].copy_(model[s:e])
        return d.sub_(bb)

    def reduce(self, blocks: list[torch.Tensor], count: int):
        """(mean, C, E) of the block's deltas, or None if any value is NaN or Inf."""
        if self.dev.type != "cpu":
            blocks = [b.to(self.dev, non_blocking=False) for b in blocks]
        base, models = blocks[0], blocks[1:]
        sub = min(self.sub, count)
        self._scratch(sub)
        starts = range(0, count, sub)
        sums = torch.empty(len(starts), self.n, dtype=torch.float64, device=self.dev)
        Gs = torch.empty(len(starts), self.n, self.n, dtype=torch.float64, device=self.dev)
        for k, s in enumerate(starts):
            d = self._deltas(base, models, s, min(count, s + sub))
            torch.sum(d, dim=1, out=sums[k])
            torch.mm(d, d.T, out=Gs[k])
        ns = torch.tensor([min(sub, count - s) for s in starts], dtype=torch.float64, device=self.dev)
        ms = sums / ns[:, None]
        Cs = Gs - ns[:, None, None] * ms[:, :, None] * ms[:, None, :]
        if not bool(torch.isfinite(Cs).all()):
            return None
        raw, centred = Gs.diagonal(dim1=1, dim2=2), Cs.diagonal(dim1=1, dim2=2)
        # G − n·m mᵀ loses log10(G_ii / C_ii) digits; past three, centre explicitly.
        for k in torch.nonzero((raw > 1e3 * centred).any(1)).flatten().tolist():
            s = starts[k]
            d = self._deltas(base, models, s, min(count, s + sub))
            d.sub_(ms[k][:, None])
            torch.mm(d, d.T, out=Cs[k])
        mean = sums.sum(0) / count
        dev_m = ms - mean
        C = Cs.sum(0) + torch.einsum("k,ki,kj->ij", ns, dev_m, dev_m)
        # Σ(x_i − x_j)² from the raw Gram, unless it cancels: then directly from the data.
        Es = raw[:, :, None] + raw[:, None, :] - 2 * Gs
        E = Es.sum(0)
        scale = raw[:, :, None] + raw[:, None, :]
        bad = ((Es < _CANCELLATION_RATIO * scale) & self.pair_mask).any(0)
        if bool(bad.any()):
            for i, j in torch.nonzero(torch.triu(bad, 1)).tolist():
                E[i, j] = E[j, i] = self._direct_sq_distance(models[i], models[j], count)
        return mean.cpu(), C.cpu(), E.clamp_min_(0).cpu()

    def _direct_sq_distance(self, x: torch.Tensor, y: torch.Tensor, count: int) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.dev)
        sub = self.D.shape[1]
        for s in range(0, count, sub):
            e = min(count, s + sub)
            a, c = self.D[0, : e - s], self.b[: e - s]
            a.copy_(x[s:e])
            c.copy_(y[s:e])
            a.sub_(c)
            total += torch.dot(a, a)
        return float(total)
