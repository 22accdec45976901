"""Exact float64 accumulators of N models' weight deltas, and the kinship metrics read from them.

One implementation for every caller: the streaming engine (:mod:`mergekit_kinship.kinship_stream`)
feeds blocks it reads from disk, and anything that already holds the tensors in memory (e.g. a
hook inside a merge) feeds whole tensors through :meth:`KinshipAccumulator.add`. Both go through
the same :class:`_BlockReducer` and the same merge, so their values are the same to rounding in
the last bits (the order of the float64 sums may differ with the block boundaries).

For models θ_1..θ_N and base θ_0 the delta of model i is δ_i = θ_i − θ_0 over every element
fed in, in float64. What is kept, per group of tensors (:class:`Moments`): the element count n,
the means m (N), the centred co-moments C (N×N, C_ij = Σ(δ_i − m_i)(δ_j − m_j)), the squared
distances E (N×N, E_ij = Σ(δ_i − δ_j)²) and, for ``sign_conflict``, two int64 counts (N×N): B_ij,
the elements where δ_i and δ_j are both non-zero, and X_ij, those of them whose signs differ.
Blocks are merged with Chan et al.'s pairwise formula (the counts by plain addition),
so PCC never uses the cancelling ``Σxy/n − x̄ȳ`` over a whole vector; squared distances that
cancel (two near-identical models) are recomputed directly from the data. Everything is global:
a value over several groups comes from their merged moments, never from an average of values.

Adding a metric means: a field in :class:`BlockStats`, its reduction in
:meth:`_BlockReducer.reduce`, its merge in :meth:`Moments.merge`, and its value in
:meth:`Moments.metric`; every caller then gets it in the same pass (``sign_conflict`` is the worked
example: its counts are the only state that is not a moment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mergekit_kinship.errors import UserError
from mergekit_kinship.metrics import canonical, parse_metrics

# float64 elements per model reduced at once on the CPU (None: 2**16 / N, at least 16384), so
# that the N rows stay in L2 cache across the passes over them. Measured on a 2-core Xeon (2 MiB
# of L2 per core), CPU time per 8 MiB block: 32768 for N = 2 and 16384 for N = 8 were the best,
# a third faster than the 131072 and 65536 once measured best on an EPYC; and sign codes pack
# only below 2**17 elements (see _count_signs).
CPU_SUBCHUNK: int | None = None
# On a GPU cache locality does not matter; this only bounds the float64 scratch (8 B × N × this).
GPU_SUBCHUNK = 8 * 1024 * 1024
# Squared distances computed from moments lose about -log10(ratio) digits when
# ‖x−y‖² < ratio·(‖x‖²+‖y‖²); below this ratio they are recomputed from the data.
_CANCELLATION_RATIO = 1e-3


@dataclass
class BlockStats:
    """Exact float64 statistics of the deltas of N models over one block of ``n`` elements, on
    the CPU. Everything a metric needs is here, and merges exactly (see :meth:`Moments.merge`)."""

    n: int
    m: torch.Tensor  # (N,) mean of each delta over the block
    C: torch.Tensor  # (N, N) centred co-moments
    E: torch.Tensor  # (N, N) squared distances between deltas
    # (N, N) int64, None when signs are not counted: B_ij = #{δ_i ≠ 0 and δ_j ≠ 0} (B_ii: the
    # non-zero elements of δ_i) and X_ij = #{δ_i·δ_j < 0}; merged by plain addition.
    B: torch.Tensor | None = None
    X: torch.Tensor | None = None


class Moments:
    """Running :class:`BlockStats` of one group of tensors: n, means ``m`` (N), co-moments ``C``
    and squared distances ``E`` (N×N), float64 on the CPU; with ``signs``, the sign counts ``B``
    and ``X`` (N×N, int64)."""

    def __init__(self, n_models: int, signs: bool = True):
        self.n = 0
        self.m = torch.zeros(n_models, dtype=torch.float64)
        self.C = torch.zeros(n_models, n_models, dtype=torch.float64)
        self.E = torch.zeros(n_models, n_models, dtype=torch.float64)
        self.B = torch.zeros(n_models, n_models, dtype=torch.int64) if signs else None
        self.X = torch.zeros(n_models, n_models, dtype=torch.int64) if signs else None

    def merge(self, stats: BlockStats | Moments) -> None:
        """Add a block (or another group's moments): Chan et al.'s pairwise update; counts add."""
        n, m = stats.n, stats.m
        if n == 0:
            return
        total = self.n + n
        d = m - self.m
        self.C += stats.C + torch.outer(d, d) * (self.n * n / total)
        self.m += d * (n / total)
        self.E += stats.E
        if self.B is not None:
            if stats.B is None:
                raise ValueError("cannot merge statistics without sign counts into moments with them")
            self.B += stats.B
            self.X += stats.X
        self.n = total

    def metric(self, metric: str, i: int, j: int) -> float | None:
        """Kinship of rows i and j under a canonical metric name; ``None`` where undefined (a zero
        delta has no PCC, cosine or sign conflict, a constant one no PCC; two deltas that are never
        both non-zero have no sign conflict). ``i == j`` tells whether row i's own value is defined."""
        if metric == "euclidean":
            return math.sqrt(max(float(self.E[i, j]), 0.0))
        if metric == "sign_conflict":
            if self.B is None:
                raise ValueError("this accumulator does not count signs: create it with sign_conflict "
                                 "among its metrics")
            both = int(self.B[i, j])
            return int(self.X[i, j]) / both if both else None
        if metric == "pcc":
            M = self.C
        elif metric == "cosine":  # raw second moments: Σx_i x_j = C_ij + n m_i m_j
            M = self.C + self.n * torch.outer(self.m, self.m)
        else:
            raise ValueError(f"no accumulator computes metric {metric!r}")
        if not (float(M[i, i]) > 0.0 and float(M[j, j]) > 0.0):
            return None
        value = float(M[i, j]) / math.sqrt(float(M[i, i]) * float(M[j, j]))
        return min(1.0, max(-1.0, value))

    def is_zero(self, i: int) -> bool:
        """Whether delta i is exactly zero over every element (Σδ_i² = C_ii + n m_i² = 0)."""
        return float(self.C[i, i]) + self.n * float(self.m[i]) ** 2 == 0.0


def default_subchunk(n_models: int, device: torch.device) -> int:
    if device.type == "cpu":
        return CPU_SUBCHUNK or max(16384, 2**16 // n_models)
    return GPU_SUBCHUNK


class KinshipAccumulator:
    """Kinship of N models' deltas from one base, accumulated tensor by tensor in exact float64.

    Feed it the same element range of the base and of every model, as often as you like, each
    under a group name (``"all"``, or a breakdown group such as ``"layer 3"``); then ask for
    :meth:`value` of any pair, per group or over everything fed. The value is the global one of
    the concatenated deltas (Hu et al., arXiv 2410.12613, §4.1), whatever the order and size of
    the pieces, to float64 rounding.

    ``pairs``: the (i, j) pairs whose values will be asked for (default: all). Other pairs'
    squared distances are not corrected for cancellation, so only their euclidean values may be
    inexact for near-identical models. ``device``: where the float64 reduction runs (``"cpu"`` or
    a CUDA device); tensors elsewhere are copied there sub-chunk by sub-chunk. ``metrics``: the
    metrics that will be asked for (default: all); the sign counts behind ``sign_conflict`` are
    only kept when it is among them. Scratch memory: N+1 float64 rows of :func:`default_subchunk`
    elements per reducer, however large the tensors. Not thread-safe: one thread merges; others
    may reduce with their own :meth:`reducer`.
    """

    def __init__(self, n_models: int, pairs=None, device="cpu", subchunk: int | None = None,
                 metrics=None):
        if n_models < 1:
            raise ValueError(f"a kinship accumulator needs at least one model, got {n_models}")
        self.n_models = n_models
        self.signs = metrics is None or "sign_conflict" in parse_metrics(metrics)
        self.device = torch.device(device)
        self.subchunk = subchunk or default_subchunk(n_models, self.device)
        if pairs is None:
            pairs = [(i, j) for i in range(n_models) for j in range(i + 1, n_models)]
        self.pairs = [(int(i), int(j)) for i, j in pairs]
        self.groups: dict[str, Moments] = {}  # in the order first fed
        self._total: Moments | None = None
        self._reducer: _BlockReducer | None = None

    def reducer(self) -> _BlockReducer:
        """A new reducer with this accumulator's settings and its own scratch (one per thread)."""
        return _BlockReducer(self.n_models, self.subchunk, self.device, self.pairs, self.signs)

    def merge(self, group: str, stats: BlockStats) -> None:
        """Add one reduced block to ``group``. Blocks merged in the same order give the same bits."""
        self.groups.setdefault(group, Moments(self.n_models, self.signs)).merge(stats)
        self._total = None

    def add(self, base: torch.Tensor, models, group: str = "all", *, tensor: str = "?",
            on_deltas=None) -> None:
        """Add one tensor: ``base`` and each of the N ``models`` tensors, all of one shape, any
        floating dtype and device. A model with added vocabulary rows is passed as its first
        ``base.shape[0]`` rows. ``tensor`` names it in errors. ``on_deltas``: see
        :meth:`_BlockReducer.reduce` (e.g. a sketch builder's feed). Memory: the reducer's
        scratch, plus one copy of any tensor that is not contiguous. Raises :class:`UserError` on
        NaN or Inf (nothing is merged then), ``ValueError`` on a wrong count or shape."""
        models = list(models)
        if len(models) != self.n_models:
            raise ValueError(f"expected {self.n_models} model tensors, got {len(models)}")
        for model in models:
            if model.shape != base.shape:
                raise ValueError(f"tensor '{tensor}': shape {list(model.shape)} in a model but "
                                 f"{list(base.shape)} in the base")
        blocks = [t.detach().reshape(-1) for t in (base, *models)]
        if not blocks[0].numel():
            return
        if self._reducer is None:
            self._reducer = self.reducer()
        stats = self._reducer.reduce(blocks, blocks[0].numel(), on_deltas)
        if stats is None:
            labels = ["the base"] + [f"model {k}" for k in range(self.n_models)]
            raise non_finite_error(tensor, blocks, labels)
        self.merge(group, stats)

    def moments(self, group: str | None = None) -> Moments:
        """The moments of one group, or (``None``) of everything fed, merged in group order."""
        if group is not None:
            return self.groups[group]
        if self._total is None:
            self._total = Moments(self.n_models, self.signs)
            for moments in self.groups.values():
                self._total.merge(moments)
        return self._total

    def n_params(self, group: str | None = None) -> int:
        return self.moments(group).n

    def value(self, metric: str, i: int, j: int, group: str | None = None) -> float | None:
        """Kinship of models i and j (0-based, in the order fed) under ``metric`` (canonical name
        or alias), over ``group`` or everything; ``None`` where undefined (see :meth:`Moments.metric`)."""
        return self.moments(group).metric(canonical(metric), i, j)


def non_finite_error(tensor: str, blocks, labels) -> UserError:
    """The error for a block with NaN or Inf: names the first source (``labels``, base first)
    whose values are not finite, or blames the deltas (an overflow in the subtraction)."""
    for block, label in zip(blocks, labels):
        if not bool(torch.isfinite(block).all()):
            return UserError(f"NaN or Inf in tensor '{tensor}' of {label}")
    return UserError(f"NaN or Inf in the deltas of tensor '{tensor}' (overflow?)")


class _BlockReducer:
    """Reduces one block (the same element range of base and N models) to exact float64 moments.

    Per sub-chunk of ``sub`` elements: deltas in float64, their sums and their raw Gram matrix
    (one GEMM). The centred co-moments follow as G − n·m mᵀ, which is exact to ~1e-13 unless a
    sub-chunk's mean dominates its spread; such sub-chunks (rare: deltas are centred near zero) are
    reduced again with explicit centring. Scratch: N+1 float64 rows of ``sub`` elements on ``dev``.

    With ``signs``, the same float64 deltas are then overwritten by sign codes and counted by one
    more GEMM per sub-chunk (:meth:`_count_signs`); the counts are exact integers.
    """

    def __init__(self, n_models: int, sub: int, dev: torch.device, pair_rows, signs: bool = True):
        self.n, self.sub, self.dev, self.signs = n_models, sub, dev, signs
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

    def reduce(self, blocks: list[torch.Tensor], count: int, on_deltas=None) -> BlockStats | None:
        """Stats of the first ``count`` elements of the 1-D ``blocks`` (base first), or None if
        any value is NaN or Inf. ``on_deltas(d, start)``, when given, sees each sub-chunk's float64
        deltas (N × n, elements [start, start + n) of the block) before they are overwritten, in
        the calling thread: what a delta sketch is made from, in the same pass."""
        if self.dev.type != "cpu":
            blocks = [b.to(self.dev, non_blocking=False) for b in blocks]
        base, models = blocks[0], blocks[1:]
        sub = min(self.sub, count)
        self._scratch(sub)
        starts = range(0, count, sub)
        sums = torch.empty(len(starts), self.n, dtype=torch.float64, device=self.dev)
        Gs = torch.empty(len(starts), self.n, self.n, dtype=torch.float64, device=self.dev)
        packed = sub < _SIGN_BASE and all(_codes_exact(b.dtype) for b in blocks)
        codes = [torch.empty_like(Gs) for _ in range(1 if packed else 2)] if self.signs else None
        for k, s in enumerate(starts):
            d = self._deltas(base, models, s, min(count, s + sub))
            if on_deltas is not None:
                on_deltas(d, s)
            torch.sum(d, dim=1, out=sums[k])
            torch.mm(d, d.T, out=Gs[k])
            if codes is not None:  # after the Gram: this overwrites the deltas
                self._count_signs(d, [c[k] for c in codes], packed)
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
        B, X = _sign_counts(codes, packed) if codes is not None else (None, None)
        return BlockStats(count, mean.cpu(), C.cpu(), E.clamp_min_(0).cpu(), B, X)

    def deltas_only(self, blocks: list[torch.Tensor], count: int, on_deltas) -> bool:
        """Only feed ``on_deltas`` (see :meth:`reduce`) each sub-chunk's deltas, for a pass that
        sketches without exact moments; False (and stop) at a NaN or Inf."""
        if self.dev.type != "cpu":
            blocks = [b.to(self.dev, non_blocking=False) for b in blocks]
        sub = min(self.sub, count)
        self._scratch(sub)
        for s in range(0, count, sub):
            d = self._deltas(blocks[0], blocks[1:], s, min(count, s + sub))
            if not bool(torch.isfinite(d).all()):
                return False
            on_deltas(d, s)
        return True

    @staticmethod
    def _count_signs(d: torch.Tensor, out: list[torch.Tensor], packed: bool) -> None:
        """Overwrite the deltas ``d`` (N × n) by sign codes and write their Gram(s) to ``out``.

        ``packed`` (every source float32/bfloat16/float16, n < K = 2^17): a non-zero delta is at
        least 2^-149 in magnitude (the smallest float32 subnormal; IEEE subtraction never rounds a
        difference to 0 or across 0), so one in-place clamp to [−2^-149, 2^-149/K] codes + as 1
        unit, − as −K units and 0 as 0, exactly. One GEMM then gives a_pp − K·x + K²·a_nn units²
        for each pair (a_pp, a_nn: elements where both deltas are positive, both negative; x: where
        their signs differ): three base-K digits, exact in float64 (< 2^51), decoded by
        :func:`_sign_counts`. Otherwise (float64 sources, or the GPU's long sub-chunks): the
        signs s ∈ {−1, 0, 1} and two GEMMs, s·sᵀ = agree − conflict and |s|·|s|ᵀ = both non-zero.
        """
        if packed:
            torch.mm(d.clamp_(-_CODE_NEG, _CODE_POS), d.T, out=out[0])
            return
        torch.mm(d.sign_(), d.T, out=out[0])
        torch.mm(d.abs_(), d.T, out=out[1])

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


# Sign codes (see _BlockReducer._count_signs): K, the base of the packed digits, and the codes.
_SIGN_BASE = 2**17
_CODE_NEG = 2.0**-149
_CODE_POS = _CODE_NEG / _SIGN_BASE
_CODE_UNITS = 2.0 ** (2 * (149 + 17))  # 1 / _CODE_POS²: a power of two, so scaling is exact


def _codes_exact(dtype: torch.dtype) -> bool:
    """Whether every non-zero delta of weights of this dtype is at least 2^-149 in magnitude."""
    if not dtype.is_floating_point:
        return False
    info = torch.finfo(dtype)
    return info.tiny * info.eps >= _CODE_NEG


def _sign_counts(codes: list[torch.Tensor], packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, X): int64 (N×N) counts of both-non-zero and sign-conflicting elements, summed over the
    sub-chunks' code Grams (k × N × N) from :meth:`_BlockReducer._count_signs`."""
    if packed:
        K = _SIGN_BASE
        V = (codes[0] * _CODE_UNITS).to(torch.int64)  # a_pp − K·x + K²·a_nn, exact
        agree_pos = torch.remainder(V, K)
        W = torch.div(V - agree_pos, K, rounding_mode="floor")  # K·a_nn − x
        conflict = torch.remainder(-W, K)
        agree_neg = torch.div(W + conflict, K, rounding_mode="floor")
        both = agree_pos + agree_neg + conflict
    else:
        signed, both = (c.to(torch.int64) for c in codes)  # exact integers below 2^53
        conflict = torch.div(both - signed, 2, rounding_mode="floor")
    return both.sum(0).cpu(), conflict.sum(0).cpu()
