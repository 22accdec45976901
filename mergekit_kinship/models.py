"""Open a model and stream its tensors, one byte range at a time.

A model is a local folder or a hub id. Local folders are read the way mergekit reads them
(``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin`` or its index), but
safetensors are parsed here, without mergekit: the header gives every tensor's dtype, shape and byte
range, so a model can be listed, checked (architecture, hidden size, shapes, truncation) and
compared before any weight is read, and a weight is read as any sub-range of its bytes with one
``readinto`` into a caller's buffer. Nothing is memory-mapped, so the bytes read do not stay in the
process's resident memory. Hub ids are resolved to a local snapshot by
:func:`mergekit_kinship.hub.snapshot` (the package's one hub resolver), and ``.bin`` files are
opened with ``torch.load(mmap=True, weights_only=True)``.

Every problem with a user's file is a :class:`~mergekit_kinship.errors.UserError` that names the
model and the file or tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergekit_kinship import hub
from mergekit_kinship.errors import UserError

# safetensors dtype names -> torch dtypes we can compare (floating point weights only).
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# safetensors names of dtypes that exist but are not weights we can take a delta of
_OTHER_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8}

_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on a header's size


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. ``offset`` is the absolute byte offset in ``file`` (safetensors);
    ``None`` for ``.bin`` shards, which are read through torch."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None  # None: not a floating-point dtype (e.g. an integer buffer)
    dtype_name: str
    file: str
    offset: int | None
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return self.nbytes // self.numel if self.numel else 0


@dataclass
class Model:
    """An opened model: its tensors' locations and a few config fields. Opening reads headers and
    ``config.json`` only. Use as a context manager (or call :meth:`close`) to release file handles.
    """

    ref: str  # what the user gave: a path or a hub id
    name: str  # display name: the folder's name, or the hub id
    path: Path  # local folder that holds the weights
    format: str  # "safetensors" or "bin"
    tensors: dict[str, TensorInfo]
    config: dict = field(default_factory=dict)
    _files: dict = field(default_factory=dict, repr=False)
    _bin_shards: dict = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type")

    @property
    def hidden_size(self) -> int | None:
        return _config_value(self.config, ("hidden_size", "d_model", "n_embd"))

    @property
    def vocab_size(self) -> int | None:
        return _config_value(self.config, ("vocab_size",))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def read(self, info: TensorInfo, start: int, count: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements ``[start, start + count)`` of the flattened tensor, in its own dtype.

        ``buffer`` is a CPU uint8 tensor of at least ``count * itemsize`` bytes; for safetensors
        the bytes are read straight into it and the result is a view of it (valid until the buffer
        is reused). Scratch memory: the buffer only.
        """
        size = count * info.itemsize
        if info.offset is None:
            flat = self._bin_tensor(info).reshape(-1)[start : start + count]
            out = buffer[:size].view(info.dtype)
            out.copy_(flat)
            return out
        handle = self._files.get(info.file)
        if handle is None:
            handle = self._files[info.file] = open(info.file, "rb", buffering=0)
        view = memoryview(buffer.numpy())[:size]
        handle.seek(info.offset + start * info.itemsize)
        got = 0
        while got < size:
            n = handle.readinto(view[got:])
            if not n:
                raise UserError(f"{info.file}: file ended while reading tensor '{info.name}' (truncated?)")
            got += n
        return buffer[:size].view(info.dtype)

    def _bin_tensor(self, info: TensorInfo) -> torch.Tensor:
        shard = self._bin_shards.get(info.file)
        if shard is None:
            # One .bin shard at a time: its mmap is dropped when the next shard is opened.
            self._bin_shards.clear()
            shard = self._bin_shards[info.file] = _load_bin(info.file)
        return shard[info.name]

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._bin_shards.clear()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _config_value(config: dict, keys: tuple[str, ...]):
    for cfg in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def resolve(ref: str | os.PathLike, cache_dir: str | None = None) -> tuple[Path, str]:
    """(local folder, display name) for a local path or a hub id.

    An existing path is local; anything else that looks like ``[org/]name[@revision]`` is a hub
    snapshot (:func:`mergekit_kinship.hub.snapshot`: safetensors if the repo has them, else
    ``.bin``; config and tokenizer files), which needs the network or the local hub cache. The
    display name of a hub model is the reference as given, revision included.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{text} is a file, not a model folder: give the folder that holds it")
        return path, path.resolve().name
    if "+" in text:
        raise UserError(f"{text}: LoRA references (model+lora) are not supported; merge the adapter first")
    if not hub.is_hub_id(text):
        raise UserError(f"{text} is not a model: no such folder, and not a hub id (org/name)")
    repo, revision = hub.split_revision(text)
    return hub.snapshot(repo, revision, cache_dir=cache_dir), text


def open_model(ref: str | os.PathLike, *, cache_dir: str | None = None) -> Model:
    """Open a model: find its weight files, read their headers and ``config.json``.

    Reads a few kilobytes per file; raises :class:`UserError` for a folder without weights, a
    missing shard, a truncated or corrupt safetensors file, or an unreadable config.
    """
    path, name = resolve(ref, cache_dir)
    config = _read_config(path, name)
    st_index = path / "model.safetensors.index.json"
    st_single = path / "model.safetensors"
    bin_index = path / "pytorch_model.bin.index.json"
    bin_single = path / "pytorch_model.bin"
    if st_index.exists():
        files = _shards_from_index(st_index, name)
        tensors = _safetensors_tensors(files, name, _weight_map(st_index, name))
        fmt = "safetensors"
    elif st_single.exists():
        tensors = _safetensors_tensors([st_single], name, None)
        fmt = "safetensors"
    elif bin_index.exists():
        tensors = _bin_tensors(_shards_from_index(bin_index, name), name)
        fmt = "bin"
    elif bin_single.exists():
        tensors = _bin_tensors([bin_single], name)
        fmt = "bin"
    else:
        raise UserError(
            f"{ref} is not a model: no model.safetensors, model.safetensors.index.json or "
            f"pytorch_model.bin in {path}"
        )
    if not tensors:
        raise UserError(f"{ref}: the model's weight files hold no tensors")
    return Model(ref=str(ref), name=name, path=path, format=fmt, tensors=tensors, config=config)


def _read_config(path: Path, name: str) -> dict:
    cfg = path / "config.json"
    if not cfg.exists():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{cfg}: not a readable config.json ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{cfg}: not a config object")
    return data


def _weight_map(index: Path, name: str) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        for key, shard in weight_map.items():
            if not isinstance(shard, str):
                raise TypeError(f"tensor '{key}' maps to {shard!r}, not a file name")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{index}: corrupt shard index ({err})") from None
    return weight_map


def _shards_from_index(index: Path, name: str) -> list[Path]:
    files = []
    for shard in dict.fromkeys(_weight_map(index, name).values()):
        file = index.parent / shard
        if not file.is_file():
            raise UserError(f"model {name}: shard {shard} listed in {index.name} is missing")
        files.append(file)
    return files


def read_safetensors_header(file: Path) -> tuple[dict[str, dict], int]:
    """Parse and check a safetensors header without reading any tensor data.

    Returns ``({tensor name: {"dtype", "shape", "data_offsets"}}, byte offset of the data)``. Raises :class:`UserError` when
    the header is malformed, when a tensor's byte range disagrees with its dtype and shape, or when
    the file is shorter than the header says (a truncated download or copy).
    """
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"{file}: truncated or corrupt safetensors file ({size} bytes)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > _HEADER_LIMIT or 8 + hlen > size:
            raise UserError(f"{file}: truncated or corrupt safetensors file (header of {hlen} bytes in a {size}-byte file)")
        raw = fh.read(hlen)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: corrupt safetensors header ({err})") from None
    header.pop("__metadata__", None)
    end = 0
    for key, entry in header.items():
        try:
            dtype, shape, (lo, hi) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            item = _itemsize(dtype)
            for value in (*shape, lo, hi):
                if type(value) is not int or value < 0:
                    raise ValueError(f"{value!r} is not a size or offset")
        except (TypeError, KeyError, ValueError) as err:
            raise UserError(f"{file}: corrupt safetensors header at tensor '{key}' ({err})") from None
        numel = 1
        for d in shape:
            numel *= d
        if not (0 <= lo <= hi) or hi - lo != numel * item:
            raise UserError(f"{file}: corrupt safetensors header: tensor '{key}' has {hi - lo} bytes for shape {shape} {dtype}")
        end = max(end, hi)
    if 8 + hlen + end > size:
        raise UserError(
            f"{file}: truncated safetensors file: {size} bytes on disk, the header needs {8 + hlen + end}"
        )
    return header, 8 + hlen


def _itemsize(dtype: str) -> int:
    if dtype in SAFETENSORS_DTYPES:
        return torch.empty((), dtype=SAFETENSORS_DTYPES[dtype]).element_size()
    if dtype in _OTHER_DTYPES:
        return _OTHER_DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}")


def _safetensors_tensors(files: list[Path], name: str, weight_map: dict | None) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        header, data_start = read_safetensors_header(file)
        # Sort by offset so that a whole model is read front to back.
        for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            lo, hi = entry["data_offsets"]
            tensors[key] = TensorInfo(
                name=key,
                shape=tuple(int(d) for d in entry["shape"]),
                dtype=SAFETENSORS_DTYPES.get(entry["dtype"]),
                dtype_name=entry["dtype"],
                file=str(file),
                offset=data_start + lo,
                nbytes=hi - lo,
            )
    if weight_map is not None:
        missing = [k for k in weight_map if k not in tensors]
        if missing:
            raise UserError(f"model {name}: tensor '{missing[0]}' is in the shard index but in no shard (corrupt download?)")
    return tensors


def _load_bin(file: str) -> dict:
    try:
        try:
            shard = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:
            # Legacy (non-zip) pickles cannot be memory-mapped.
            shard = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{file}: not a readable PyTorch weights file ({first})") from None
    if isinstance(shard, dict) and "state_dict" in shard:
        shard = shard["state_dict"]
    if not isinstance(shard, dict):
        raise UserError(f"{file}: not a PyTorch state dict")
    return shard


def _bin_tensors(files: list[Path], name: str) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        shard = _load_bin(str(file))
        for key, value in shard.items():
            if not isinstance(value, torch.Tensor):
                continue
            dtype = value.dtype if value.is_floating_point() else None
            tensors[key] = TensorInfo(
                name=key,
                shape=tuple(value.shape),
                dtype=dtype,
                dtype_name=str(value.dtype).replace("torch.", ""),
                file=str(file),
                offset=None,
                nbytes=value.numel() * value.element_size(),
            )
        del shard
    return tensors


def display_names(models: list[Model]) -> list[str]:
    """Folder names (or hub ids); the user's own strings where two folder names collide."""
    names = [m.name for m in models]
    if len(set(names)) == len(names):
        return names
    return [m.ref if names.count(m.name) > 1 else m.name for m in models]


def check_compatible(models: list[Model], base: Model) -> None:
    """Same architecture and hidden size as the base, from ``config.json`` where present."""
    for model in models:
        if model.architecture and base.architecture and model.architecture != base.architecture:
            raise UserError(
                f"model '{model.name}' is a {model.architecture} but the base '{base.name}' is a {base.architecture}: "
                "kinship compares fine-tunes of one base"
            )
        if model.hidden_size and base.hidden_size and model.hidden_size != base.hidden_size:
            raise UserError(
                f"model '{model.name}' has hidden size {model.hidden_size} but the base '{base.name}' has "
                f"{base.hidden_size}: kinship compares fine-tunes of one base"
            )
