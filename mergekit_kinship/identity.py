"""Content identities: what names a model, a child, a score or a kinship value in a run.

- a local model folder: sha256 of its weight, config and tokenizer files (:func:`folder_identity`),
  cached by a cheap :func:`folder_stamp` (names, sizes, mtimes);
- a hub model: ``hub:org/name@<commit of its snapshot>`` (:func:`mergekit_kinship.hub.snapshot_identity`);
- anything else (a child's merge configuration, a score's model + evaluation fingerprint, a
  kinship pair): :func:`content_hash` of its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")
_NOT_CONTENT = {"mergekit-kinship.json", "kinship.json"}  # our own records, written after a merge


def content_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace), hex, truncated."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def folder_identity(path: str | Path) -> str:
    """sha256 over a model folder's weights and JSON config files (names and bytes).

    Reads every weight byte once (about 1 GB/s); callers cache it by :func:`folder_stamp`.
    Tokenizer files are included since they change what is evaluated.
    """
    digest = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and f.name not in _NOT_CONTENT and (
                f.suffix in _WEIGHT_SUFFIXES or f.name.startswith("tokenizer")):
            digest.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def folder_stamp(path: str | Path) -> list:
    """Cheap fingerprint (names, sizes, mtimes) that says when a folder identity is stale."""
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns]
                  for f in Path(path).iterdir() if f.is_file())
