"""The evolution loop: Algorithm 1 run for real, through mergekit and lm-eval, resumable.

:func:`evolve` reads like the paper's Algorithm 1: score the foundation models, merge every
pair of them, then generation after generation let the planner (pure, :mod:`.planner`) choose
the children, have the executor merge and score them (one self-contained unit of work each,
:mod:`.executors.job`), measure their kinship to the pool, select the top-k, and stop by the
recipe's rule. Every fact the loop learns is keyed by content and kept in the run directory
(:mod:`.rundir`), so running it again after a kill redoes no finished merge or evaluation and
reaches the same result.

Identities:
- a foundation model: sha256 of its weight and config files (a hub model: ``hub:org/name@<commit of its snapshot>``);
- a child: hash of its merge configuration with every model reference replaced by that model's
  identity (plus the seed for random methods);
- a score: hash of the model identity and :func:`~mergekit_kinship.evaluation.evaluation_fingerprint`
  (lm-eval version included); the fitness is recomputed from scores with the recipe's weights.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from mergekit_kinship.errors import UserError
from mergekit_kinship.planner import (
    Candidate, PoolState, mutual_kinship, plan_generation, stop_reason, top_k)
from mergekit_kinship.recipe import Recipe
from mergekit_kinship.rundir import KEEP_CHOICES, RunDir, content_hash, folder_identity, folder_stamp

# kinship_fn(paths: {id: path}, base_path, metrics, pairs: [(id, id)]) -> {(id, id): {metric: v}}
KinshipFn = Callable[[dict[str, str], str, list[str], list[tuple[str, str]]],
                     dict[tuple[str, str], dict[str, float]]]


@dataclass
class PoolModel:
    """One model of the pool, as the summary's ``models`` entry describes it."""

    id: str
    name: str
    kind: str  # "foundation" | "child"
    identity: str
    path: Optional[str]
    hub_id: Optional[str] = None
    generation: int = 0
    parents: list[str] = field(default_factory=list)
    exploration: bool = False
    method: Optional[str] = None
    yaml: Optional[str] = None
    parents_kinship: Optional[dict[str, float]] = None
    scores: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    fitness: Optional[float] = None
    gain: Optional[float] = None
    seed: Optional[int] = None
    external: bool = False  # merged outside this tool (``plan`` + an imported scores file)
    failed: Optional[str] = None  # its evaluation failed for good: skipped, never in the pool

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "hub_id": self.hub_id,
                "identity": self.identity, "generation": self.generation,
                "parents": list(self.parents), "exploration": self.exploration,
                "method": self.method, "yaml": self.yaml, "parents_kinship": self.parents_kinship,
                "scores": dict(self.scores), "stderr": dict(self.stderr), "fitness": self.fitness,
                "gain": self.gain, **({"failed": self.failed} if self.failed else {})}


