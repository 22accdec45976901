"""The pool of one run: its models, their scores and kinship, and the summary of what happened.

:class:`Pool` is the state Algorithm 1 works on (the paper's M): foundation models first, then
children generation by generation. It does the bookkeeping the loop in
:mod:`mergekit_kinship.evolution` needs, each step a method: plan a generation's children
(:mod:`mergekit_kinship.children`), merge and score them through an executor, relate new models
to the pool by kinship, select the top-k, decide whether to stop, and summarise. Facts are found
by content in the run directory (:class:`~mergekit_kinship.run_cache.RunCache`), so a run started
again, or ``plan`` on the same directory, rebuilds the same pool without redoing any work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from mergekit_kinship.errors import UserError
from mergekit_kinship.metrics import canonical, self_kinship
from mergekit_kinship.planner import (
    Candidate, PoolState, mutual_kinship, plan_generation, stop_reason, top_k)
from mergekit_kinship.recipe import Recipe
from mergekit_kinship.run_cache import RunCache, model_folder
from mergekit_kinship.rundir import RunDir

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
    # Per-item results (task -> index -> value; kept in memory, RUN/items/ on disk), the items
    # scored and each task's item count, and the standard errors (mergekit_kinship.uncertainty).
    items: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)
    items_scored: dict[str, int] = field(default_factory=dict)
    items_total: dict[str, int] = field(default_factory=dict)
    fitness_stderr: Optional[float] = None
    gain_stderr: Optional[float] = None
    # Screened out by staged evaluation (mergekit_kinship.staging.Decision; a bare one for a
    # partial score imported from a file): never in the top-k.
    screened: Optional[Any] = None

    @property
    def partial(self) -> bool:
        """Scored on fewer items than a task has."""
        return any(self.items_scored.get(t, n) < n for t, n in self.items_total.items())

    def entry(self):
        from mergekit_kinship.summary import ModelEntry, Screening

        d = self.screened
        return ModelEntry(
            name=self.name, path=self.path, kind=self.kind, hub_id=self.hub_id,
            identity=self.identity, generation=self.generation, parents=list(self.parents),
            exploration=self.exploration, method=self.method, yaml=self.yaml,
            parents_kinship=self.parents_kinship, scores=dict(self.scores),
            stderr=dict(self.stderr), fitness=self.fitness, gain=self.gain, failed=self.failed,
            fitness_stderr=self.fitness_stderr, gain_stderr=self.gain_stderr,
            items=dict(self.items_scored), items_total=dict(self.items_total),
            screened_out=None if d is None else Screening(
                stage=getattr(d, "stage", None), bound=getattr(d, "bound", None),
                threshold=getattr(d, "threshold", None), against=getattr(d, "reference", None)))


class Pool:
    """The models of one run directory and what is known about them."""

    def __init__(self, recipe: Recipe, rd: RunDir, *, evaluator: Optional[str] = None,
                 kinship_fn: Optional[KinshipFn] = None, progress: bool = True):
        from mergekit_kinship.evaluation.settings import evaluation_fingerprint, items_fingerprint

        self.recipe = recipe
        self.rd = rd
        self.evaluator = evaluator
        self.kinship_fn = kinship_fn or default_kinship
        self.progress = progress
        from mergekit_kinship.evaluation.task_plan import resolved_fewshot

        fingerprint = evaluation_fingerprint(recipe.evaluation)
        per_item = items_fingerprint(recipe.evaluation)
        # The n-shot of each task as the run resolves it (the summary, cards and report show it).
        self.n_shot = resolved_fewshot(recipe.evaluation, lm_eval_tasks=evaluator is None)
        if evaluator is not None:  # another scorer's numbers are other numbers
            fingerprint = {**fingerprint, "evaluator": evaluator}
            per_item = {**per_item, "evaluator": evaluator}
        self.cache = RunCache(rd, fingerprint, per_item)
        # Each task's item count, once known (from per-item results, or a scores file).
        self.item_totals: dict[str, int] = {}
        for event in rd.events("task-items"):
            self.item_totals.update(event["items"])
        self.metric = canonical(recipe.metric)
        # Measured for every pair: the recipe's metric, PCC (saturation) and sign conflict, so
        # that each child records both beside each other and the report can set both against gain.
        self.metrics = sorted({self.metric, "pcc", "sign_conflict"})
        self.models: dict[str, PoolModel] = {}
        self.failed: dict[str, PoolModel] = {}  # children skipped (evaluation.on_error)
        self.references: dict[str, PoolModel] = {}  # the base, one-shot baselines: not in the pool
        self.generations: list[dict[str, Any]] = []
        self.merged_pairs: set[frozenset[str]] = set()
        self.base_identity = self.cache.identity(recipe.base)
        self.base_folder = model_folder(recipe.base)

    # --- the foundation models ---------------------------------------------------------------
    def add_foundation(self) -> list[str]:
        """The recipe's foundation models enter the pool (generation 0); returns their ids."""
        for spec in self.recipe.models:
            model_id = spec.display_name
            identity = self.cache.identity(spec)
            twin = next((m.name for m in self.models.values() if m.identity == identity), None)
            if twin is not None:
                # Same weights twice: their children would be one child (same id) under two names.
                raise UserError(f"models: {model_id} and {twin} are the same model "
                                f"(same weights); list each foundation model once")
            self.models[model_id] = PoolModel(
                id=model_id, name=model_id, kind="foundation", identity=identity,
                path=model_folder(spec), hub_id=spec.hub)
        return [spec.display_name for spec in self.recipe.models]

    # --- plan --------------------------------------------------------------------------------
    def plan(self, generation: int) -> list[PoolModel]:
        """The children of ``generation``: the plan ``plan`` recorded for it when there is one
        whose parents are all in the pool (so ``plan`` and ``evolve`` agree on a directory), else
        Algorithm 1's (:func:`~mergekit_kinship.planner.plan_generation`). Merges nothing."""
        from mergekit_kinship.children import make_child

        recorded = self.recorded_plan(generation)
        candidates = recorded if recorded is not None else plan_generation(
            self.recipe.strategy, self.state(generation), self.merges_left())
        return [make_child(self, c, generation, i + 1) for i, c in enumerate(candidates)]

    def recorded_plan(self, generation: int) -> Optional[list[Candidate]]:
        events = [e for e in self.rd.events("planned") if e["generation"] == generation]
        if not events or "candidates" not in events[-1]:
            return None
        candidates = [Candidate(tuple(c["parents"]), c["exploration"])
                      for c in events[-1]["candidates"]]
        usable = all(p in self.models for c in candidates for p in c.parents) and not any(
            c.pair in self.merged_pairs for c in candidates)
        return candidates if usable else None

    # --- merge and score ---------------------------------------------------------------------
    def add_children(self, children: Sequence[PoolModel]) -> None:
        for child in children:
            self.models[child.id] = child
            self.merged_pairs.add(frozenset(child.parents))
            self.rd.write_text(self.rd.yaml_path(child.id), child.yaml)

    def merge_and_score(self, ids: Sequence[str], executor) -> None:
        """Merge (children) and score every model of ``ids`` through the executor, in stages
        when the recipe says so (:func:`mergekit_kinship.staging.score`); a child whose
        evaluation failed for good leaves the pool (kept in :attr:`failed`)."""
        from mergekit_kinship.materialize import weights_of
        from mergekit_kinship.staging import score

        for i in ids:  # a child still to merge needs its parents' folders (pruned: merged again)
            m = self.models[i]
            if m.kind == "child" and getattr(executor, "evaluates", True) and not self.scored(m):
                for parent in m.parents:
                    if self.models[parent].kind == "child":
                        weights_of(self, parent)
        score(self, ids, executor)

    def scored(self, m: PoolModel) -> bool:
        """A score is recorded for ``m`` under this run's evaluation (with stages: all its items
        are, or scores were imported)."""
        if self.cache.score(m.identity) is not None:
            return True
        if not self.recipe.evaluation.staged:
            return False
        from mergekit_kinship.item_results import read_items

        items, totals = read_items(self.rd, self.cache.items_key(m.identity))
        return all(t in totals and len(items.get(t, {})) == totals[t]
                   for t in self.recipe.evaluation.tasks)

    def run_jobs(self, ids: Sequence[str], executor, items=None) -> dict[str, Any]:
        """One job per model of ``ids`` (``items``: the items each is scored on, staged; None:
        all) through the executor; returns model id -> its JobResult for those that did not
        fail. A child whose evaluation failed for good leaves the pool."""
        from mergekit_kinship.materialize import job_for

        jobs = [job_for(self, self.models[i], items=items) for i in ids]
        done = {}
        for result in executor.run(jobs, progress=self.progress):
            m = self.models[result.model_id]
            if result.error is not None:
                m.failed = result.error
                self.failed[m.id] = self.models.pop(m.id)
                print(f"warning: {m.name} ({m.id}) skipped: its evaluation failed "
                      f"({result.error})", file=sys.stderr)
                continue
            if result.kinship is not None and m.kind == "child":
                self.record_merge_kinship(m, result.kinship)
            if m.kind == "child" and not m.external:
                folder = self.rd.model_dir(m.id)
                m.path = str(folder) if folder.exists() else None
            done[m.id] = result
        return done

    def take_result(self, m: PoolModel, result, screened: Any = None) -> None:
        """``m``'s scores from a JobResult (``screened``: the decision that stopped it)."""
        self.set_scores(m, result.scores, result.stderr, items=result.items,
                        counts=result.samples or None, totals=result.items_total,
                        screened=screened)

    def take_imported(self, m: PoolModel) -> bool:
        """``m``'s scores from a record imported with ``plan --scores`` under this run's
        evaluation, if there is one (staged evaluation: the jobs read only per-item results)."""
        record = self.cache.score(m.identity)
        if record is None:
            return False
        result = record["result"]
        self.set_scores(m, result["scores"], result.get("stderr"), counts=result.get("samples"),
                        totals=result.get("items_total"))
        return True

    def set_scores(self, m: PoolModel, scores: dict[str, float],
                   stderr: Optional[dict[str, float]] = None, *, items=None, counts=None,
                   totals=None, screened: Any = None) -> None:
        """``m``'s scores, per-item results (``items``), items scored per task (``counts``,
        default: from ``items``) and each task's item count (``totals``); its fitness, gain
        over its parents and their standard errors (:mod:`mergekit_kinship.uncertainty`). A
        partial score (fewer items than a task has) is screened out."""
        from mergekit_kinship.evaluation.scores import fitness
        from mergekit_kinship.uncertainty import fitness_stderr, minus_mean

        settings = self.recipe.evaluation
        m.scores, m.stderr = dict(scores), dict(stderr or {})
        m.items = {t: dict(v) for t, v in (items or {}).items()}
        m.items_scored = dict(counts or {t: len(v) for t, v in m.items.items()})
        m.items_total = dict(totals or {})
        self.item_totals.update(m.items_total)
        m.fitness = fitness(m.scores, settings)
        m.fitness_stderr = fitness_stderr(m.items, m.stderr, settings)
        if screened is None and m.partial:
            from mergekit_kinship.staging import Decision

            screened = Decision(None, None, sum(m.items_scored.values()), None, None, None, False)
        m.screened = screened
        if m.kind in ("child", "baseline"):
            m.gain, m.gain_stderr = minus_mean(m, [self.models[p] for p in m.parents], settings)

    # --- kinship -----------------------------------------------------------------------------
    def _key(self, a: str, b: str) -> str:
        return self.cache.kinship_key(self.base_identity, self.models[a].identity,
                                      self.models[b].identity)

    def kinship(self, a: str, b: str, metric: Optional[str] = None) -> Optional[float]:
        """The exact kinship of a pair (measured, or from the merge hook), None if not measured."""
        return self.cache.kinship(self._key(a, b)).get(metric or self.metric)

    def planning_kinship(self, a: str, b: str, metric: Optional[str] = None) -> Optional[float]:
        """What the planner decides by: the exact value, else the sketched one
        (:mod:`~mergekit_kinship.pool_sketch`)."""
        from mergekit_kinship.pool_sketch import planning_value

        return planning_value(self, a, b, metric)

    def _sketch_bounds(self, ids: list[str]) -> Optional[list[list[Optional[float]]]]:
        """Bounds of the sketched values of the pool's matrix (None where exact); None if none is."""
        from mergekit_kinship.pool_sketch import bound_of

        bounds = [[None if a == b else bound_of(self, a, b) for b in ids] for a in ids]
        return bounds if any(v is not None for row in bounds for v in row) else None

    def record_merge_kinship(self, child: PoolModel, kinship: dict) -> None:
        """Record what the merge hook measured (the child's ``kinship.json``, against the
        family's ancestor): the parents' kinship and each parent's kinship with the child, so
        :meth:`relate` does not read them again. Values already known are kept as they are; an
        undefined one (None) is left to :meth:`relate`, whose engine says why."""
        from mergekit_kinship.merge_kinship import MergeKinship

        observed = MergeKinship.from_dict(kinship)
        if len(observed.models) != len(child.parents) or len(child.parents) != 2:
            return
        a, b = child.parents
        exact = {m: v for m, v in observed.pair(0, 1).items() if v is not None}
        if exact:  # what the child reports: the hook's exact values, not a sketch's
            child.parents_kinship = {m: exact.get(m, v) for m, v in
                                     {**(child.parents_kinship or {}), **exact}.items()}
        for (x, y), values in (((a, b), observed.pair(0, 1)),
                               ((a, child.id), observed.with_output(0)),
                               ((b, child.id), observed.with_output(1))):
            known = self.cache.kinship(self._key(x, y))
            new = {m: v for m, v in values.items() if m not in known and v is not None}
            if new:
                self.cache.record_kinship(self._key(x, y), [x, y], new)

    def relate(self, new_ids: Sequence[str]) -> None:
        """Kinship of every new model with every model of the pool: from delta sketches, reading
        nothing, and exact (cached by content) for the pairs the run reports or decides by; see
        :mod:`~mergekit_kinship.pool_sketch`."""
        from mergekit_kinship.pool_sketch import relate

        relate(self, new_ids)

    # --- select and stop ---------------------------------------------------------------------
    def state(self, generation: int) -> PoolState:
        return PoolState(models=tuple(self.models),
                         fitness={i: m.fitness if m.fitness is not None else 0.0
                                  for i, m in self.models.items()},
                         kinship=self.planning_kinship, metric=self.metric, top_k=self.recipe.top_k,
                         generation=generation, merged=frozenset(self.merged_pairs),
                         seed=self.recipe.seed, screened=self.screened_ids())

    def screened_ids(self) -> frozenset[str]:
        return frozenset(i for i, m in self.models.items() if m.screened is not None)

    def top_k(self, k: Optional[int] = None) -> list[str]:
        """The k fittest models (never a screened-out one: its fitness is a partial score)."""
        return top_k(list(self.models), self.state(0).fitness, k or self.recipe.top_k,
                     self.screened_ids())

    def stop_reason(self, generation: int, previous_top: list[str], new_top: list[str]
                    ) -> Optional[str]:
        """Why the loop stops after ``generation`` (the recipe's rules), or None to go on."""
        stopping = self.recipe.stopping
        planned_next = len(plan_generation(self.recipe.strategy, self.state(generation + 1),
                                           self.merges_left()))
        return stop_reason(
            generation=generation, previous_top=previous_top, new_top=new_top,
            merges_done=self.merges_done(), planned_next=planned_next,
            max_generations=stopping.max_generations, max_merges=stopping.max_merges,
            saturation=stopping.saturation, top_k_mutual_pcc=self.mutual_pcc(new_top))

    def mutual_pcc(self, ids: Sequence[str]) -> Optional[float]:
        return mutual_kinship(ids, lambda a, b: self.kinship(a, b, "pcc"))

    def merges_done(self) -> int:
        return sum(1 for m in [*self.models.values(), *self.failed.values()] if m.kind == "child")

    def merges_left(self) -> Optional[int]:
        cap = self.recipe.stopping.max_merges
        return None if cap is None else cap - self.merges_done()

    # --- record ------------------------------------------------------------------------------
    def record_generation(self, generation: int, children: Sequence[PoolModel],
                          new_top: list[str], stopped: Optional[str]) -> dict[str, Any]:
        """The generation's record (journal + summary); returns it."""
        kept = [c for c in children if c.id in self.models]
        failed = [c.id for c in children if c.id in self.failed]
        fitnesses = [c.fitness for c in kept]
        record: dict[str, Any] = {
            "index": generation, "children": [c.id for c in kept], "top_k": new_top,
            "best": new_top[0], "best_fitness": self.models[new_top[0]].fitness,
            "mean_fitness": sum(fitnesses) / len(fitnesses) if fitnesses else None,
            "top_k_mutual_pcc": self.mutual_pcc(new_top)}
        if failed:
            record["failed"] = failed
        screened = [c.id for c in kept if c.screened is not None]
        if screened:
            record["screened"] = screened
        self.generations.append(record)
        self.rd.append({"event": "generation", **record, "stopped": stopped})
        return record

    def summary(self, stopped: Optional[str]):
        """The run's :class:`~mergekit_kinship.summary.RunSummary` as it stands."""
        from mergekit_kinship.summary import BaseInfo, PoolKinship, RunSummary

        ids = list(self.models)
        base = self.recipe.base
        diagonal = self_kinship(self.metric)
        reference = self.references.get("base")
        base_fitness = reference.fitness if reference is not None else None

        def entry(m: PoolModel):
            from mergekit_kinship.uncertainty import minus_mean

            e = m.entry()
            if m.items:
                e.items_key = self.cache.items_key(m.identity)
            if base_fitness is not None and m.fitness is not None and m.kind != "base":
                e.vs_base, e.vs_base_stderr = minus_mean(m, [reference], self.recipe.evaluation)
            return e

        return RunSummary(
            recipe=self.recipe.to_dict(), strategy=self.recipe.strategy,
            top_k=self.recipe.top_k, metric=self.metric,
            base=BaseInfo(name=base.display_name, path=base.path, hub_id=base.hub),
            evaluation={**self.recipe.evaluation.model_dump(mode="json"), "n_shot": self.n_shot},
            models={i: entry(m) for i, m in self.models.items()},
            generations=self.generations,
            pool_kinship=PoolKinship(names=ids, metric=self.metric, values=[
                [diagonal if a == b else self.planning_kinship(a, b) for b in ids] for a in ids],
                bounds=self._sketch_bounds(ids)),
            saturation_threshold=self.recipe.stopping.saturation, stopped=stopped,
            merges=self.merges_done(), best=self.top_k(1)[0] if ids else None,
            failed={i: m.entry() for i, m in self.failed.items()},
            references={i: entry(m) for i, m in self.references.items()})


def default_kinship(paths: dict[str, str], base: str, metrics: list[str],
                    pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """Kinship through :func:`mergekit_kinship.streaming_kinship.kinship_matrix` (reads each
    model once, float64 accumulators, memory bounded by a block of tensors)."""
    from mergekit_kinship.streaming_kinship import kinship_matrix

    names = list(paths)
    index = {n: i for i, n in enumerate(names)}
    result = kinship_matrix([paths[n] for n in names], base, metrics=tuple(metrics),
                            pairs=[(index[a], index[b]) for a, b in pairs], progress=False)
    return {(a, b): {m: result.values[m][index[a]][index[b]] for m in metrics}
            for a, b in pairs}
