"""Where sketches are kept: by content, in the user cache and in a run directory.

A sketch is stored as ``<folder>/<key>.sketch`` (a safetensors file, :meth:`Sketch.save`) under

    key = content_hash({"model": model identity, "base": base identity, "layout": fingerprint})

where the identities are :mod:`~mergekit_kinship.identity`'s (a folder: sha256 of its weights,
config and tokenizer files; a hub snapshot: ``hub:org/name@commit``; a run's child: its content
identity in the run) and the layout fingerprint names the compared tensors, their sizes and the
:class:`~mergekit_kinship.sketch.SketchParams`. Folders:

- the user cache, ``<cache>/sketches`` (``<cache>``: ``$MERGEKIT_KINSHIP_CACHE`` or
  ``~/.cache/mergekit-kinship``, as for the zoo): every model given by path or hub id, so any
  later command on the same family finds it;
- ``RUN_DIR/sketches``: a run's own models (its children, whose weights ``--keep`` may prune),
  and its foundation models' copies, so the run directory is complete on its own.

A folder's identity is remembered by its stamp (names, sizes, mtimes) in
``<cache>/sketches/identities/``, so that finding the cached sketch of an unchanged folder reads
none of its weights, not even to hash them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from mergekit_kinship.identity import content_hash, folder_identity, folder_stamp

SUFFIX = ".sketch"


def user_sketch_dir(cache_dir: Optional[str | Path] = None) -> Path:
    """``<cache>/sketches``: the default cache directory's unless ``cache_dir`` is given."""
    if cache_dir is None:
        from mergekit_kinship.zoo.family import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "sketches"


def sketch_key(model_identity: str, base_identity: str, fingerprint: str) -> str:
    return content_hash({"model": model_identity, "base": base_identity, "layout": fingerprint})


class SketchStore:
    """Sketches found in, and written to, ``folders`` (the first is written to; all are read)."""

    def __init__(self, folders):
        self.folders = [Path(f) for f in folders]
        self.written = 0

    def path(self, key: str, folder: Optional[Path] = None) -> Path:
        return (folder or self.folders[0]) / f"{key}{SUFFIX}"

    def get(self, key: str):
        """The stored sketch of this key, or None (a damaged file counts as none)."""
        from mergekit_kinship.sketch import Sketch

        for folder in self.folders:
            path = self.path(key, folder)
            if path.is_file():
                try:
                    return Sketch.load(path)
                except ValueError:
                    continue
        return None

    def put(self, key: str, sketch, everywhere: bool = False) -> None:
        """Write the sketch (atomically) to the first folder, or to every folder; a folder that
        cannot be written (a read-only cache) is skipped: a sketch is only ever a saving."""
        for folder in self.folders if everywhere else self.folders[:1]:
            try:
                sketch.save(self.path(key, folder))
                self.written += 1
            except OSError:
                continue


def model_identity(ref: str | os.PathLike, cache_dir: Optional[str | Path] = None) -> str:
    """The content identity of a model given by path or hub id (see the module docstring)."""
    from mergekit_kinship.models import resolve

    path, _ = resolve(ref)
    text = str(ref)
    if not Path(text).expanduser().exists():  # a hub snapshot: named by its commit
        from mergekit_kinship.hub import snapshot_identity, split_revision

        known = snapshot_identity(split_revision(text)[0], path)
        if known is not None:
            return known
    return cached_folder_identity(path, cache_dir)


def cached_folder_identity(path: str | Path, cache_dir: Optional[str | Path] = None) -> str:
    """:func:`~mergekit_kinship.identity.folder_identity`, remembered by the folder's stamp."""
    from mergekit_kinship.atomic_io import write_json

    real = os.path.realpath(path)
    record = user_sketch_dir(cache_dir) / "identities" / (
        hashlib.sha256(real.encode()).hexdigest()[:24] + ".json")
    stamp = folder_stamp(real)
    try:
        known = json.loads(record.read_text())
        if known.get("path") == real and known.get("stamp") == json.loads(json.dumps(stamp)):
            return known["identity"]
    except (OSError, ValueError, KeyError):
        pass
    identity = folder_identity(real)
    try:
        write_json(record, {"path": real, "stamp": stamp, "identity": identity}, sync=False)
    except OSError:
        pass
    return identity
