"""Where the kinship hook meets mergekit's internals (mergekit 0.1.5): the one module that does.

Why this module exists: mergekit has no extension point inside a merge. ``run_merge`` plans the
merge (``MergePlanner.plan_to_disk``: per output tensor a ``GatherTensors`` task loading every
input's tensor, an ``ExecuteMergeMethodTask`` over it and a ``SaveTensor``) and runs the plan in
one call, so a second consumer of the loaded tensors can only be added between the two. This
module therefore

- runs :func:`run_merge_observed`: ``run_merge``'s own steps, in its order, with its private
  helpers (``_model_out_config``, ``_update_config_vocab``, ``_set_chat_template``,
  ``_copy_tokenizer``, ``_copy_tagalong_files``), plus the caller's extra target tasks handed to
  mergekit's unmodified ``Executor`` (or ``MultiGPUExecutor``). Nothing of mergekit is patched;
  the extra tasks only read what the plan already loads (equal frozen tasks are one graph node,
  so depending on a ``GatherTensors`` reads nothing again) and return ``None``;
- reads the shape of the plan (:func:`planned_tensors`): ``SaveTensor.tensor_task`` is an
  ``ExecuteMergeMethodTask`` whose ``gather_tensors`` is a ``GatherTensors``, or a
  ``PermutedVocabulary`` / ``TruncatedVocabulary`` around one (the vocabulary is re-ordered or
  cut); the fields ``weight_info``, ``dtype``, ``device`` of ``GatherTensors``; ``LoadTensor``'s
  name resolution (name, aliases, tied names) and its cast to the merge ``dtype``; ``SaveTensor``'s
  cast to ``out_dtype``;
- defines :class:`KinshipObservation`, the task that hands one output tensor's loaded inputs and
  merged result to a sink (:class:`mergekit_kinship.merge_observer.KinshipSink`).

tests/test_merge_hook.py fails loudly when a mergekit release changes any of this: the names,
signatures and task fields used here, the source of the functions mirrored (hashes in
:data:`MIRRORED_SOURCES`), and an end-to-end check that the weights stay byte-identical.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import tqdm
import transformers
from mergekit import merge as mergekit_merge
from mergekit.architecture import get_architecture_info
from mergekit.card import generate_card
from mergekit.common import ModelReference, dtype_from_name
from mergekit.graph import Executor, Task
from mergekit.io.tasks import GatherTensors, LoaderCache, LoadTensor, SaveTensor
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.multigpu_executor import MultiGPUExecutor
from mergekit.plan import MergePlanner
from mergekit.tokenizer import TokenizerInfo

LOG = logging.getLogger(__name__)

# sha256 (first 16 hex digits) of the source of each mergekit function this module mirrors or relies on, as of 0.1.5;
# tests/test_merge_hook.py compares them with the installed mergekit.
MIRRORED_SOURCES = {
    "mergekit.merge.run_merge": "4456933bae68952d",
    "mergekit.io.tasks.LoadTensor._resolve_name": "355c3893777d24a3",
    "mergekit.io.tasks.LoadTensor.execute": "910b49df50402101",
    "mergekit.io.tasks.GatherTensors.arguments": "ef703e5748598e42",
    "mergekit.io.tasks.GatherTensors.execute": "7a9315e80ad5b676",
    "mergekit.io.tasks.SaveTensor.execute": "6f1f482c8937aa9f",
    "mergekit.plan.MergePlanner.plan_tensor": "14342e40ba15bc9e",
    "mergekit.plan.MergePlanner.plan_to_disk": "8c10e5aa9f389ea4",
}


class HookUnsupported(RuntimeError):
    """The plan has a shape this module does not know (a mergekit release changed it)."""


def run_merge_observed(merge_config, out_path: str, options, config_source: Optional[str] = None,
                       observe: Optional[Callable[[list], Sequence[Task]]] = None) -> None:
    """``mergekit.merge.run_merge(merge_config, out_path, options, config_source)``, step for
    step, with ``observe(targets)`` called on the planned targets before they run: the tasks it
    returns run in the same executor, as extra targets. Their values are discarded. Writes what
    ``run_merge`` writes, byte for byte (tests/test_merge_hook.py checks it)."""
    if options.random_seed is not None:
        transformers.trainer_utils.set_seed(options.random_seed)

    if not merge_config.models and not merge_config.slices and not merge_config.modules:
        raise RuntimeError("No output requested")

    arch_info = get_architecture_info(merge_config, options)
    loader_cache = LoaderCache()
    loader_cache.setup(options=options)
    cfg_out = mergekit_merge._model_out_config(
        merge_config, arch_info, trust_remote_code=options.trust_remote_code)

    for model in (pbar := tqdm.tqdm(merge_config.referenced_models(), desc="Warmup loader cache",
                                    disable=options.quiet)):
        loader_cache.get(model)
    del pbar

    LOG.info("Planning operations")
    targets = MergePlanner(merge_config, arch_info, options=options,
                           out_model_config=cfg_out).plan_to_disk(out_path=out_path)
    if observe is not None:
        targets = list(targets) + list(observe(targets))

    if options.multi_gpu:
        executor = MultiGPUExecutor(targets=targets,
                                    storage_device=None if options.low_cpu_memory else "cpu")
    else:
        executor = Executor(targets=targets, math_device=options.device,
                            storage_device=options.device if options.low_cpu_memory else "cpu")

    tokenizer = None
    for _task, value in executor.run(quiet=options.quiet):
        if isinstance(value, TokenizerInfo):
            tokenizer = value.tokenizer

    if tokenizer:
        pad_to_multiple_of = None
        if merge_config.tokenizer and merge_config.tokenizer.pad_to_multiple_of:
            pad_to_multiple_of = merge_config.tokenizer.pad_to_multiple_of
        mergekit_merge._update_config_vocab(cfg_out, arch_info, tokenizer,
                                            pad_to_multiple_of=pad_to_multiple_of)

    LOG.info("Saving config")
    cfg_out.save_pretrained(out_path)

    if options.write_model_card:
        if not config_source:
            config_source = merge_config.to_yaml()
        card_md = generate_card(config=merge_config, config_yaml=config_source,
                                name=os.path.basename(out_path))
        with open(os.path.join(out_path, "README.md"), "w", encoding="utf-8") as fp:
            fp.write(card_md)
        with open(os.path.join(out_path, "mergekit_config.yml"), "w", encoding="utf-8") as fp:
            fp.write(config_source)

    if tokenizer is not None:
        LOG.info("Saving tokenizer")
        mergekit_merge._set_chat_template(tokenizer, merge_config)
        tokenizer.save_pretrained(out_path, safe_serialization=True)
    else:
        if options.copy_tokenizer:
            try:
                mergekit_merge._copy_tokenizer(merge_config, out_path, options=options)
            except Exception as e:
                LOG.error("Failed to copy tokenizer. The merge was still successful, just copy it "
                          "from somewhere else.", exc_info=e)
        elif merge_config.chat_template:
            LOG.warning("Chat template specified but no tokenizer found. Chat template will not "
                        "be saved.")

    mergekit_merge._copy_tagalong_files(merge_config, out_path,
                                        files=arch_info.tagalong_files or [], options=options)

    if getattr(arch_info, "post_fill_parameters", False):
        from mergekit.scripts.fill_missing_params import copy_and_fill_missing_params

        logging.info(f"Filling missing parameters from base model {arch_info.post_fill_parameters} "
                     "into new directory")
        copy_and_fill_missing_params(base_model_repo_id=arch_info.post_fill_parameters,
                                     sub_model_dir=out_path)
        logging.info("Deleting initial merge directory: " + out_path)
        shutil.rmtree(out_path)


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor of the plan: the tasks that load, merge and save it."""

    name: str
    weight: Any  # mergekit WeightInfo of the output tensor
    merge: ExecuteMergeMethodTask
    gather: GatherTensors
    loads: dict  # ModelReference -> the LoadTensor the gather runs for it
    reshaped_vocab: bool  # the merge sees a re-ordered (tokenizer) or cut vocabulary
    out_dtype: Optional[torch.dtype]  # SaveTensor's cast (None: as merged)
    label: str  # the schedule's group label of this tensor's tasks