class Run:
    """The pool of one run directory and the facts known about it (scores, kinship)."""

    def __init__(self, recipe: Recipe, run_dir: RunDir, kinship_fn: Optional[KinshipFn] = None,
                 progress: bool = True):
        from mergekit_kinship.evaluation import evaluation_fingerprint

        self.recipe = recipe
        self.rd = run_dir
        self.kinship_fn = kinship_fn or default_kinship
        self.progress = progress
        self.fingerprint = evaluation_fingerprint(recipe.evaluation)
        self.metrics = sorted({recipe.metric, "pcc"})
        self.pool: dict[str, PoolModel] = {}
        self.failed: dict[str, PoolModel] = {}  # children skipped (evaluation.on_error)
        self.generations: list[dict] = []
        self.merged_pairs: set[frozenset[str]] = set()
        self._identities = {e["path"]: e for e in run_dir.events("identity")}
        self.base_identity = self._model_identity(recipe.base)
        self._kinship: dict[str, dict[str, float]] = {
            e["key"]: e["values"] for e in run_dir.events("kinship")}

    # --- identities --------------------------------------------------------------------------
    def _model_identity(self, spec) -> str:
        if spec.hub is not None:
            # A branch (main) moves: the identity is the commit the snapshot holds (the Hugging
            # Face cache names each snapshot folder by its commit), else the snapshot's content.
            folder = local_copy(spec)
            commit = Path(folder).name
            if re.fullmatch(r"[0-9a-f]{40}", commit):
                return f"hub:{spec.hub}@{commit}"
            path = folder
        else:
            path = spec.path
        if not Path(path, "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        stamp = folder_stamp(path)
        cached = self._identities.get(path)
        if cached and cached["stamp"] == [list(s) for s in stamp]:
            return cached["identity"]
        identity = folder_identity(path)
        self.rd.append({"event": "identity", "path": path, "stamp": stamp, "identity": identity})
        self._identities[path] = {"stamp": [list(s) for s in stamp], "identity": identity}
        return identity

    def score_key(self, identity: str) -> str:
        return content_hash({"model": identity, "evaluation": self.fingerprint})

    # --- kinship -----------------------------------------------------------------------------
    def _kinship_key(self, a: str, b: str) -> str:
        ia, ib = sorted((self.pool[a].identity, self.pool[b].identity))
        return content_hash({"base": self.base_identity, "pair": [ia, ib]})

    def kinship(self, a: str, b: str, metric: Optional[str] = None) -> Optional[float]:
        values = self._kinship.get(self._kinship_key(a, b))
        return None if values is None else values.get(metric or self.recipe.metric)

    def measure_kinship(self, new_ids: list[str]) -> None:
        """Kinship of every new model with every model of the pool (cached by content)."""
        ids = list(self.pool)
        pairs = []
        for a in new_ids:
            for b in ids:
                if a != b and (b not in new_ids or ids.index(b) < ids.index(a)):
                    known = self._kinship.get(self._kinship_key(a, b), {})
                    if any(m not in known for m in self.metrics):  # e.g. the metric changed
                        pairs.append((a, b))
        if not pairs:
            return
        needed = sorted({m for p in pairs for m in p})
        paths = {m: self.model_path(m) for m in needed}
        values = self.kinship_fn(paths, local_copy(self.recipe.base), self.metrics,
                                 pairs)
        for a, b in pairs:
            key = self._kinship_key(a, b)
            self._kinship[key] = {**self._kinship.get(key, {}), **{
                k: None if v is None else float(v) for k, v in values[(a, b)].items()}}
            self.rd.append({"event": "kinship", "key": key, "pair": [a, b],
                            "values": self._kinship[key]})

    # --- models ------------------------------------------------------------------------------
    @staticmethod
    def model_path_of_spec(spec) -> str:
        return spec.path if spec.path is not None else spec.reference

    def model_path(self, model_id: str) -> str:
        """A loadable reference for a pool model; a pruned child is merged again first."""
        m = self.pool[model_id]
        if m.kind != "child" or m.external:
            return m.path
        from mergekit_kinship.executors.job import ensure_merged, merge_done

        folder = self.rd.model_dir(m.id)
        if not merge_done(folder, m.id, m.identity):
            for parent in m.parents:  # parents of a pruned child may be pruned too
                self.model_path(parent)
            ensure_merged(self.job(m))
        m.path = str(folder)
        return m.path

    def job(self, m: PoolModel):
        from mergekit_kinship.executors.job import ChildJob

        path = str(self.rd.model_dir(m.id)) if m.kind == "child" and not m.external else m.path
        return ChildJob(run_dir=str(self.rd.path), model_id=m.id, identity=m.identity,
                        model_path=path, score_key=self.score_key(m.identity),
                        evaluation=self.recipe.evaluation.model_dump(mode="json"),
                        yaml_text=m.yaml, seed=m.seed,
                        tokenizer_from=self.pool[m.parents[0]].path if m.parents else None)

    def add_foundation(self) -> list[str]:
        ids = []
        for spec in self.recipe.models:
            model_id = spec.display_name
            identity = self._model_identity(spec)
            twin = next((m.name for m in self.pool.values() if m.identity == identity), None)
            if twin is not None:
                # Same weights twice: their children would be one child (same id) under two names.
                raise UserError(f"models: {model_id} and {twin} are the same model "
                                f"(same weights); list each foundation model once")
            self.pool[model_id] = PoolModel(
                id=model_id, name=model_id, kind="foundation",
                identity=identity, path=local_copy(spec), hub_id=spec.hub)
            ids.append(model_id)
        return ids

    def make_child(self, candidate: Candidate, generation: int, index: int) -> PoolModel:
        """The child of ``candidate``: its identity and exact mergekit YAML. Does no work."""
        from mergekit_kinship.merging import child_config, render_yaml

        template = self.recipe.merge
        a, b = candidate.parents
        ancestor = self.model_path_of_spec(self.recipe.base)
        config = child_config(template, self._ref(a), self._ref(b), ancestor)
        # Identity: the same config with every reference replaced by that model's identity.
        by_identity = child_config(template, self.pool[a].identity, self.pool[b].identity,
                                   self.base_identity)
        seed = self.recipe.seed if template.spec.random else None
        child_id = "c-" + content_hash({"config": by_identity, "seed": seed}, 12)
        name = f"g{generation}-{index}"
        kin = {m: self.kinship(a, b, m) for m in self.metrics}
        kin_text = ", ".join(f"{m} {v:.4f}" for m, v in kin.items() if v is not None) or "unknown"
        header = [
            f"mergekit-kinship child {name} ({child_id}), generation {generation}"
            + (", exploration merge" if candidate.exploration else ""),
            f"parent A: {self._label(a)}",
            f"parent B: {self._label(b)}",
            f"kinship of parents: {kin_text} (ancestor {ancestor})",
            f"strategy {self.recipe.strategy}, top-k {self.recipe.top_k}, method {template.method}",
            "run: mergekit-yaml THIS_FILE OUT_DIR"
            + (f" --random-seed {seed}" if seed is not None else ""),
        ]
        return PoolModel(
            id=child_id, name=name, kind="child", identity=child_id, path=None,
            generation=generation, parents=[a, b], exploration=candidate.exploration,
            method=template.method, yaml=render_yaml(config, header),
            parents_kinship={m: v for m, v in kin.items() if v is not None} or None,
            seed=self.recipe.seed)

    def _ref(self, model_id: str) -> str:
        """How a child's YAML names a parent: a hub id stays a hub id (portable YAML)."""
        m = self.pool[model_id]
        if m.hub_id is not None:
            return self.model_path_of_spec(next(s for s in self.recipe.models
                                                if s.display_name == m.id))
        if m.kind == "child" and m.path is None:
            return str(self.rd.model_dir(m.id))
        return m.path

    def _label(self, model_id: str) -> str:
        m = self.pool[model_id]
        return (f"{m.name} ({m.id}, generation {m.generation})" if m.kind == "child"
                else f"{m.name} (foundation, {m.path})")

    def score(self, ids: list[str], executor) -> None:
        """Merge (children) and score every model of ``ids`` through the executor."""
        for i in ids:  # a child still to merge needs its parents' folders (pruned: merged again)
            m = self.pool[i]
            if m.kind == "child" and self.rd.read_score(self.score_key(m.identity)) is None:
                for parent in m.parents:
                    if self.pool[parent].kind == "child":
                        self.model_path(parent)
        results = executor.run([self.job(self.pool[i]) for i in ids], progress=self.progress)
        from mergekit_kinship.evaluation import fitness

        for result in results:
            m = self.pool[result.model_id]
            if result.error is not None:
                m.failed = result.error
                self.failed[m.id] = self.pool.pop(m.id)
                print(f"warning: {m.name} ({m.id}) skipped: its evaluation failed "
                      f"({result.error})", file=sys.stderr)
                continue
            m.scores, m.stderr = result.scores, result.stderr
            m.fitness = fitness(m.scores, self.recipe.evaluation)
            if m.kind == "child":
                folder = self.rd.model_dir(m.id)
                m.path = str(folder) if folder.exists() else None
                mean_parents = sum(self.pool[p].fitness for p in m.parents) / len(m.parents)
                m.gain = m.fitness - mean_parents

    def state(self, generation: int) -> PoolState:
        return PoolState(models=tuple(self.pool), fitness={i: m.fitness for i, m in self.pool.items()},
                         kinship=self.kinship, metric=self.recipe.metric, top_k=self.recipe.top_k,
                         generation=generation, merged=frozenset(self.merged_pairs),
                         seed=self.recipe.seed)

    def merges_done(self) -> int:
        return sum(1 for m in [*self.pool.values(), *self.failed.values()] if m.kind == "child")

    def merges_left(self) -> Optional[int]:
        cap = self.recipe.stopping.max_merges
        return None if cap is None else cap - self.merges_done()

    # --- summary -----------------------------------------------------------------------------
    def summary(self, stopped: Optional[str]) -> dict[str, Any]:
        ids = list(self.pool)
        best = top_k(ids, {i: m.fitness for i, m in self.pool.items()}, 1)[0] if ids else None
        base = self.recipe.base
        return {
            "format": 1,
            "recipe": self.recipe.to_dict(),
            "strategy": self.recipe.strategy, "top_k": self.recipe.top_k,
            "metric": self.recipe.metric,
            "base": {"name": base.display_name, "path": base.path, "hub_id": base.hub},
            "evaluation": self.recipe.evaluation.model_dump(mode="json"),
            "models": {i: m.summary() for i, m in self.pool.items()},
            "generations": self.generations,
            "pool_kinship": {"names": ids, self.recipe.metric: [
                [1.0 if a == b and self.recipe.metric != "ed" else
                 (0.0 if a == b else self.kinship(a, b)) for b in ids] for a in ids]},
            "saturation_threshold": self.recipe.stopping.saturation,
            "stopped": stopped,
            "merges": self.merges_done(),
            "best": best,
            "failed": {i: m.summary() for i, m in self.failed.items()},
        }

    def write_summary(self, stopped: Optional[str]) -> dict[str, Any]:
        summary = self.summary(stopped)
        self.rd.write_json(self.rd.summary_path, summary)
        return summary


_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]


