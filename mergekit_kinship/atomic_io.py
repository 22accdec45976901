"""One way to write a file: whole or not at all.

Every file the package writes for later reading (run directory records, summaries, cards,
reports, the demo's kinship.json) goes through :func:`write_text`: a temporary file in the same
folder, fsync'd, then renamed over the target, so a kill at any moment leaves either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str, *, sync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns the path.

    ``sync`` fsyncs the data before the rename (survives power loss, not only a kill). Raises
    ``OSError`` as the file system reports it; callers turn it into a one-line error.
    """
    return write_bytes(path, text.encode("utf-8"), sync=sync)


def write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> Path:
    """:func:`write_text` for bytes (e.g. a sketch's safetensors file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            if sync:
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 1, sync: bool = True) -> Path:
    """:func:`write_text` of ``data`` as JSON (keys in the given order, a final newline)."""
    return write_text(path, json.dumps(data, indent=indent) + "\n", sync=sync)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete temporary files that a killed :func:`write_text` left in ``folder``. Call only
    when no other writer can be working there (the run directory's lock is held)."""
    for f in Path(folder).glob(".*.tmp-*"):
        f.unlink(missing_ok=True)
