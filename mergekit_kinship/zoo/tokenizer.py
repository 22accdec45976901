"""A character-level tokenizer for the zoo's families, saved beside every model.

One token per character (a ``WordLevel`` model behind a ``Split("", "isolated")`` pre-tokenizer),
wrapped in :class:`transformers.PreTrainedTokenizerFast` so that transformers, mergekit's
``copy_tokenizer`` and lm-eval's ``hf`` backend load it from the model folder with no network.
No BOS is added: a prompt's first character is the first token, so lm-eval's context/continuation
split falls exactly on the ``=`` of each item.
"""

from __future__ import annotations

from mergekit_kinship.zoo.items import ALPHABET

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
SPECIALS = [PAD, UNK, EOS]


def vocabulary() -> dict[str, int]:
    """Token -> id; specials first, then :data:`~mergekit_kinship.zoo.items.ALPHABET` in order."""
    return {tok: i for i, tok in enumerate([*SPECIALS, *ALPHABET])}


def build_tokenizer():
    """A fresh :class:`~transformers.PreTrainedTokenizerFast` over :func:`vocabulary`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    core.decoder = decoders.Fuse()  # decode "dcba", not "d c b a"
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
    )
