"""A child as a standard mergekit YAML, and that YAML run through mergekit's Python pipeline.

The YAML is the contract with mergekit: what :func:`merge_yaml` runs is byte for byte the text a
user can run with ``mergekit-yaml``. Model references are absolute paths (a relative path with a
slash is taken for a hub id by mergekit's card code) or hub ids.

Only :func:`merge_yaml` imports mergekit and torch (about 10 s the first time), inside its body.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from mergekit_kinship.recipe import MergeTemplate

MARKER = "mergekit-kinship.json"  # written into a merged folder before it is renamed into place


def child_config(template: MergeTemplate, parent_a: str, parent_b: str, ancestor: str
                 ) -> dict[str, Any]:
    """The mergekit configuration (a plain dict) merging ``parent_a`` and ``parent_b``.

    ``base_model`` follows the method (see :mod:`mergekit_kinship.recipe`): parent A for slerp,
    the shared ancestor for task-vector methods, none for linear and base-less nuslerp.
    References are used as given (absolute paths or hub ids).
    """
    role = template.base_role
    per_model = template.model_parameters or None
    models = []
    for ref in (parent_a, parent_b):
        entry: dict[str, Any] = {"model": ref}
        if per_model:
            entry["parameters"] = _plain(per_model)
        models.append(entry)
    config: dict[str, Any] = {"merge_method": template.method}
    if role == "parent_a":
        config["base_model"] = parent_a
    elif role == "ancestor":
        config["base_model"] = ancestor
    config["models"] = models
    if template.parameters:
        config["parameters"] = _plain(template.parameters)
    config["dtype"] = template.dtype
    if template.tokenizer is not None:
        config["tokenizer"] = template.tokenizer.model_dump(exclude_none=True)
    return config


def _plain(params: dict) -> dict:
    """Parameter values as plain YAML data (pydantic models dumped, None fields dropped)."""
    out = {}
    for key, value in params.items():
        out[key] = _plain_value(value)
    return out


def _plain_value(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def render_yaml(config: dict[str, Any], header: Sequence[str] = ()) -> str:
    """YAML text for ``config``, preceded by ``# `` comment lines (the child's lineage)."""
    lines = [f"# {h}".rstrip() for h in header]
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join(lines) + ("\n" if lines else "") + body


def validate_yaml(yaml_text: str):
    """Parse with mergekit's own schema (imports mergekit). Returns the MergeConfiguration."""
    from mergekit.config import MergeConfiguration

    return MergeConfiguration.model_validate(yaml.safe_load(yaml_text))


def merge_yaml(yaml_text: str, out_dir: str | Path, *, seed: Optional[int] = None,
               cuda: Optional[bool] = None, marker: Optional[dict] = None,
               tokenizer_from: Optional[str] = None, ancestor: Optional[str] = None,
               sketch: Optional[dict] = None) -> Path:
    """Run ``yaml_text`` through mergekit's pipeline into ``out_dir``, atomically.

    With ``ancestor`` (the family's shared ancestor, as the YAML names models), the merge runs
    through the kinship hook (:func:`mergekit_kinship.merge_kinship.merge_with_kinship`): the
    same weights, plus ``kinship.json`` (the parents' kinship and each parent's with the child)
    computed from the tensors the merge loads. A merge whose kinship fails is still kept,
    without ``kinship.json`` (the pool then measures it with the streaming engine). ``sketch``
    (``{"path", "params", "fingerprint", "meta"}``, from :mod:`~mergekit_kinship.pool_sketch`):
    the hook also sketches the child's delta and writes it to ``path``, before the rename, when
    its layout has that fingerprint.

    The merge is written to a temporary sibling folder; ``marker`` (JSON) is written into it,
    and only then is it renamed to ``out_dir``, so ``out_dir`` either does not exist or is a
    finished merge. An existing ``out_dir`` is an error (a child's path is never reused: mergekit
    caches opened models per process). ``cuda=None`` uses CUDA when available. ``seed`` is
    mergekit's ``random_seed`` (DARE / DELLA sample). Memory: mergekit's lazy loader, one tensor
    set at a time; scratch on CUDA when used.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; a merge never overwrites a model")
    # Host and pid: Ray workers on several machines share the run directory.
    tmp_root = out_dir.parent / f".partial-{socket.gethostname()}-{os.getpid()}"
    tmp = tmp_root / out_dir.name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp_root.mkdir(parents=True, exist_ok=True)

    try:
        _merge_into(yaml_text, tmp, out_dir, seed, cuda, marker, tokenizer_from, ancestor, sketch)
    except BaseException:
        # A failed merge (a full disk, a mergekit error, Ctrl-C) leaves no partial child; only
        # SIGKILL can leave .partial-* behind, and the next run removes those (clean_partials).
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    shutil.rmtree(tmp_root, ignore_errors=True)
    return out_dir


def _merge_into(yaml_text: str, tmp: Path, out_dir: Path, seed, cuda, marker, tokenizer_from,
                ancestor, sketch=None):
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergekit_kinship.rundir import checkpoint

    config = MergeConfiguration.model_validate(yaml.safe_load(yaml_text))
    # Parents are opened fresh for every child: a cached loader would serve stale tensors if a
    # folder was ever rewritten (e.g. a pruned child merged again).
    LoaderCache().loaders.clear()
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    options = MergeOptions(cuda=use_cuda, copy_tokenizer=True, random_seed=seed, quiet=True,
                           lazy_unpickle=True)
    if ancestor is None:
        run_merge(config, str(tmp), options=options, config_source=yaml_text)
    else:
        from mergekit_kinship.merge_kinship import KinshipNotComputed, merge_with_kinship

        params = None
        if sketch is not None:
            from mergekit_kinship.sketch import SketchParams

            params = SketchParams(**sketch["params"])
        try:
            result = merge_with_kinship(config, tmp, options, config_source=yaml_text,
                                        ancestor=ancestor, sketch=params)
        except KinshipNotComputed:
            result = None  # the weights are complete; relate() measures the kinship and reports the error
        if result is not None and result.sketch is not None and (
                result.sketch.layout.fingerprint == sketch["fingerprint"]):
            result.sketch.meta = dict(sketch.get("meta") or {})
            result.sketch.save(sketch["path"])
    LoaderCache().loaders.clear()

    # mergekit logs (does not raise) when it cannot copy a tokenizer; lm-eval needs one.
    if tokenizer_from and not any(tmp.glob("tokenizer*")):
        for f in Path(tokenizer_from).glob("*"):
            if f.name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges")):
                shutil.copy2(f, tmp / f.name)

    checkpoint("merge")  # tests kill the process here: weights written, not yet in place
    if marker is not None:
        _write_synced(tmp / MARKER, json.dumps(marker, indent=1, sort_keys=True))
    _fsync_tree(tmp)
    os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)


def read_marker(model_dir: str | Path) -> Optional[dict]:
    """The marker of a finished merge, or None when the folder is not one of ours."""
    try:
        return json.loads(Path(model_dir, MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
