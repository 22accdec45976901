"""Tiny real models and deterministic stand-ins for the evolution tests.

``build_tiny_family(folder)`` saves a tiny random Llama base and three children with
``save_pretrained`` (each child = base + its own "skill" direction), plus a char-level tokenizer.
``stand_in_evaluate`` scores a real model folder from its weights: for skill j, the projection of
the model's delta on the skill direction u_j, through a concave curve (1 - exp(-2 p)). A child
masters its own skill only; a merge that keeps half of two skills scores higher on the average,
as merges do on the built-in family. It reads the directions from ``EVOLVE_TEST_SKILLS``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

SKILLS = ("skill0", "skill1", "skill2")


def _tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", *"abcdefghij0123456789+= "])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>")


def load_tensors(folder) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def build_tiny_family(folder: Path, n_children: int = 3, seed: int = 0) -> dict[str, Path]:
    """Base + ``n_children`` children in ``folder``; returns name -> path. ~2 s on one core."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=26, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False)
    tok = _tokenizer()
    base = LlamaForCausalLM(config).to(torch.float32)
    paths = {"base": folder / "base"}
    base.save_pretrained(paths["base"])
    tok.save_pretrained(paths["base"])
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    # Skill directions: random per tensor; child i carries u_i plus a little of u_{i+1}, so
    # kinship between children differs (some pairs are more related than others).
    skills = {f"u{j}.{k}": torch.randn(v.shape, generator=gen) * 0.02 for j in range(n_children)
              for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in skills.items()}, str(folder / "skills.safetensors"))
    mix = [0.0, 0.35, 0.1, 0.2]
    for i in range(n_children):
        child = LlamaForCausalLM(config)
        sd = {k: state[k] + skills[f"u{i}.{k}"]
              + mix[i % len(mix)] * skills[f"u{(i + 1) % n_children}.{k}"] for k in state}
        child.load_state_dict(sd)
        name = f"child{i}"
        paths[name] = folder / name
        child.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def stand_in_evaluate(model_path, settings):
    """EvaluationResult from the weights alone (deterministic, ~10 ms). See module docstring."""
    from safetensors.torch import load_file

    from mergekit_kinship.evaluation.scores import EvaluationResult, fitness

    started = time.perf_counter()
    family = Path(os.environ["EVOLVE_TEST_SKILLS"])
    skills = load_file(str(family / "skills.safetensors"))
    base = load_tensors(family / "base")
    model = load_tensors(model_path)
    scores = {}
    for j, task in enumerate(settings.tasks):
        dot = norm = 0.0
        for k, b in base.items():
            u = skills[f"u{j}.{k}"].double()
            dot += float(((model[k].double() - b.double()) * u).sum())
            norm += float((u * u).sum())
        scores[task] = 1.0 - math.exp(-2.0 * max(dot / norm, 0.0))
    return EvaluationResult(scores=scores, fitness=fitness(scores, settings),
                            lm_eval_version="stand-in", seconds=time.perf_counter() - started)


ITEMS_PER_TASK = 60


def stand_in_item_evaluate(model_path, settings, items=None):
    """Per-item results from the weights alone, for staged evaluation (deterministic, ~10 ms).

    Each task has :data:`ITEMS_PER_TASK` items; item i of a task has a difficulty (the task's
    own seeded permutation of evenly spaced levels in (0, 1)). A model with skill p on the task
    (:func:`stand_in_evaluate`'s score) answers item i right when p plus its own noise for that
    item (uniform in [-0.1, 0.1], seeded by the model's skills and the item) exceeds the item's
    difficulty: better models answer more items, related models mostly the same ones, and the
    task's score is the mean over its items. ``items`` (task -> indices) scores only those."""
    import random

    from mergekit_kinship.evaluation.scores import EvaluationResult, fitness

    started = time.perf_counter()
    skill = stand_in_evaluate(model_path, settings).scores
    signature = ",".join(f"{skill[t]:.6f}" for t in settings.tasks)
    values, totals = {}, {}
    for task in settings.tasks:
        levels = [(i + 0.5) / ITEMS_PER_TASK for i in range(ITEMS_PER_TASK)]
        random.Random(f"difficulty:{task}").shuffle(levels)
        wanted = range(ITEMS_PER_TASK) if items is None else items.get(task, [])
        noise = random.Random(f"noise:{signature}:{task}")
        jitter = [noise.uniform(-0.1, 0.1) for _ in range(ITEMS_PER_TASK)]
        if wanted:
            values[task] = {i: float(skill[task] + jitter[i] > levels[i]) for i in wanted}
            totals[task] = ITEMS_PER_TASK
    scores = {t: sum(v[i] for i in sorted(v)) / len(v) for t, v in values.items()}
    return EvaluationResult(
        scores=scores, fitness=fitness(scores, settings) if len(scores) == len(settings.tasks)
        else None, lm_eval_version="stand-in", seconds=time.perf_counter() - started,
        samples={t: len(v) for t, v in values.items()}, items=values, items_total=totals)
