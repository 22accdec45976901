"""Build (or reuse) a family of the zoo: one base, one child per skill, a grandchild.

Which family (its skills, stages, tasks) is data in :mod:`~mergekit_kinship.zoo.families`; this
module trains it and keeps it. Layout of a family folder::

    <root>/manifest.json        builder config, its hash, every model's parent and skills
    <root>/recipe.yaml          the built-in recipe with this family's paths (plan / evolve it)
    <root>/base/                save_pretrained folders (config.json, model.safetensors,
    <root>/reverse/ ...          tokenizer files): transformers, mergekit and lm-eval load them

A finished family is identified by the hash of the builder's config (architecture, training
stages, seed, builder version): :func:`build_family` reuses a folder whose manifest carries the
same hash and never trusts a folder merely for existing. Building happens in a temporary sibling
folder that is renamed into place when complete, under a file lock, so concurrent callers (test
workers, two demos) build once and never see half a family.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergekit_kinship.errors import UserError
from mergekit_kinship.zoo.builtin_recipe import write_recipe
from mergekit_kinship.zoo.families import BUILTIN, FamilyDef, Stage, default_stages, family_def

# Bump when the build changes in a way the code fingerprint below cannot see (e.g. a dependency).
BUILDER_VERSION = 1
MANIFEST = "manifest.json"
TASKS_DIR = family_def(BUILTIN).tasks_dir
__all__ = ["Family", "FamilyConfig", "Stage", "build_family", "default_cache_dir", "default_stages"]


@dataclass(frozen=True)
class FamilyConfig:
    """Everything that decides the family's weights; its hash names a build."""

    seed: int = 0
    batch: int = 32
    shape: dict = field(default_factory=lambda: _shape().to_dict())
    stages: tuple[Stage, ...] | None = None  # None: the family's own (FamilyDef.stages)
    family: str = BUILTIN  # which family of the zoo: its skills, tasks and recipe

    def __post_init__(self):
        if self.stages is None:
            object.__setattr__(self, "stages", self.definition.stages)
        known = self.definition.skills
        for stage in self.stages:
            if not set(stage.skills) <= set(known):
                raise UserError(f"stage '{stage.name}': skills {', '.join(stage.skills)} are not "
                                f"all skills of the {self.family} family ({', '.join(known)})")

    @property
    def definition(self) -> FamilyDef:
        return family_def(self.family)

    @property
    def rehearsal(self) -> tuple[str, ...]:
        """What a stage's ``replay`` draws from: the base's training mix (a fine-tune rehearses
        what its base learnt, not a skill of the family the base never saw)."""
        roots = [s for s in self.stages if s.parent is None]
        return tuple(dict.fromkeys(skill for stage in roots for skill in stage.skills))

    def to_dict(self) -> dict:
        import torch  # results are bit-identical only within one torch release

        return {
            "builder_version": BUILDER_VERSION,
            "code": _code_fingerprint(),
            "torch": torch.__version__.split("+")[0],
            "family": self.family,
            "skills": list(self.definition.skills),
            "init_offset": self.definition.init_offset,
            "seed": self.seed,
            "batch": self.batch,
            "shape": self.shape,
            "stages": [asdict(s) for s in self.stages],
        }

    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _code_fingerprint() -> str:
    """Hash of the modules that decide the weights, so an edited skill never reuses a stale build."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("items.py", "letter_skills.py", "digit_skills.py", "skills.py", "tokenizer.py",
                 "train.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _shape():
    from mergekit_kinship.zoo.train import Shape

    return Shape()


def default_cache_dir() -> Path:
    """``$MERGEKIT_KINSHIP_CACHE``, else ``~/.cache/mergekit-kinship``."""
    env = os.environ.get("MERGEKIT_KINSHIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergekit-kinship"


@dataclass
class Family:
    """A built family on disk. All paths are absolute; ``models`` excludes the base."""

    root: Path
    base: Path
    children: dict[str, Path]
    grandchildren: dict[str, Path]
    parent: dict[str, str]
    skill_of: dict[str, str]
    task_names: list[str]
    tasks_dir: Path = TASKS_DIR
    config_hash: str = ""
    name: str = BUILTIN  # which family of the zoo (families.FAMILIES)

    @property
    def models(self) -> dict[str, Path]:
        return {**self.children, **self.grandchildren}

    @classmethod
    def load(cls, root: Path) -> "Family":
        """Open a finished family folder (raises :class:`UserError` if it is not one)."""
        root = Path(root).resolve()
        try:
            manifest = json.loads((root / MANIFEST).read_text())
            manifest["models"], manifest["skills"], manifest["config_hash"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{root}: not a built family (no readable {MANIFEST})") from err
        definition = family_def(manifest.get("family", BUILTIN))
        parent = {m["name"]: m["parent"] for m in manifest["models"] if m["parent"]}
        children = {n: root / n for n, p in parent.items() if p == "base"}
        grandchildren = {n: root / n for n, p in parent.items() if p != "base"}
        skill_of = {m["name"]: definition.task_name(m["skills"][0]) for m in manifest["models"]
                    if m["parent"] == "base"}
        return cls(
            root=root,
            base=root / "base",
            children=children,
            grandchildren=grandchildren,
            parent=parent,
            skill_of=skill_of,
            task_names=[definition.task_name(s) for s in manifest["skills"]],
            tasks_dir=definition.tasks_dir,
            config_hash=manifest["config_hash"],
            name=definition.name,
        )


def _matches(root: Path, config_hash: str) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("config_hash") == config_hash and manifest.get("complete") is True


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_family(out_dir: str | os.PathLike | None = None, *, seed: int = 0,
                 family: str = BUILTIN, progress: bool = True,
                 config: FamilyConfig | None = None) -> Family:
    """Build a family of the zoo into ``out_dir`` (default: a folder of ``default_cache_dir()``
    named by the config's hash, ``family-<hash>`` for the built-in family).

    ``family`` names the family (``"builtin"``, ``"digits"``: :data:`families.FAMILIES`).

    Reuses ``out_dir`` if it holds a finished family of the same config hash. A folder holding a
    family of another config is replaced; any other non-empty folder is refused (UserError).
    Either way the built-in recipe is written into the family as ``recipe.yaml``
    (:mod:`mergekit_kinship.zoo.builtin_recipe`; not for a family lacking a member it names).
    ``config`` overrides the recipe (tests build a reduced family with it); ``seed`` and
    ``family`` are ignored when ``config`` is given. Progress (one tqdm bar over all training
    steps) goes to stderr. Takes under a minute on 2 CPU cores and ~10 MB of disk per family.
    """
    config = config or FamilyConfig(seed=seed, family=family)
    config_hash = config.hash()
    folder = config.definition.cache_folder(config_hash)
    root = Path(out_dir) if out_dir is not None else default_cache_dir() / folder
    root = root.expanduser().resolve()
    if _matches(root, config_hash):
        return _opened(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{root}: cannot create the family's folder ({err.strerror or err}); "
                        f"choose another (--family-dir or $MERGEKIT_KINSHIP_CACHE)") from None
    with _lock(root.parent / f".{root.name}.lock"):
        if _matches(root, config_hash):  # another process finished it while we waited
            return _opened(root)
        if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
            raise UserError(f"{root}: folder is not empty and holds no family; choose another")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            _build_into(tmp, config, config_hash, progress)
            if root.exists():
                shutil.rmtree(root)  # an older family (other config or unfinished)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _opened(root)


def _opened(root: Path) -> Family:
    """The finished family at ``root``, with the built-in recipe written (or refreshed) into it
    as recipe.yaml, ready for ``plan`` / ``evolve``."""
    family = Family.load(root)
    write_recipe(family)
    return family


def _build_into(folder: Path, config: FamilyConfig, config_hash: str, progress: bool) -> None:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from mergekit_kinship.zoo.tokenizer import build_tokenizer
    from mergekit_kinship.zoo.train import Shape

    bar = tqdm(total=sum(s.steps for s in config.stages), desc="building family", unit="step",
               disable=not progress, file=sys.stderr)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar for the whole build, not one per save
    try:
        records = _train_stages(folder, config, build_tokenizer(), Shape(**config.shape), bar)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    manifest = {
        "complete": True,
        "config_hash": config_hash,
        "config": config.to_dict(),
        "family": config.family,
        "skills": list(config.definition.skills),
        "models": records,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _train_stages(folder: Path, config: FamilyConfig, tokenizer, shape, bar) -> list[dict]:
    import copy

    from mergekit_kinship.zoo.train import new_model, single_threaded, train

    trained = {}
    records = []
    family = config.definition
    with single_threaded(), bar:
        for i, stage in enumerate(config.stages):
            bar.set_postfix_str(stage.name)
            if stage.parent is None:
                model = new_model(shape, len(tokenizer), tokenizer.pad_token_id,
                                  tokenizer.eos_token_id, seed=config.seed + family.init_offset)
            else:
                model = copy.deepcopy(trained[stage.parent])
            losses = train(model, tokenizer, list(stage.skills), steps=stage.steps, lr=stage.lr,
                           batch=config.batch, seed=config.seed * 1000 + i,
                           replay=stage.replay, rehearsal=config.rehearsal, progress=bar)
            trained[stage.name] = model
            model.save_pretrained(folder / stage.name)
            tokenizer.save_pretrained(folder / stage.name)
            records.append({**asdict(stage), "final_loss": round(sum(losses[-10:]) / 10, 4)})
    return records
