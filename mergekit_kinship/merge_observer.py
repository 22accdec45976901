"""The kinship observer of one mergekit merge: the tensors the merge loads feed float64 accumulators.

Per output tensor, :class:`MergeObserver` adds one task to mergekit's plan
(:class:`~mergekit_kinship.merge_hook.KinshipObservation`) that receives what the plan already
loaded (its ``GatherTensors`` result) and the merged tensor, and hands them to a background
thread that feeds :class:`~mergekit_kinship.kinship_accumulators.KinshipAccumulator` rows: the
merge's inputs and the output (cast as ``SaveTensor`` casts it, so it equals what is written), as
deltas from the ancestor. The contract is the streaming engine's: the same values as
:func:`~mergekit_kinship.streaming_kinship.kinship_matrix` over the inputs, the ancestor and the
written folder, to float64 rounding. What that takes, decided here:

- **Which tensors.** Those the merge writes and the ancestor stores, each input's tensor of the
  same name. A config whose output tensors come from other names (slices that move layers) is
  refused before anything is written; a tensor a model only has under an alias or a tied name,
  an integer buffer, and the ancestor's tensors the merge does not write are left out, with a note.
- **Stored values.** The engine reads weights as stored. Where the merge ``dtype`` widens them
  (bfloat16 or float16 to float32, anything to float64) the gathered tensor holds the same values;
  where it rounds them (float32 stored, ``dtype: bfloat16``), the stored tensor is loaded again for
  kinship (counted in ``extra_bytes``, named in a note). The ancestor, when the method does not
  load it (SLERP's ``base_model`` is parent A; ``linear`` has none), is read alongside, once per
  tensor: by the reducing thread with :mod:`mergekit_kinship.models`' reader for a local folder
  (no memory map, and mergekit's thread does not wait), else by a mergekit ``LoadTensor``.
- **Vocabulary.** A model with added rows is compared on the ancestor's rows, as the engine does.
  When the merge re-orders or cuts the vocabulary (a ``tokenizer`` section,
  ``--unsafe-truncate-embeddings``), the output's rows no longer line up with the ancestor's:
  those tensors count for the inputs' kinship only, with a note.

Cost: one thread reduces (single-threaded torch, set for that thread only: see
:func:`_single_threaded_torch_here`) while mergekit goes on;
at most ``max_in_flight`` tensors' inputs wait for it (the memory of the hook beyond its
accumulators and float64 scratch). Reduction errors (NaN, a shape the ancestor does not have)
never stop the merge: :meth:`MergeObserver.finish` reports them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from mergekit_kinship.errors import UserError
from mergekit_kinship.kinship_accumulators import KinshipAccumulator, Moments

# float64 elements per row reduced at once by the hook's thread: its N+1 rows stay in L2 while
# mergekit's thread works beside it (measured on a 2-core EPYC, bf16, N = 3: 3.2 ns per element
# of all rows at 32768, 4.7 at the accumulator's default of 87381).
HOOK_SUBCHUNK = 32768

# Casts that keep every value: the gathered tensor then equals the stored one.
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_EXACT_CASTS = {
    (stored, cast)
    for stored, wider in [(torch.float16, (torch.float32, torch.float64)),
                          (torch.bfloat16, (torch.float32, torch.float64)),
                          (torch.float32, (torch.float64,)),
                          *[(f8, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
                            for f8 in _FP8]]
    for cast in wider
}


def exact_cast(stored: Optional[torch.dtype], cast: Optional[torch.dtype], known: bool) -> bool:
    """Whether loading a tensor stored as ``stored`` with a cast to ``cast`` keeps its values."""
    return cast is None or (known and (stored == cast or (stored, cast) in _EXACT_CASTS))


@dataclass
class TensorPlan:
    """How one output tensor feeds the accumulators. A source is ``("g", model)`` (the gathered
    tensor), ``("r", (models.Model, name))`` (read by the reducing thread, for kinship only) or
    ``("x", key)`` (loaded by mergekit for kinship only: a hub model or a LoRA)."""

    name: str
    ancestor: tuple[str, Any]
    inputs: list[tuple[str, Any]]
    with_output: bool
    out_dtype: Optional[torch.dtype]
    vocab_rows: bool  # axis 0 indexes tokens: added rows may be cut to the ancestor's


@dataclass
class ObservedKinship:
    """What the observer accumulated: ``models`` (the inputs' moments over every compared
    tensor), ``with_output`` (inputs + output over the tensors where the output lines up)."""

    models: Moments
    with_output: Moments
    n_tensors: int
    n_output_tensors: int
    extra_bytes: int
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None
    sketch: Any = None  # the output's delta sketch (sketch.Sketch), when one was asked for
    # seconds of CPU the reducing thread used, and that mergekit's thread waited for it
    timing: dict[str, float] = field(default_factory=dict)


def same_model(a, b) -> bool:
    """Two mergekit model references to one model: equal, or the same local folder."""
    if a == b:
        return True
    if a.lora is not None or b.lora is not None:
        return False
    pa, pb = str(a.model.path), str(b.model.path)
    return (a.model.revision == b.model.revision and os.path.isdir(pa) and os.path.isdir(pb)
            and os.path.realpath(pa) == os.path.realpath(pb))


class MergeObserver:
    """Kinship of ``inputs`` (mergekit model references) and the merged output, as deltas from
    ``ancestor``, observed inside one merge. Use :meth:`tasks` as the ``observe`` callback of
    :func:`~mergekit_kinship.merge_hook.run_merge_observed`, then :meth:`finish` (always: it stops
    the thread). ``device``: where the float64 reduction runs (``"cpu"`` or a CUDA device)."""

    def __init__(self, inputs, ancestor, device: str = "cpu", max_in_flight: int = 1,
                 sketch=None):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.inputs, self.ancestor = list(inputs), ancestor
        self.device = torch.device(device)
        k = len(self.inputs)
        # Sub-chunks of HOOK_SUBCHUNK elements on the CPU (None: the accumulator's default).
        sub = HOOK_SUBCHUNK if self.device.type == "cpu" else None
        self.main = KinshipAccumulator(k + 1, device=self.device, subchunk=sub)  # inputs + output
        self.side = KinshipAccumulator(k, device=self.device, subchunk=sub)  # inputs only
        self.plans: list[TensorPlan] = []
        self.left_out: dict[str, list[str]] = {}
        self.reread: dict[str, list[str]] = {}
        self.extra_bytes = 0
        self.worker_notes: list[str] = []
        self.error: Optional[str] = None
        self._slots = threading.Semaphore(max_in_flight)
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._headers: dict[str, dict] = {}  # safetensors file -> header, read once per merge
        self._opened: dict[str, Any] = {}  # local folder -> models.Model (or None)
        self._timing = {"reduce_cpu_s": 0.0, "merge_waited_s": 0.0}
        # The output's delta sketch (sketch.SketchParams asked for): fed the output row's
        # float64 deltas by the main accumulator, so it costs no read and no subtraction.
        self.sketch_params = sketch
        self.builder = None
        self._sketched: set[str] = set()

    # --- planning (main thread, before the merge runs) -------------------------------------------
    def tasks(self, targets) -> list:
        """The observation tasks for ``targets`` (``plan_to_disk``'s); raises :class:`UserError`
        for a config whose output tensors are not merged from same-named input tensors."""
        from mergekit_kinship import merge_hook as hook

        tasks = []
        planned = hook.planned_tensors(targets)
        ancestor_paths = hook.model_index(self.ancestor).tensor_paths
        for p in planned:
            plan, extras = self._plan(p, ancestor_paths)
            if plan is None:
                continue
            tasks.append(hook.KinshipObservation(
                sink=self, index=len(self.plans), label=p.label, gathered=p.gather,
                merged=p.merge, extras=tuple(extras.items())))
            self.plans.append(plan)
        written = {p.name for p in planned}
        unwritten = [n for n in ancestor_paths if n not in written]
        if unwritten:
            self.left_out.setdefault("the ancestor stores them but the merge does not write them",
                                     []).extend(unwritten)
        if not self.plans:
            raise UserError("no tensor of this merge can be compared with the ancestor "
                            f"{self.ancestor}: " + "; ".join(self.notes()))
        if self.sketch_params is not None:
            self._start_sketch()
        self._thread = threading.Thread(target=self._work, name="kinship-hook", daemon=True)
        self._thread.start()
        return tasks

    def _plan(self, p, ancestor_paths) -> tuple[Optional[TensorPlan], dict]:
        from mergekit_kinship import merge_hook as hook

        name, extras = p.name, {}
        if name not in ancestor_paths:
            self.left_out.setdefault("the ancestor has no tensor of that name", []).append(name)
            return None, {}
        sources = []
        for k, model in enumerate([self.ancestor, *self.inputs]):
            load = next((ld for m, ld in p.loads.items() if same_model(m, model)), None)
            if load is not None and load.tensor != name:
                raise UserError(f"output tensor {name} is merged from {load.tensor} of {model}: "
                                "kinship compares same-named tensors, so configs whose slices move "
                                "layers are not supported (merge them with mergekit-yaml)")
            if load is None and k > 0:
                if p.weight.optional:
                    self.left_out.setdefault("an input does not have it", []).append(name)
                    return None, {}
                raise UserError(f"output tensor {name} is not merged from input {model}: kinship "
                                "needs every input in every tensor (a slice config that takes "
                                "layers from different models is not supported)")
            if load is not None and hook.resolved_name(load) != name:
                self.left_out.setdefault(
                    f"{model} stores it under another name (an alias or a tied weight)",
                    []).append(name)
                return None, {}
            stored, known = self._stored_dtype(model, name)
            if known and stored is None:
                self.left_out.setdefault("not a floating-point weight", []).append(name)
                return None, {}
            if load is not None and exact_cast(stored, hook.load_cast(load), known):
                sources.append(("g", load.model))
                continue
            if load is not None:
                self.reread.setdefault(str(model), []).append(name)
            local = self._local(model)
            if local is not None and name in local.tensors:
                sources.append(("r", (local, name)))  # read by the reducing thread
                continue
            key = f"kinship:{k}"
            extras[key] = hook.load_as_stored(model, name, p.gather.device)
            sources.append(("x", key))
        plan = TensorPlan(name=name, ancestor=sources[0], inputs=sources[1:],
                          with_output=not p.reshaped_vocab, out_dtype=p.out_dtype,
                          vocab_rows=p.weight.vocabulary_axis == 0)
        return plan, extras

    def _start_sketch(self) -> None:
        """A builder over the tensors compared with the output (a sketch over any other set
        would not be comparable with the streaming engine's, so then none is made)."""
        from mergekit_kinship.sketch import SketchBuilder, SketchLayout

        tensors = []
        for plan in self.plans:
            numel = self._ancestor_numel(plan.name) if plan.with_output else None
            if numel is None:
                self.worker_notes.append(f"no delta sketch: {plan.name} is not compared with the output")
                return
            tensors.append((plan.name, numel))
        layout = SketchLayout.cached(tuple(tensors), self.sketch_params)
        self.builder = SketchBuilder(layout, 1, self.device)

    def _ancestor_numel(self, name: str) -> Optional[int]:
        from mergekit_kinship import merge_hook as hook
        from mergekit_kinship.models import read_safetensors_header

        local = self._local(self.ancestor)
        if local is not None and name in local.tensors:
            return local.tensors[name].numel
        file = hook.shard_file(self.ancestor, name)
        if not file.endswith(".safetensors"):
            return None
        if file not in self._headers:
            self._headers[file] = read_safetensors_header(Path(file))[0]
        numel = 1
        for size in self._headers[file][name]["shape"]:
            numel *= int(size)
        return numel

    def _local(self, model):
        """A local model folder opened by :mod:`mergekit_kinship.models` (headers only), whose
        tensors the reducing thread reads itself, with ``readinto``: no memory map keeps them
        resident, and mergekit's thread does not wait for the read. None for a hub model, a
        LoRA, or a folder our reader does not take (mergekit's loader reads those)."""
        from mergekit_kinship.models import open_model

        path = str(model.model.path)
        if model.lora is not None or model.model.revision is not None or not os.path.isdir(path):
            return None
        key = os.path.realpath(path)
        if key not in self._opened:
            try:
                self._opened[key] = open_model(path)
            except UserError:
                self._opened[key] = None
        return self._opened[key]

    def _stored_dtype(self, model, name) -> tuple[Optional[torch.dtype], bool]:
        """(stored dtype, known): None for a weight that is not floating point; unknown for a
        ``.bin`` shard mergekit reads and our reader does not."""
        from mergekit_kinship import merge_hook as hook
        from mergekit_kinship.models import SAFETENSORS_DTYPES, read_safetensors_header

        local = self._local(model)
        if local is not None and name in local.tensors:
            return local.tensors[name].dtype, True
        file = hook.shard_file(model, name)
        if not file.endswith(".safetensors"):
            return None, False
        if file not in self._headers:
            self._headers[file] = read_safetensors_header(Path(file))[0]
        return SAFETENSORS_DTYPES.get(self._headers[file][name]["dtype"]), True

    # --- during the merge (the executor's thread, then ours) -------------------------------------
    def submit(self, index: int, gathered: dict, merged, extras: dict) -> None:
        """Queue one tensor for the reducing thread; blocks while ``max_in_flight`` are waiting."""
        started = time.perf_counter()
        self._slots.acquire()
        self._timing["merge_waited_s"] += time.perf_counter() - started
        self._queue.put((index, gathered, merged, extras))

    def _work(self) -> None:
        if self.device.type == "cpu":
            _single_threaded_torch_here()
        started = time.thread_time()
        while True:
            job = self._queue.get()
            if job is None:
                self._timing["reduce_cpu_s"] = time.thread_time() - started
                return
            try:
                if self.error is None:
                    self._reduce(*job)
            except UserError as err:
                self.error = str(err)
            except Exception as err:  # noqa: BLE001 - a kinship failure never fails the merge
                self.error = f"{type(err).__name__}: {err}"
            finally:
                del job
                self._slots.release()

    def _reduce(self, index: int, gathered: dict, merged, extras: dict) -> None:
        plan = self.plans[index]

        def pick(source):
            kind, key = source
            if kind == "r":
                model, name = key
                info = model.tensors[name]
                self.extra_bytes += info.nbytes
                buffer = torch.empty(info.nbytes, dtype=torch.uint8)
                return model.read(info, 0, info.numel, buffer).view(info.shape)
            if kind == "x":
                tensor = extras[key]
                self.extra_bytes += tensor.numel() * tensor.element_size()
                return tensor
            tensor = gathered.get(key)
            if tensor is None:
                raise UserError(f"model {key} has no tensor '{plan.name}'")
            return tensor

        base = pick(plan.ancestor)
        if not base.is_floating_point():
            self.worker_notes.append(f"{plan.name}: not a floating-point weight, left out")
            return
        rows = [self._rows(plan, pick(s), base, str(m)) for s, m in zip(plan.inputs, self.inputs)]
        if plan.with_output and merged is not None:
            out = merged if plan.out_dtype is None else merged.to(dtype=plan.out_dtype)
            rows.append(self._rows(plan, out, base, "the merged output"))
            feed = None
            if self.builder is not None:
                builder, name = self.builder, plan.name
                feed = lambda d, start: builder.add(d[-1:], name, start)  # noqa: E731 - the output row
            self.main.add(base, rows, tensor=plan.name, on_deltas=feed)
            self._sketched.add(plan.name)
        else:
            if plan.with_output:
                self.worker_notes.append(f"{plan.name}: the merge wrote nothing for it; compared "
                                         "between the inputs only")
            self.side.add(base, rows, tensor=plan.name)

    def _rows(self, plan: TensorPlan, tensor, base, who: str):
        if tensor.shape == base.shape:
            return tensor
        if (plan.vocab_rows and tensor.dim() == base.dim() >= 1 and tensor.shape[1:] == base.shape[1:]
                and tensor.shape[0] > base.shape[0]):
            return tensor[: base.shape[0]]  # added vocabulary rows: the ancestor's rows only
        raise UserError(f"tensor '{plan.name}' has shape {list(tensor.shape)} in {who} but "
                        f"{list(base.shape)} in the ancestor {self.ancestor}")

    # --- after the merge -------------------------------------------------------------------------
    def finish(self) -> ObservedKinship:
        """Wait for the thread, stop it, and return what was accumulated (``error`` set if a
        tensor could not be reduced: then the values are incomplete and must not be used)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for model in self._opened.values():
            if model is not None:
                model.close()
        k = len(self.inputs)
        models = Moments(k)
        if self.main.groups:
            whole = self.main.moments()
            sub = Moments(k)  # the inputs' rows of the inputs + output moments
            sub.n, sub.m = whole.n, whole.m[:k].clone()
            sub.C, sub.E = whole.C[:k, :k].clone(), whole.E[:k, :k].clone()
            if whole.B is not None:  # sign counts (sign_conflict), when they were kept
                sub.B, sub.X = whole.B[:k, :k].clone(), whole.X[:k, :k].clone()
            models.merge(sub)
        if self.side.groups:
            models.merge(self.side.moments())
        n_out = sum(1 for p in self.plans if p.with_output)
        sketch = None
        if self.builder is not None and self.error is None:
            if self._sketched == {name for name, _ in self.builder.layout.tensors}:
                sketch = self.builder.finish()[0]
            else:
                self.worker_notes.append("no delta sketch: the merge wrote fewer tensors than planned")
        return ObservedKinship(models=models, with_output=self.main.moments(),
                               n_tensors=len(self.plans), n_output_tensors=n_out,
                               extra_bytes=self.extra_bytes, notes=self.notes(), error=self.error,
                               timing=dict(self._timing), sketch=sketch)

    def notes(self) -> list[str]:
        notes = [f"left out ({why}): {_names(names)}" for why, names in self.left_out.items()]
        notes += [f"{model}: stored tensors read again for kinship, because the merge dtype rounds "
                  f"them: {'all' if len(names) == len(self.plans) else _names(names)}"
                  for model, names in self.reread.items()]
        reshaped = [p.name for p in self.plans if not p.with_output]
        if reshaped:
            notes.append("the merge re-orders or cuts the vocabulary, so these tensors count for "
                         f"the inputs' kinship but not for kinship with the output: {_names(reshaped)}")
        return notes + self.worker_notes


def _single_threaded_torch_here() -> bool:
    """Make torch's CPU ops single-threaded in the calling thread only; True if they are.

    On a busy machine torch's intra-op threads stall at their barriers (a float64 reduction of
    a 0.14B-parameter tensor set took 36 s with 2 threads against 1.0 s with one). But
    ``torch.set_num_threads`` also sets torch's process-wide default, which a thread that has
    not yet used torch (mergekit's) would adopt: its reductions would then split differently and
    the merged weights would change in their last bits. OpenMP's own ``omp_set_num_threads``
    sets the calling thread's team size only; torch's per-thread initialisation runs first
    (``torch.get_num_threads``) so that it does not undo it. Where the symbol is not reachable
    (another OpenMP runtime), nothing changes but the speed.
    """
    import ctypes

    torch.get_num_threads()  # torch's lazy per-thread init, which would reset the team size
    try:
        ctypes.CDLL(None).omp_set_num_threads(1)
    except (AttributeError, OSError):
        return False
    return torch.get_num_threads() == 1


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
