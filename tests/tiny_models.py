"""Tiny Llama models for tests: a base saved by transformers, and children with known deltas.

    base = build_base(tmp / "base")                           # LlamaForCausalLM.save_pretrained, fp32
    a = make_child(base, tmp / "a", seed=1, shared_seed=9)   # base + 0.02·noise(1) + 0.02·noise(9)
    b = make_child(base, tmp / "b", seed=2, shared_seed=9, dtype=torch.bfloat16, shards=3)
    ref = dense_kinship(base, a, b)                          # numpy float64, the whole vector at once

Children are written with safetensors directly (or ``torch.save`` for ``fmt="bin"``), sharded on
request with a ``model.safetensors.index.json``; config.json (and any tokenizer files) are copied
from the base, so transformers, mergekit and lm-eval open them like any checkpoint. Sizes: the
default config has ~25k parameters; a model folder is ~100 kB.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LLAMA = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def build_base(path, seed: int = 0, dtype=torch.float32, **overrides) -> Path:
    """A randomly initialised LlamaForCausalLM saved with ``save_pretrained`` (single safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**LLAMA, **overrides})
    model = LlamaForCausalLM(config).to(dtype)
    # Norm weights start at exactly 1.0; perturb them so that every tensor has a non-trivial base.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.05 * torch.randn_like(param))
    path = Path(path)
    model.save_pretrained(path)
    return path


def read_weights(path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (single or sharded safetensors, or pytorch_model.bin)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(path / shard))
        return out
    if (path / "model.safetensors").exists():
        return load_file(path / "model.safetensors")
    return torch.load(path / "pytorch_model.bin", weights_only=True)


def write_model(path, tensors: dict[str, torch.Tensor], like, shards: int = 1, fmt: str = "safetensors",
                config_updates: dict | None = None) -> Path:
    """Write ``tensors`` as a model folder with the non-weight files of the model folder ``like``."""
    path, like = Path(path), Path(like)
    path.mkdir(parents=True, exist_ok=True)
    for f in like.iterdir():
        if f.is_file() and not f.name.startswith(("model", "pytorch_model")):
            shutil.copy(f, path / f.name)
    if config_updates:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(config_updates)
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if fmt == "bin":
        torch.save(tensors, path / "pytorch_model.bin")
        return path
    if shards <= 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return path
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, path / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def make_child(base, path, seed: int, scale: float = 0.02, shared_seed: int | None = None,
               shared_scale: float = 0.02, dtype=None, shards: int = 1, fmt: str = "safetensors",
               extra_vocab: int = 0) -> Path:
    """base + scale·N(0,1)[seed] (+ shared_scale·N(0,1)[shared_seed]) in every tensor.

    Two children with the same ``shared_seed`` share a component of their deltas, so their PCC is
    about shared²/(shared² + scale²). ``extra_vocab`` appends that many random rows to the
    embeddings and the head (added tokens). ``dtype`` casts the written weights (default: as base).
    """
    weights = read_weights(base)
    gen = torch.Generator().manual_seed(seed)
    shared = torch.Generator().manual_seed(shared_seed) if shared_seed is not None else None
    out = {}
    for name in sorted(weights):
        w = weights[name].to(torch.float64)
        delta = scale * torch.randn(w.shape, generator=gen, dtype=torch.float64)
        if shared is not None:
            delta += shared_scale * torch.randn(w.shape, generator=shared, dtype=torch.float64)
        child = w + delta
        if extra_vocab and ("embed_tokens" in name or name.startswith("lm_head")):
            rows = 0.02 * torch.randn((extra_vocab, *w.shape[1:]), generator=gen, dtype=torch.float64)
            child = torch.cat([child, rows])
        out[name] = child.to(dtype or weights[name].dtype)
    updates = {"vocab_size": weights["model.embed_tokens.weight"].shape[0] + extra_vocab} if extra_vocab else None
    return write_model(path, out, base, shards=shards, fmt=fmt, config_updates=updates)


def dense_deltas(base, *models, include=None, exclude=None) -> list[np.ndarray]:
    """Each model's whole delta from ``base`` as one float64 numpy vector (tensors in name order,
    added vocabulary rows cut to the base's), selected like the engine's include/exclude globs."""
    bw = read_weights(base)
    names = [
        n for n in sorted(bw)
        if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
        and not any(fnmatch.fnmatchcase(n, p) for p in (exclude or []))
    ]
    out = []
    for model in models:
        mw = read_weights(model)
        parts = [
            mw[n].to(torch.float64).numpy()[: bw[n].shape[0]].ravel() - bw[n].to(torch.float64).numpy().ravel()
            for n in names
        ]
        out.append(np.concatenate(parts))
    return out


def dense_sign_conflict(x: np.ndarray, y: np.ndarray) -> float | None:
    """Of the elements where x and y are both non-zero, the fraction whose signs differ (None
    when there is none), by counting in numpy."""
    both = (x != 0) & (y != 0)
    differ = both & (np.signbit(x) != np.signbit(y))
    return int(differ.sum()) / int(both.sum()) if both.any() else None


def dense_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """PCC, signed cosine, euclidean distance and sign conflict of two vectors, the textbook way,
    in float64."""
    return {
        "pcc": float(np.corrcoef(x, y)[0, 1]),
        "cosine": float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))),
        "euclidean": float(np.linalg.norm(x - y)),
        "sign_conflict": dense_sign_conflict(x, y),
    }


def dense_kinship(base, a, b, include=None, exclude=None) -> dict[str, float]:
    """The reference value of every metric for models a and b, from dense float64 deltas."""
    x, y = dense_deltas(base, a, b, include=include, exclude=exclude)
    return dense_metrics(x, y)