def planned_tensors(targets: Sequence[Task]) -> list[PlannedTensor]:
    """Every tensor ``plan_to_disk``'s targets save, in plan order. Raises
    :class:`HookUnsupported` if the plan's shape is not mergekit 0.1.5's."""
    out = []
    for task in targets:
        if not isinstance(task, SaveTensor):
            continue
        merge = task.tensor_task
        if not isinstance(merge, ExecuteMergeMethodTask):
            raise HookUnsupported(f"tensor {task.tensor_name} is saved from a "
                                  f"{type(merge).__name__}, not an ExecuteMergeMethodTask")
        inner = merge.gather_tensors
        gather = inner if isinstance(inner, GatherTensors) else getattr(inner, "gather_tensors", None)
        if not isinstance(gather, GatherTensors):
            raise HookUnsupported(f"tensor {task.tensor_name} is merged from a "
                                  f"{type(inner).__name__} this hook does not know")
        loads = {}
        for load in gather.arguments().values():
            if not isinstance(load, LoadTensor):
                raise HookUnsupported(f"GatherTensors of {task.tensor_name} runs a "
                                      f"{type(load).__name__}, not a LoadTensor")
            loads[load.model] = load
        out.append(PlannedTensor(
            name=task.tensor_name, weight=merge.output_weight, merge=merge, gather=gather,
            loads=loads, reshaped_vocab=inner is not gather,
            out_dtype=dtype_from_name(task.dtype), label=task.group_label() or ""))
    return out