def local_copy(spec) -> str:
    """A local folder for a recipe model: its path, or the hub snapshot (downloaded once into
    the Hugging Face cache; weights, configs and tokenizer files only). Evaluation and kinship
    read this folder; children's YAML keep the hub id so that they stay portable."""
    if spec.path is not None:
        return spec.path
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec.hub, revision=spec.revision, allow_patterns=_HUB_FILES)
        if not any(Path(folder).glob("*.safetensors")):  # an older repository: PyTorch .bin only
            folder = snapshot_download(spec.hub, revision=spec.revision,
                                       allow_patterns=_HUB_FILES + ["*.bin"])
    except Exception as err:  # offline, gated, misspelled: the user's to fix
        raise UserError(f"{spec.hub}: cannot get it from the hub "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return folder


def default_kinship(paths: dict[str, str], base: str, metrics: list[str],
                    pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """Kinship through :func:`mergekit_kinship.streaming_kinship.kinship_matrix` (reads each model once,
    float64 accumulators, memory bounded by a block of tensors)."""
    from mergekit_kinship.streaming_kinship import kinship_matrix, parse_metrics

    names = list(paths)
    index = {n: i for i, n in enumerate(names)}
    canonical = dict(zip(metrics, parse_metrics(metrics)))  # cs -> cosine, ed -> euclidean
    result = kinship_matrix([paths[n] for n in names], base, metrics=tuple(canonical.values()),
                            pairs=[(index[a], index[b]) for a, b in pairs], progress=False)
    return {(a, b): {m: result.values[c][index[a]][index[b]] for m, c in canonical.items()}
            for a, b in pairs}


# Recipe fields that decide which children exist: a run directory made with other values holds
# a different search. Evaluation (re-scored by content) and stopping (a longer or shorter run of
# the same search) may change between runs of one directory.
SEARCH_FIELDS = ("base", "models", "merge", "strategy", "top_k", "metric", "seed")


def check_run_dir_compatible(rd: RunDir, recipe: Recipe) -> None:
    """Refuse a run directory whose recipe differs from ``recipe`` in a :data:`SEARCH_FIELDS`
    field (one line naming the fields and a free directory to use instead)."""
    if not rd.recipe_path.is_file():
        return
    try:
        old = yaml.safe_load(rd.recipe_path.read_text())
    except yaml.YAMLError:
        old = None
    if not isinstance(old, dict):
        raise UserError(f"{rd.recipe_path}: unreadable; this run directory was not written by "
                        f"mergekit-kinship evolve (use another --run-dir)")
    new = recipe.to_dict()
    differ = [f for f in SEARCH_FIELDS if old.get(f) != new.get(f)]
    if not differ:
        return
    def show(v):
        text = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True)
        return str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
    changes = "; ".join(f"{f} {show(old.get(f))} -> {show(new.get(f))}" for f in differ)
    n = 2
    while rd.path.with_name(f"{rd.path.name}-{n}").exists():
        n += 1
    raise UserError(f"{rd.path}: made by an incompatible recipe ({changes}); evaluation and "
                    f"stopping may change, these may not: use a new --run-dir, e.g. "
                    f"{rd.path.with_name(f'{rd.path.name}-{n}')}")


def check_foundation_models(recipe: Recipe) -> None:
    """Every local foundation model shares the base's architecture, tensor names and shapes.

    Reads config.json and the safetensors headers only (a few KB per file, no weights); hub
    models are checked when fetched. Raises :class:`UserError` naming the model and the tensor.
    """
    from mergekit_kinship.streaming_kinship import added_vocab_rows
    from mergekit_kinship.models import check_compatible, open_model

    seen: dict[Any, str] = {}
    for spec in recipe.models:
        where = Path(spec.path).resolve() if spec.path is not None else spec.reference
        if where in seen:  # caught before any hashing; a copy elsewhere by its identity later
            raise UserError(f"models: {spec.display_name} and {seen[where]} are the same model "
                            f"({spec.reference}); list each foundation model once")
        seen[where] = spec.display_name
    if recipe.base.path is None:
        return
    with open_model(recipe.base.path) as base:
        for spec in recipe.models:
            if spec.path is None:
                continue
            if Path(spec.path).resolve() == Path(recipe.base.path).resolve():
                # Found only after scoring otherwise: its delta is zero, kinship is undefined.
                raise UserError(f"models: {spec.display_name} is the base itself "
                                f"({recipe.base.path}): a foundation model must be a fine-tune "
                                f"of the base")
            with open_model(spec.path) as model:
                check_compatible([model], base)
                for name, info in base.tensors.items():
                    other = model.tensors.get(name)
                    if other is None:
                        raise UserError(f"{spec.path}: no tensor '{name}' (the base "
                                        f"{recipe.base.path} has it): not a fine-tune of the base")
                    if tuple(other.shape) != tuple(info.shape):
                        if added_vocab_rows(name, other, info, model):
                            # Added tokens: kinship compares the shared rows; mergekit needs
                            # to be told which vocabulary the children get.
                            if recipe.merge.tokenizer is None:
                                raise UserError(
                                    f"{spec.path}: {other.shape[0]} vocabulary rows in '{name}', "
                                    f"the base has {info.shape[0]} (added tokens): set "
                                    f"merge.tokenizer (e.g. {{source: union}}) so that mergekit "
                                    f"can merge parents with different vocabularies")
                            continue
                        raise UserError(f"{spec.path}: tensor '{name}' has shape "
                                        f"{list(other.shape)}, the base's is {list(info.shape)}: "
                                        f"not a fine-tune of the base")


def evolve(recipe: Recipe, run_dir: str | Path, *, keep: str = "all", executor: Any = "local",
           kinship_fn: Optional[KinshipFn] = None, progress: bool = True,
           on_generation: Optional[Callable[[dict, dict], None]] = None) -> dict[str, Any]:
    """Run Algorithm 1 to its stopping rule in ``run_dir``; returns the run summary.

    Safe to interrupt at any moment and to call again on the same directory: finished merges
    and evaluations are found by content and never redone. ``on_generation(summary, record)``
    is called after every generation (the CLI prints its table there). ``keep`` chooses which
    children's weights stay once the run stops: ``best``, ``survivors`` (the final top-k) or
    ``all``; a pruned child is merged again if a later run needs it as a parent. ``executor`` is
    a registered name or an executor object (e.g. a configured Ray executor; its caller closes it).
    """
    from mergekit_kinship.executors import get_executor

    if keep not in KEEP_CHOICES:
        raise UserError(f"--keep: one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    rd = RunDir(run_dir)
    with rd:
        check_run_dir_compatible(rd, recipe)
        check_foundation_models(recipe)
        rd.clean_partials()
        rd.write_text(rd.recipe_path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        run = Run(recipe, rd, kinship_fn, progress)
        work = get_executor(executor) if isinstance(executor, str) else executor
        rd.append({"event": "start", "strategy": recipe.strategy})

        # Generation 0: the foundation models enter the pool, are scored and related.
        foundation = run.add_foundation()
        run.score(foundation, work)
        run.measure_kinship(foundation)
        survivors = top_k(list(run.pool), run.state(0).fitness, recipe.top_k)

        generation, stopped = 1, None
        while stopped is None:
            # Plan: G1 = every foundation pair; then greedy pairs of the top-k + exploration.
            candidates = plan_generation(recipe.strategy, run.state(generation), run.merges_left())
            children = [run.make_child(c, generation, i + 1) for i, c in enumerate(candidates)]
            for child in children:
                run.pool[child.id] = child
                run.merged_pairs.add(frozenset(child.parents))
                rd.write_text(rd.yaml_path(child.id), child.yaml)
            # Merge and score the generation, then relate the children to the whole pool.
            run.score([c.id for c in children], work)
            failed = [c.id for c in children if c.id in run.failed]
            children = [c for c in children if c.id not in run.failed]
            run.measure_kinship([c.id for c in children])
            # Select.
            new_survivors = top_k(list(run.pool), run.state(generation).fitness, recipe.top_k)
            mutual_pcc = mutual_kinship(new_survivors, lambda a, b: run.kinship(a, b, "pcc"))
            planned_next = len(plan_generation(recipe.strategy, run.state(generation + 1),
                                               run.merges_left()))
            stopped = stop_reason(
                generation=generation, previous_top=survivors, new_top=new_survivors,
                merges_done=run.merges_done(), planned_next=planned_next,
                max_generations=recipe.stopping.max_generations,
                max_merges=recipe.stopping.max_merges, saturation=recipe.stopping.saturation,
                top_k_mutual_pcc=mutual_pcc)
            best = new_survivors[0]
            fitnesses = [c.fitness for c in children]
            record = {"index": generation, "children": [c.id for c in children],
                      "top_k": new_survivors, "best": best,
                      "best_fitness": run.pool[best].fitness,
                      "mean_fitness": sum(fitnesses) / len(fitnesses) if fitnesses else None,
                      "top_k_mutual_pcc": mutual_pcc}
            if failed:
                record["failed"] = failed
            run.generations.append(record)
            rd.append({"event": "generation", **record, "stopped": stopped})
            summary = run.write_summary(stopped)
            if on_generation is not None:
                on_generation(summary, record)
            survivors = new_survivors
            generation += 1

        best = summary["best"]
        keep_ids = {"all": list(run.pool), "survivors": survivors, "best": [best]}[keep]
        rd.prune(keep_ids)
        for i in keep_ids:  # kept, but pruned by an earlier --keep: merged again
            if run.pool[i].kind == "child":
                run.model_path(i)
        for m in run.pool.values():
            if m.kind == "child" and not rd.model_dir(m.id).exists():
                m.path = None
        rd.append({"event": "stop", "stopped": stopped, "best": best})
        summary = run.write_summary(stopped)
        # Every child gets its Hub card: in its folder when kept, else under RUN_DIR/cards/.
        from mergekit_kinship.card import write_cards
        from mergekit_kinship.summary import parse_summary

        write_cards(rd.path, parse_summary(summary))
        return summary


# --- presentation (pure) ---------------------------------------------------------------------

def _fmt(value: Optional[float], digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def generation_table(summary: dict, index: int) -> str:
    """A readable table of generation ``index``: child, parents, parents' kinship, scores,
    fitness, gain over the parents' mean, and the best model so far."""
    models = summary["models"]
    record = next(g for g in summary["generations"] if g["index"] == index)
    tasks = list(summary["evaluation"]["tasks"])
    metric = summary["metric"]
    header = ["child", "parents", f"kinship ({metric})", *tasks, "fitness", "gain"]
    rows = []
    for cid in record["children"]:
        m = models[cid]
        parents = " x ".join(models[p]["name"] for p in m["parents"])
        if m["exploration"]:
            parents += " (explore)"
        kin = (m["parents_kinship"] or {}).get(metric)
        rows.append([m["name"], parents, _fmt(kin), *(_fmt(m["scores"].get(t)) for t in tasks),
                     _fmt(m["fitness"]), _fmt(m["gain"], signed=True)])
    for cid in record.get("failed", []):
        m = summary["failed"][cid]
        parents = " x ".join(models[p]["name"] for p in m["parents"])
        rows.append([m["name"], parents, _fmt((m["parents_kinship"] or {}).get(metric)),
                     *("-" for _ in tasks), "failed", "-"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"generation {index}: {len(rows)} children"
             + (f" ({len(record['failed'])} failed, skipped)" if record.get("failed") else "")]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    best = models[record["best"]]
    top = ", ".join(models[i]["name"] for i in record["top_k"])
    lines.append(f"best so far: {best['name']} fitness {_fmt(best['fitness'])}; top-k: {top}; "
                 f"mutual pcc {_fmt(record['top_k_mutual_pcc'])}")
    return "\n".join(lines)


def print_table(summary: dict, record: dict, stream=sys.stdout) -> None:
    print(generation_table(summary, record["index"]), file=stream, flush=True)


# --- plan: the next generation from what is known, executing nothing --------------------------

SCORES_FILE_HELP = """\
# Scores file for `mergekit-kinship plan --scores FILE` (YAML or JSON).
# One entry per model you evaluated elsewhere: a foundation model by its recipe name, or a
# planned child by its name (g1-2) or id (c-...). Scores are per task of the recipe's
# `evaluation.tasks`, as lm-eval reports them (0..1). Children also give the folder that
# `mergekit-yaml` wrote, so that kinship can be measured from their weights.
format: 1
models:
  MODEL_NAME:
    scores: {TASK: 0.0}
  g1-1:
    path: /where/mergekit-yaml/wrote/g1-1
    scores: {TASK: 0.0}
"""


def _planned_children(rd: RunDir) -> list[dict]:
    """Children written by earlier ``plan`` calls, generation by generation."""
    import json

    out = []
    for f in sorted(rd.plan_dir.glob("gen-*/plan.json"), key=lambda p: int(p.parent.name[4:])):
        out.extend(json.loads(f.read_text())["children"])
    return out


def _import_scores(run: Run, scores_file: Path) -> None:
    """Record scores (and folders) of models evaluated elsewhere, keyed like our own scores."""
    from mergekit_kinship.evaluation import fitness

    try:
        data = yaml.safe_load(Path(scores_file).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{scores_file}: cannot read scores file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError(f"{scores_file}: expected a mapping with 'models:' (see plan --help)")
    by_name = {m.name: m for m in run.pool.values()} | dict(run.pool)
    tasks = run.recipe.evaluation.tasks
    for name, entry in data["models"].items():
        m = by_name.get(str(name))
        if m is None:
            raise UserError(f"{scores_file}: models.{name}: not a foundation model or planned child")
        if not isinstance(entry, dict) or not isinstance(entry.get("scores"), dict):
            raise UserError(f"{scores_file}: models.{name}.scores: a mapping task -> score")
        missing = [t for t in tasks if t not in entry["scores"]]
        if missing:
            raise UserError(f"{scores_file}: models.{name}.scores: no score for {', '.join(missing)}")
        scores = {}
        for t in tasks:
            value = entry["scores"][t]
            try:  # bool is an int to Python; NaN would break every fitness comparison
                number = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise UserError(f"{scores_file}: models.{name}.scores.{t}: a finite number, "
                                f"not {value!r}")
            scores[t] = number
        if m.kind == "child" and not m.external and m.path is None:
            path = entry.get("path")
            if not path or not Path(path, "config.json").is_file():
                raise UserError(f"{scores_file}: models.{name}.path: the folder mergekit-yaml "
                                f"wrote for this child (with config.json)")
            m.path, m.external = str(Path(path).resolve()), True
            run.rd.append({"event": "external", "child": m.id, "path": m.path})
        key = run.score_key(m.identity)
        record = {"score_key": key, "model": m.id, "identity": m.identity, "imported": str(scores_file),
                  "result": {"scores": scores, "fitness": fitness(scores, run.recipe.evaluation),
                             "lm_eval_version": run.fingerprint.get("lm_eval_version"),
                             "seconds": 0.0}}
        run.rd.write_json(run.rd.score_path(key), record)
        run.rd.append({"event": "scores-imported", "model": m.id, "score_key": key})


def plan_next(recipe: Recipe, run_dir: str | Path, *, scores_file: Optional[Path] = None,
              kinship_fn: Optional[KinshipFn] = None, progress: bool = True) -> dict[str, Any]:
    """Work out the next generation from the pool's known scores and kinship; merge nothing.

    The pool is the foundation models, the children ``evolve`` finished in this run directory,
    and the children of earlier plans whose folders and scores were imported (``scores_file``,
    format in :data:`SCORES_FILE_HELP`). Writes ``RUN/plan/gen-N/<child>.yaml`` (each runs
    unchanged with ``mergekit-yaml``) and ``RUN/plan/gen-N/plan.json``; returns the plan.
    Generation 1 needs no scores (parents then stay in recipe order: without scores, no model
    is known to be fitter); later generations need a score for every model of the pool.
    """
    import json

    rd = RunDir(run_dir)
    with rd:
        check_run_dir_compatible(rd, recipe)
        check_foundation_models(recipe)
        rd.write_text(rd.recipe_path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        run = Run(recipe, rd, kinship_fn, progress)
        run.add_foundation()
        summary_models, failed_pairs = {}, []
        if rd.summary_path.exists():
            summary = json.loads(rd.summary_path.read_text())
            summary_models = summary.get("models", {})
            # Children skipped after a failed evaluation were merged: never planned again.
            failed_pairs = [frozenset(f["parents"]) for f in summary.get("failed", {}).values()]
        evolved = set()
        for cid, entry in summary_models.items():  # children evolve finished here
            if entry["kind"] == "child":
                # A child pruned by --keep is still in the pool: its pair was merged, its score
                # and kinship are known, and it may be a parent (merged again from its YAML).
                evolved.add(cid)
                folder = rd.model_dir(cid)
                run.pool[cid] = PoolModel(
                    id=cid, name=entry["name"], kind="child", identity=entry["identity"],
                    path=str(folder) if folder.exists() else None, generation=entry["generation"],
                    parents=entry["parents"], exploration=entry["exploration"],
                    method=entry["method"], yaml=entry["yaml"],
                    parents_kinship=entry["parents_kinship"])
        external = {e["child"]: e["path"] for e in rd.events("external")}
        for entry in _planned_children(rd):  # children of earlier plans
            if entry["id"] not in run.pool:
                run.pool[entry["id"]] = PoolModel(
                    id=entry["id"], name=entry["name"], kind="child", identity=entry["id"],
                    path=external.get(entry["id"]), generation=entry["generation"],
                    parents=entry["parents"], exploration=entry["exploration"],
                    method=entry["method"], yaml=entry["yaml"],
                    parents_kinship=entry["parents_kinship"], external=entry["id"] in external)
        if scores_file is not None:
            _import_scores(run, scores_file)
        # Only children with a folder and a score are in the pool; the rest are still pending.
        pending, unscored_evolved = [], []
        for m in list(run.pool.values()):
            record = run.rd.read_score(run.score_key(m.identity))
            if record is not None:
                m.scores = record["result"]["scores"]
            if m.id in evolved and record is None:  # evolve scored it under other settings
                unscored_evolved.append(m.name)
            elif m.kind == "child" and (record is None or (m.path is None and m.id not in evolved)):
                pending.append(m.name)
                del run.pool[m.id]
        unscored = [m.name for m in run.pool.values() if m.kind == "foundation" and not m.scores]
        generation = 1 + max((m.generation for m in run.pool.values()), default=0)
        if unscored_evolved:
            raise UserError(f"no scores under this recipe's evaluation settings for "
                            f"{', '.join(unscored_evolved)} (evolve scored them under others): "
                            f"run evolve on this run directory to re-score them first")
        if pending:
            raise UserError(f"children planned but not merged and scored yet: {', '.join(pending)}; "
                            f"give their folders and scores with --scores FILE")
        from mergekit_kinship.evaluation import fitness

        for m in run.pool.values():
            m.fitness = fitness(m.scores, recipe.evaluation) if m.scores else 0.0
        if generation > 1 and unscored:
            raise UserError(f"no scores for {', '.join(unscored)}; evaluate them and give the "
                            f"scores with --scores FILE")
        for m in run.pool.values():
            if m.kind == "child":
                run.merged_pairs.add(frozenset(m.parents))
                m.gain = m.fitness - sum(run.pool[p].fitness for p in m.parents) / 2
        run.merged_pairs.update(failed_pairs)
        run.measure_kinship(list(run.pool))
        candidates = plan_generation(recipe.strategy, run.state(generation), run.merges_left())
        for parent in {p for c in candidates for p in c.parents}:
            if run.pool[parent].kind == "child" and run.pool[parent].path is None:
                # Pruned by --keep: the YAML we write names its folder, so it must exist.
                run.pool[parent].path = run.model_path(parent)
        children = [run.make_child(c, generation, i + 1) for i, c in enumerate(candidates)]
        out_dir = rd.plan_dir / f"gen-{generation}"
        entries = []
        for child in children:
            rd.write_text(out_dir / f"{child.name}.yaml", child.yaml)
            entries.append({"id": child.id, "name": child.name, "generation": generation,
                            "parents": child.parents,
                            "parent_names": [run.pool[p].name for p in child.parents],
                            "exploration": child.exploration, "method": child.method,
                            "yaml_file": str(out_dir / f"{child.name}.yaml"), "yaml": child.yaml,
                            "parents_kinship": child.parents_kinship})
        survivors = top_k(list(run.pool), run.state(generation).fitness, recipe.top_k)
        plan = {"format": 1, "generation": generation, "strategy": recipe.strategy,
                "top_k": survivors if not unscored else None,
                "scored": not unscored, "merges_so_far": run.merges_done(),
                "children": entries, "scores_file_format": SCORES_FILE_HELP}
        rd.write_json(out_dir / "plan.json", plan)
        rd.append({"event": "planned", "generation": generation,
                   "children": [c.id for c in children]})
        return plan


def dry_run(recipe_path: str | Path, strategy: Optional[str] = None) -> dict[str, Any]:
    """Validate a recipe without reading any weights or touching the network.

    Checks the schema (unknown keys, merge parameters per method), the evaluation settings
    against lm-eval's task index (local and built-in task YAML only), and that a child YAML built
    from the template parses with mergekit's own schema. Local model folders that do not exist
    yet are reported, not errors (a family may be built later).
    """
    import itertools

    from mergekit_kinship.evaluation import validate_evaluation
    from mergekit_kinship.merging import child_config, render_yaml, validate_yaml
    from mergekit_kinship.recipe import load_recipe, missing_local_models

    recipe = load_recipe(recipe_path)
    if strategy is not None:
        recipe = recipe.model_copy(update={"strategy": strategy})
    validate_evaluation(recipe.evaluation)
    refs = [Run.model_path_of_spec(m) for m in recipe.models]
    ancestor = Run.model_path_of_spec(recipe.base)
    pairs = list(itertools.combinations(range(len(refs)), 2))
    example = render_yaml(child_config(recipe.merge, refs[0], refs[1], ancestor))
    validate_yaml(example)
    missing = missing_local_models(recipe)
    role = {"parent_a": "parent A", "ancestor": "the shared ancestor", "none": "none"}
    ev = recipe.evaluation
    lines = [
        f"recipe OK: {recipe_path}",
        f"  base (ancestor): {recipe.base.reference}",
        *[f"  foundation: {m.display_name} = {m.reference}" for m in recipe.models],
        f"  strategy {recipe.strategy}, top-k {recipe.top_k}, kinship metric {recipe.metric}, "
        f"seed {recipe.seed}",
        f"  merge: {recipe.merge.method} ({recipe.merge.dtype}), base_model = "
        f"{role[recipe.merge.base_role]}",
        f"  evaluation: {', '.join(ev.tasks)} (backend {ev.backend}, num_fewshot "
        f"{ev.num_fewshot}, limit {ev.limit})",
        f"  stopping: top-k unchanged; max {recipe.stopping.max_generations} generations"
        + (f"; max {recipe.stopping.max_merges} merges" if recipe.stopping.max_merges else "")
        + (f"; saturation pcc > {recipe.stopping.saturation}" if recipe.stopping.saturation
           is not None else ""),
        f"  generation 1 merges {len(pairs)} pairs: "
        + ", ".join(f"{recipe.models[i].display_name} x {recipe.models[j].display_name}"
                    for i, j in pairs),
        *[f"  not built yet: {p}" for p in missing],
        "  example child YAML (parses with mergekit):",
        *["    " + line for line in example.splitlines()],
    ]
    return {"recipe": recipe.to_dict(), "missing_models": missing, "example_yaml": example,
            "generation_1_pairs": [[recipe.models[i].display_name, recipe.models[j].display_name]
                                   for i, j in pairs],
            "text": "\n".join(lines)}
