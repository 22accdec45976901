"""The Ray executor: a generation's children merged and scored at once, one Ray worker each.

Workers are long-lived Ray actors (:class:`ChildWorker`): each imports mergekit (and lm-eval)
once and then runs one :class:`~mergekit_kinship.executors.job.ChildJob` at a time, so a
generation of n children on n GPUs takes about as long as one child. Jobs read and write only
the run directory and the models the recipe names, so **every worker must see them at the same
paths** (a shared filesystem on a multi-machine cluster).

The driver (the process running ``evolve``) is the journal's only writer: a worker collects the
events of its job (:func:`~mergekit_kinship.rundir.collect_events`) and returns them with the
result, because appends to one file from several machines can overwrite each other on NFS. The
driver adds per job a ``worker-job`` event (node, worker pid, start and end in Unix seconds,
attempt) or a ``worker-job-failed`` event (the error and the remote traceback).

Failures: a job that raises on a worker, or whose worker dies (out of memory, lost node), is
recorded and run again, up to ``retries`` more times, on a fresh worker when the old one died.
A :class:`~mergekit_kinship.errors.UserError` is the user's to fix and is not retried. When a
child is still failing, the generation's other children finish first (their work is kept), then
:class:`ChildJobFailed` is raised; running ``evolve`` again resumes and retries it.

Ctrl-C (KeyboardInterrupt in the driver) kills the workers at once (their half-written merges
never count: see :mod:`mergekit_kinship.rundir`), records an ``interrupted`` event, disconnects
from a cluster this executor started or joined, and re-raises; ``evolve`` resumes as after any
other interruption.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any, Optional, Sequence

import ray

from mergekit_kinship.errors import UserError
from mergekit_kinship.executors.job import ChildJob, JobResult
from mergekit_kinship.rundir import RunDir

# Environment that changes what a job does, passed on to the workers when this executor connects
# (the workers of a running cluster do not inherit the driver's environment).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

# How often the driver wakes while waiting for workers, so that Ctrl-C is acted on promptly.
_POLL_SECONDS = 0.5


class ChildJobFailed(RuntimeError):
    """A child kept failing on the Ray workers after all its retries."""


class ChildWorker:
    """One long-lived worker: imports mergekit (and lm-eval) once, then runs jobs one at a time.

    A job's result, its journal events and its wall-clock interval come back to the driver as
    plain data; an exception inside the job is returned as data too (type, message, traceback).
    """

    def __init__(self):
        # Ray copies a worker's stdout to the driver's stdout, which carries the results.
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        import mergekit.merge  # noqa: F401  (about 10 s once per worker, not once per child)
        # The evaluator (lm-eval, or the job's own) is imported by the first job, then cached.

    def describe(self) -> dict[str, Any]:
        return {"node": socket.gethostname(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, job: dict) -> dict[str, Any]:
        from dataclasses import asdict

        from mergekit_kinship.executors.job import run_child_job
        from mergekit_kinship.rundir import collect_events

        started = time.time()
        result = error = None
        with collect_events() as events:
            try:
                result = asdict(run_child_job(ChildJob(**job)))
            except Exception as err:  # returned to the driver, which records and retries it
                error = {"type": type(err).__name__, "message": str(err),
                         "user_error": isinstance(err, UserError),
                         "traceback": traceback.format_exc()}
        return {"result": result, "error": error, "events": list(events), "started": started,
                "ended": time.time(), "node": socket.gethostname(), "worker_pid": os.getpid()}


_RemoteChildWorker = None  # ray.remote(ChildWorker), made once per driver process


class RayExecutor:
    """Runs a generation's jobs concurrently on Ray actors, one child per worker at a time.

    ``address``: a running cluster (``auto``, ``ray://host:10001``, ``host:6379``); None joins the
    cluster this machine runs, if any, else starts a local one. If this process is already
    connected (``ray.init`` was called), that connection is used and left open.
    ``num_gpus``: GPUs per child (fractions share a GPU); None means 1 when the cluster has GPUs
    and 0 (CPU only) when it has none. ``num_cpus``: CPUs per child. ``workers``: how many actors
    at most; None fits as many as the cluster's resources allow. ``retries``: how many times a
    failing child is run again. ``init_options``: extra keyword arguments of ``ray.init``.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, num_gpus: Optional[float] = None,
                 num_cpus: float = 1.0, retries: int = 2, workers: Optional[int] = None,
                 init_options: Optional[dict[str, Any]] = None):
        if num_gpus is not None and num_gpus < 0:
            raise UserError(f"--num-gpus: 0 or more GPUs per child, not {num_gpus}")
        if num_cpus <= 0:
            raise UserError(f"--num-cpus: more than 0 CPUs per child, not {num_cpus}")
        if retries < 0:
            raise UserError(f"--retries: 0 or more, not {retries}")
        if workers is not None and workers < 1:
            raise UserError(f"--workers: 1 or more, not {workers}")
        self.address = address
        self.num_gpus = num_gpus
        self.num_cpus = float(num_cpus)
        self.retries = retries
        self.workers = workers
        self.init_options = dict(init_options or {})
        self._actors: list = []
        self._connected_here = False  # this executor called ray.init, so it disconnects
        self._capacity: Optional[int] = None

    # --- cluster -----------------------------------------------------------------------------
    def _connect(self) -> None:
        if not ray.is_initialized():
            options = {"log_to_driver": True, **self.init_options}
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            if env:
                options.setdefault("runtime_env", {"env_vars": env})
            try:
                ray.init(address=self.address, **options)
            except ConnectionError as err:
                raise UserError(f"--address {self.address}: no Ray cluster answers there "
                                f"({str(err).splitlines()[0]})") from None
            self._connected_here = True
        if self._capacity is None:
            self._capacity = self._fit(ray.cluster_resources())

    def _fit(self, resources: dict[str, float]) -> int:
        """How many workers the cluster holds at once; refuses a request it can never meet."""
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if self.num_gpus is None:
            self.num_gpus = 1.0 if gpus >= 1 else 0.0
        if self.num_gpus > gpus:
            raise UserError(f"--num-gpus {self.num_gpus:g}: the Ray cluster has {gpus:g} GPUs "
                            f"(--num-gpus 0 runs children on CPUs)")
        if self.num_cpus > cpus:
            raise UserError(f"--num-cpus {self.num_cpus:g}: the Ray cluster has {cpus:g} CPUs")
        fits = math.floor(cpus / self.num_cpus + 1e-9)
        if self.num_gpus > 0:
            fits = min(fits, math.floor(gpus / self.num_gpus + 1e-9))
        return max(1, min(fits, self.workers or fits))

    def _new_worker(self):
        global _RemoteChildWorker
        if _RemoteChildWorker is None:
            _RemoteChildWorker = ray.remote(ChildWorker)
        return _RemoteChildWorker.options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0,
            max_concurrency=1).remote()

    def _grow(self, n: int) -> None:
        while len(self._actors) < n:
            self._actors.append(self._new_worker())

    # --- running a generation ----------------------------------------------------------------
    def run(self, jobs: Sequence[ChildJob], progress: bool = True) -> list[JobResult]:
        """Run every job, as many at once as there are workers; results in the order of ``jobs``.

        Raises :class:`ChildJobFailed` (or the job's own :class:`UserError`) after the other
        jobs finished when a job kept failing; see the module docstring for Ctrl-C.
        """
        from tqdm import tqdm

        if not jobs:
            return []
        self._connect()
        self._grow(min(self._capacity, len(jobs)))
        rd = RunDir(jobs[0].run_dir)
        queue = deque((i, 1) for i in range(len(jobs)))
        idle = list(self._actors)
        running: dict = {}  # object ref -> (job index, attempt, actor)
        results: list[Optional[JobResult]] = [None] * len(jobs)
        failed: list[tuple[ChildJob, dict, int]] = []
        bar = tqdm(total=len(jobs), desc=f"merge + score on {len(self._actors)} Ray workers",
                   unit="child", file=sys.stderr, disable=not progress, leave=False)
        try:
            while queue or running:
                while queue and idle:
                    i, attempt = queue.popleft()
                    actor = idle.pop(0)
                    running[actor.run.remote(jobs[i].to_dict())] = (i, attempt, actor)
                done, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
                for ref in done:
                    i, attempt, actor = running.pop(ref)
                    outcome, actor = self._collect(ref, actor)
                    idle.append(actor)
                    job = jobs[i]
                    for event in outcome["events"]:
                        rd.append(event)
                    where = {"node": outcome["node"], "worker_pid": outcome["worker_pid"],
                             "attempt": attempt}
                    error = outcome["error"]
                    if error is None:
                        results[i] = JobResult(**outcome["result"])
                        rd.append({"event": "worker-job", "model": job.model_id, **where,
                                   "started": outcome["started"], "ended": outcome["ended"]})
                        bar.update()
                        continue
                    final = error["user_error"] or attempt > self.retries
                    rd.append({"event": "worker-job-failed", "model": job.model_id, **where,
                               "error": f"{error['type']}: {error['message']}",
                               "traceback": error["traceback"], "final": final})
                    if final:
                        failed.append((job, error, attempt))
                        bar.update()
                    else:
                        queue.append((i, attempt + 1))
        except BaseException:  # Ctrl-C or a driver-side error: stop the cluster's work now
            self._abort(rd, [jobs[i].model_id for i, _, _ in running.values()])
            raise
        finally:
            bar.close()
        if failed:
            job, error, attempts = failed[0]
            if error["user_error"]:
                raise UserError(error["message"])
            others = f" ({len(failed) - 1} more children failed too)" if len(failed) > 1 else ""
            raise ChildJobFailed(
                f"{job.model_id} failed {attempts} time(s) on Ray workers{others}; last error: "
                f"{error['type']}: {error['message']} (journal: {rd.journal_path}; run evolve "
                f"again to retry)\n--- remote traceback ---\n{error['traceback']}")
        return results

    def _collect(self, ref, actor) -> tuple[dict, Any]:
        """The outcome of one finished call, and the worker to use next (fresh if it died)."""
        try:
            return ray.get(ref), actor
        except ray.exceptions.RayError as err:  # the worker died: out of memory, lost node ...
            self._actors.remove(actor)
            ray.kill(actor, no_restart=True)
            replacement = self._new_worker()
            self._actors.append(replacement)
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            outcome = {"result": None, "events": [], "node": None, "worker_pid": None,
                       "error": {"type": type(err).__name__, "message": message,
                                 "user_error": False, "traceback": str(err)}}
            return outcome, replacement

    def _abort(self, rd: RunDir, cancelled: list[str]) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        try:
            rd.append({"event": "interrupted", "executor": "ray", "cancelled": cancelled})
        finally:
            self._disconnect()

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers; disconnect if this executor connected (a cluster it started
        stops with it)."""
        if ray.is_initialized():
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
        self._actors = []
        self._disconnect()

    def _disconnect(self) -> None:
        if self._connected_here and ray.is_initialized():
            ray.shutdown()
        self._connected_here = False
        self._capacity = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

