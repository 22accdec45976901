"""Create and fine-tune the tiny Llama models of the zoo's families.

Contract: float32 weights on CPU; each call is bit-reproducible for a given seed because the data
order comes from a seeded :class:`random.Random`, the initialisation from ``torch.manual_seed`` and
the builder runs torch single-threaded (:func:`single_threaded`). Memory is a few MB per model.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import asdict, dataclass

from mergekit_kinship.zoo.skills import held_out_prompts, training_stream

# Longest text is "rev abcde=edcba" (15 characters); one slot spare. Every skill's texts fit (a
# test checks), and changing it would change every family's weights.
SEQ_LEN = 16


@dataclass(frozen=True)
class Shape:
    """Size of every model in the family (they share one architecture, as merging requires)."""

    hidden: int = 96
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 192
    max_positions: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def new_model(shape: Shape, vocab_size: int, pad_id: int, eos_id: int, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` (float32, untied head so mergekit sees both)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _batch(texts: list[tuple[str, str]], tokenizer):
    """Token ids padded to SEQ_LEN; the loss sees only the answer characters."""
    import torch

    ids = torch.full((len(texts), SEQ_LEN), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(texts):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        seq = p + a
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(p) : len(seq)] = torch.tensor(a)
    return ids, mask, labels


def train(model, tokenizer, skills: list[str], *, steps: int, lr: float, batch: int, seed: int,
          replay: float = 0.0, rehearsal: tuple[str, ...] = (), progress=None) -> list[float]:
    """Fine-tune ``model`` in place on ``skills`` (uniform mix); returns the loss of every step.

    ``replay`` is the fraction of texts drawn from ``rehearsal``, the base's training mix (see
    :func:`~mergekit_kinship.zoo.skills.training_stream`). AdamW with a 10 % linear warm-up and
    linear decay to zero; no held-out evaluation prompt of any skill of the zoo is trained on.
    ``progress`` is an optional tqdm bar advanced once per step.
    """
    import torch

    rng = random.Random(f"train-{seed}-{'+'.join(skills)}")
    stream = training_stream(skills, rng, held_out_prompts(), replay, rehearsal)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    losses = []
    for _ in range(steps):
        ids, mask, labels = _batch([next(stream) for _ in range(batch)], tokenizer)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
    model.eval()
    return losses


@contextlib.contextmanager
def single_threaded():
    """Run torch on one thread: bit-identical results and fair to other processes on small CPUs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