def parse_model(reference: str) -> ModelReference:
    """A model reference as mergekit reads one in a config (path, ``org/name@rev``, ``+lora``)."""
    return ModelReference.parse(reference)


def model_index(model: ModelReference):
    """mergekit's tensor index of ``model`` (opens it through the loader cache, as a merge does):
    ``tensor_paths`` (name -> shard file) and ``base_path``."""
    return LoaderCache().get(model).index


def resolved_name(load: LoadTensor) -> Optional[str]:
    """The tensor ``load`` reads from its model's files: its name, else the first alias or tied
    name present (``LoadTensor._resolve_name``'s rule), else None."""
    paths = model_index(load.model).tensor_paths
    for name in [load.tensor, *(load.aliases or ()), *(load.tied_names or ())]:
        if name in paths:
            return name
    return None


def shard_file(model: ModelReference, name: str) -> str:
    index = model_index(model)
    return os.path.join(index.base_path, index.tensor_paths[name])


def load_cast(load: LoadTensor) -> Optional[torch.dtype]:
    """The dtype ``load`` casts the stored tensor to (None: kept as stored)."""
    return dtype_from_name(load.dtype)


def load_as_stored(model: ModelReference, name: str, device: Optional[str]) -> LoadTensor:
    """A task loading ``name`` of ``model`` exactly as stored (no cast, no alias)."""
    return LoadTensor(model=model, tensor=name, dtype=None, device=device)


class KinshipObservation(Task[None]):
    """Hands one output tensor's loaded inputs (``gathered``: the plan's own ``GatherTensors``),
    any ``extras`` (tensors loaded for kinship only) and the merged result to ``sink.submit``.

    Runs after the merge task in the same executor, under the tensor's group label, so the
    schedule keeps one tensor's tasks together; returns ``None``.
    """

    sink: Any
    index: int
    label: str
    gathered: GatherTensors
    merged: Task
    extras: tuple[tuple[str, Task], ...] = ()

    def arguments(self) -> dict[str, Task]:
        return {"gathered": self.gathered, "merged": self.merged, **dict(self.extras)}

    def execute(self, gathered, merged, **extras) -> None:
        self.sink.submit(self.index, gathered, merged, extras)
        return None

    def group_label(self) -> Optional[str]:
        return self.label

    def priority(self) -> int:
        return 500  # after SaveTensor (1000) is fine: the merged tensor is alive until both ran
