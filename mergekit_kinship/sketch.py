"""Delta sketches: a fixed-size summary of one model's delta from its base, made while it is read.

A :class:`Sketch` of the delta δ = θ − θ_0 (float64, over the compared tensors) holds

- per tensor, the exact element count, Σδ and Σδ²: the moments every metric needs from one model;
- a CountSketch of δ (Charikar et al. 2002), ``values``: tensor t owns ``width[t]`` consecutive
  entries, and element k of t adds ``sign(t, k)·δ_k`` to entry ``bucket(t, k)``. Inner products of
  two models' sketches estimate the cross term Σδ_aδ_b, per tensor, without bias (see
  :mod:`~mergekit_kinship.sketch_estimates` for the estimates and their stated error bounds). A
  tensor with no more elements than its width is stored as it is (``bucket = k``, sign +1): its
  part of any estimate is exact (norms, biases; every tensor of a model smaller than the sketch);
- the signs (−1, 0, +1 as int8) of δ at a fixed pseudo-random sample of positions (each position
  is in it with probability ``rate``): sign conflict is estimated on that sample.

Buckets, signs and the sample depend only on the tensor's NAME, the position in it and the seed,
through a 32-bit integer hash (the same in numpy on the CPU and in torch on a GPU), never on the
model, the order tensors are read in, or block boundaries. So every model's sketch over the same
:class:`SketchLayout` (same tensor names and sizes, same parameters) is comparable, whichever pass
made it: the streaming engine (:mod:`~mergekit_kinship.kinship_stream`) or the merge hook
(:mod:`~mergekit_kinship.merge_observer`). Summation order (threads) changes only the last bits.

Costs (measured on 2 shared CPU cores, BENCHMARKS.md "Delta sketches"): about 25 ns per
element for the hash, shared by every model of a pass, plus about 12 ns per element and model
for the scatter-add; so making the sketches of a family costs a few times one exact matrix of
it, and every later use (a matrix, an added model, ``lineage``, ``evolve``) reads none of it
again. Memory: one float64 sketch per model and reducing thread while a pass runs; on disk
``8·size`` bytes plus the sign sample.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FORMAT = "1"
DEFAULT_SIZE = 2**18  # CountSketch entries per model (2 MiB of float64)
DEFAULT_SIGNS = 2**16  # expected positions in the sign sample
MIN_WIDTH = 64  # the fewest entries a hashed tensor gets
_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # multipliers below 2**31, so torch's int64 products never overflow
_MIX_B, _MIX_C = 0x2545F491, 0x2C1B3C6D


@dataclass(frozen=True)
class SketchParams:
    """How sketches are made; part of every sketch's key. ``size``: CountSketch entries (the
    error bound of an estimate scales as 1/√size); ``signs``: expected sign-sample positions (0:
    no sign sample, so no sign-conflict estimate); ``seed``: of the hash."""

    size: int = DEFAULT_SIZE
    signs: int = DEFAULT_SIGNS
    seed: int = 0

    def __post_init__(self):
        if self.size < 1 or self.signs < 0:
            raise ValueError(f"sketch size must be positive and signs non-negative: {self}")

    def to_dict(self) -> dict:
        return {"size": self.size, "signs": self.signs, "seed": self.seed}


class SketchLayout:
    """Where each tensor's entries lie in a sketch: fixed by the tensors' names and sizes and the
    :class:`SketchParams`, and by nothing else. Tensors are ordered by name.

    Tensor t of n_t elements gets ``width[t] = min(n_t, max(MIN_WIDTH, ⌊size·n_t/n⌋))`` entries
    (``n``: all elements), so the sketch has about ``size`` entries; ``exact[t]`` when the width
    is the tensor itself. ``rate``: the probability that a position is in the sign sample."""

    def __init__(self, tensors, params: SketchParams):
        self.params = params
        self.tensors = sorted((str(name), int(numel)) for name, numel in tensors)
        if not self.tensors:
            raise ValueError("a sketch layout needs at least one tensor")
        self.index = {name: t for t, (name, _) in enumerate(self.tensors)}
        self.numel = np.array([n for _, n in self.tensors], dtype=np.int64)
        self.n = int(self.numel.sum())
        width = np.minimum(self.numel, np.maximum(MIN_WIDTH, (params.size * self.numel) // max(self.n, 1)))
        self.width = width.astype(np.int64)
        self.exact = self.width == self.numel
        self.offset = np.concatenate([[0], np.cumsum(self.width)[:-1]]).astype(np.int64)
        self.size = int(self.width.sum())
        self.rate = min(1.0, params.signs / self.n) if self.n else 0.0
        self.threshold = min(2**32, int(np.ceil(self.rate * 2**32)))  # sampled iff hash < this
        self.seeds = [_name_seed(name, params.seed) for name, _ in self.tensors]
        self.fingerprint = hashlib.sha256(json.dumps(
            {"tensors": self.tensors, "params": params.to_dict(), "format": FORMAT},
            separators=(",", ":")).encode()).hexdigest()[:16]

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def cached(tensors: tuple, params: SketchParams) -> "SketchLayout":
        return SketchLayout(tensors, params)

    @property
    def all_exact(self) -> bool:
        """Every tensor stored as it is, and every position in the sign sample or no sample at
        all (then no sign-conflict estimate): every value these sketches give is exact."""
        return bool(self.exact.all()) and (self.threshold == 0 or self.threshold >= 2**32)

    def hashes(self, t: int, start: int, end: int, device: torch.device):
        """(bucket index into the sketch (int64), sign (±1 float64), sampled (bool)) of positions
        [start, end) of tensor t, on ``device``; bucket and sign are None for an exact tensor,
        sampled None when there is no sign sample."""
        seed, width, offset = self.seeds[t], int(self.width[t]), int(self.offset[t])
        exact, sample = bool(self.exact[t]), self.threshold > 0
        if exact and (not sample or self.threshold >= 2**32):
            return None, None, (None if not sample else _all(end - start, device))
        if device.type == "cpu":
            x = _hash_np(start, end, seed)
            bucket = sign = None
            if not exact:
                bucket = torch.from_numpy(((x.astype(np.uint64) * np.uint64(width)) >> np.uint64(32))
                                          .astype(np.int64) + offset)
                sign = torch.from_numpy((x & np.uint32(1)).astype(np.float64) * 2.0 - 1.0)
            sampled = None
            if sample:
                sampled = torch.from_numpy(_second_np(x) < np.uint64(self.threshold))
            return bucket, sign, sampled
        x = _hash_torch(start, end, seed, device)
        bucket = sign = None
        if not exact:
            bucket = ((x * width) >> 32) + offset
            sign = (x & 1).to(torch.float64).mul_(2.0).sub_(1.0)
        sampled = (_second_torch(x) < self.threshold) if sample else None
        return bucket, sign, sampled


def _all(count: int, device) -> torch.Tensor:
    return torch.ones(count, dtype=torch.bool, device=device)


def _name_seed(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


def _hash_np(start: int, end: int, seed: int) -> np.ndarray:
    """The 32-bit hash of positions [start, end) of a tensor with this seed (uint32)."""
    pos = np.arange(start, end, dtype=np.uint64)
    x = (pos & np.uint64(_M32)).astype(np.uint32) ^ np.uint32(seed)
    if end > 2**32:  # positions past 2**32 fold their high word in
        x ^= (pos >> np.uint64(32)).astype(np.uint32) * np.uint32(0x9E3779B1)
    x ^= x >> np.uint32(16)
    x *= np.uint32(_MIX)
    x ^= x >> np.uint32(16)
    x *= np.uint32(_MIX)
    x ^= x >> np.uint32(16)
    return x


def _second_np(x: np.ndarray) -> np.ndarray:
    y = x * np.uint32(_MIX_B)
    y ^= y >> np.uint32(15)
    y *= np.uint32(_MIX_C)
    y ^= y >> np.uint32(12)
    return y.astype(np.uint64)


def _hash_torch(start: int, end: int, seed: int, device) -> torch.Tensor:
    """:func:`_hash_np` in int64 torch ops (every product stays below 2**63)."""
    pos = torch.arange(start, end, dtype=torch.int64, device=device)
    x = (pos & _M32) ^ seed
    if end > 2**32:
        x ^= ((pos >> 32) * 0x9E3779B1) & _M32
    x ^= x >> 16
    x = (x * _MIX) & _M32
    x ^= x >> 16
    x = (x * _MIX) & _M32
    return x ^ (x >> 16)


def _second_torch(x: torch.Tensor) -> torch.Tensor:
    y = (x * _MIX_B) & _M32
    y ^= y >> 15
    y = (y * _MIX_C) & _M32
    return y ^ (y >> 12)


@dataclass
class Sketch:
    """One model's sketch (see the module docstring). ``values``: (layout.size,) float64;
    ``sums``/``sumsq``: (tensors,) float64, exact Σδ and Σδ² per tensor; ``signs``: int8 sign
    codes at the sampled positions, in layout order. ``meta``: what it is a sketch of (model and
    base identities, display name), kept with it on disk."""

    layout: SketchLayout
    values: torch.Tensor
    sums: torch.Tensor
    sumsq: torch.Tensor
    signs: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.layout.n

    def norm2(self) -> float:
        return float(self.sumsq.sum())

    def save(self, path: str | Path) -> Path:
        """Write it as a safetensors file (atomically: a reader never sees half of one)."""
        from safetensors.torch import save

        from mergekit_kinship.atomic_io import write_bytes

        metadata = {"format": FORMAT, "tensors": json.dumps(self.layout.tensors),
                    "params": json.dumps(self.layout.params.to_dict()),
                    "meta": json.dumps(self.meta, default=str)}
        data = save({"values": self.values.contiguous(), "sums": self.sums.contiguous(),
                     "sumsq": self.sumsq.contiguous(), "signs": self.signs.contiguous()},
                    metadata=metadata)
        return write_bytes(Path(path), data)

    @classmethod
    def load(cls, path: str | Path) -> "Sketch":
        """Read a sketch written by :meth:`save`; ValueError when it is not one."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a sketch of format {FORMAT}")
                tensors = {k: fh.get_tensor(k) for k in ("values", "sums", "sumsq", "signs")}
            layout = SketchLayout.cached(tuple(tuple(t) for t in json.loads(metadata["tensors"])),
                                         SketchParams(**json.loads(metadata["params"])))
            meta = json.loads(metadata.get("meta", "{}"))
        except (OSError, KeyError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a readable sketch ({err})") from None
        if tensors["values"].shape[0] != layout.size or tensors["sums"].shape[0] != len(layout.tensors):
            raise ValueError(f"{path}: sketch does not match its own layout")
        return cls(layout, tensors["values"], tensors["sums"], tensors["sumsq"], tensors["signs"], meta)


class SketchBuilder:
    """Sketches of ``rows`` models, fed float64 delta blocks by any number of threads.

    :meth:`add` takes the deltas (rows × count, float64, on ``device``) of positions
    [start, start + count) of one tensor; every position of every layout tensor must be fed
    exactly once per row. Each calling thread accumulates into its own float64 arrays (rows ×
    layout.size), summed by :meth:`finish`: memory is ``8·rows·size`` bytes per thread."""

    def __init__(self, layout: SketchLayout, rows: int, device="cpu"):
        self.layout, self.rows, self.device = layout, rows, torch.device(device)
        self._local = threading.local()
        self._parts: list[dict] = []
        self._lock = threading.Lock()

    def _part(self) -> dict:
        part = getattr(self._local, "part", None)
        if part is None:
            T = len(self.layout.tensors)
            kw = {"dtype": torch.float64, "device": self.device}
            part = {"values": torch.zeros(self.rows, self.layout.size, **kw),
                    "sums": torch.zeros(self.rows, T, **kw), "sumsq": torch.zeros(self.rows, T, **kw),
                    "signs": []}
            self._local.part = part
            with self._lock:
                self._parts.append(part)
        return part

    def add(self, d: torch.Tensor, tensor: str, start: int) -> None:
        """Add deltas ``d`` (rows × count) at positions [start, start + count) of ``tensor``."""
        t = self.layout.index[tensor]
        count = d.shape[1]
        if count == 0:
            return
        part = self._part()
        bucket, sign, sampled = self.layout.hashes(t, start, start + count, d.device)
        part["sums"][:, t] += d.sum(1)
        part["sumsq"][:, t] += torch.einsum("rk,rk->r", d, d)
        if sampled is not None:
            picked = d[:, sampled] if not bool(sampled.all()) else d
            part["signs"].append((t, start, torch.sign(picked).to(torch.int8).cpu()))
        values = part["values"]
        if bucket is None:  # stored as it is
            off = int(self.layout.offset[t]) + start
            values[:, off:off + count] += d
            return
        # One scatter per row: a single index_add_ along dim 1 for every row measured slower in
        # a threaded pass and took twice the memory.
        for row in range(self.rows):
            values[row].index_add_(0, bucket, d[row] * sign)

    def finish(self, meta: Optional[list[dict]] = None) -> list[Sketch]:
        """The rows' sketches (CPU tensors); ``meta[i]`` describes row i."""
        T = len(self.layout.tensors)
        values = torch.zeros(self.rows, self.layout.size, dtype=torch.float64)
        sums = torch.zeros(self.rows, T, dtype=torch.float64)
        sumsq = torch.zeros(self.rows, T, dtype=torch.float64)
        pieces = []
        for part in self._parts:
            values += part["values"].cpu()
            sums += part["sums"].cpu()
            sumsq += part["sumsq"].cpu()
            pieces += part["signs"]
        pieces.sort(key=lambda piece: (piece[0], piece[1]))
        signs = (torch.cat([p[2] for p in pieces], 1) if pieces
                 else torch.zeros(self.rows, 0, dtype=torch.int8))
        meta = meta or [{} for _ in range(self.rows)]
        return [Sketch(self.layout, values[r].clone(), sums[r].clone(), sumsq[r].clone(),
                       signs[r].clone(), dict(meta[r])) for r in range(self.rows)]
