"""RoBERTa's byte-level BPE tokenizer, trained with Hugging Face ``tokenizers``.

GPT-2's byte-level pre-tokenizer (a space belongs to the word after it, ``Ġ``; every byte is in
the alphabet, so no text is ever ``<unk>``), BPE merges from ``tokenizers``' ``BpeTrainer`` and
RoBERTa's special tokens and template: ``<s>=0 <pad>=1 </s>=2 <unk>=3``, ``<mask>`` last, one
sequence as ``<s> A </s>`` and a pair as ``<s> A </s></s> B </s>``. ``<mask>`` takes the space on
its left (``lstrip``), so ``"Paris is the <mask>."`` masks the word ``Ġcapital`` would fill.

Unlike WordPiece (see :mod:`bertpt.data.wordpiece`), the library's BPE trainer is deterministic
here: it sorts the alphabet by code point, and without a continuing-subword prefix no token is
numbered in hash-map order, so ties between equally frequent pairs fall the same way in every
process (tests/test_bpe.py trains in two processes with different hash seeds).

There is no lowercasing: transformers' ``RobertaTokenizer`` rebuilds its pipeline from
``vocab``/``merges`` without a normalizer, so a lowercasing step would not survive
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MASK = "<mask>"


def train_bpe(
    sentences: Iterable[str], vocab_size: int, min_frequency: int, show_progress: bool
) -> Tokenizer:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens (``<mask>`` the last) trained on
    ``sentences``, with RoBERTa's template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # <mask> comes after the merges, as in RoBERTa's vocabulary
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS[:-1],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(sentences, trainer)
    tok.add_special_tokens([AddedToken(MASK, lstrip=True, rstrip=False, special=True)])
    # (sep, cls, trim_offsets, add_prefix_space): positional only in the bindings
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), True, False
    )
    return tok


def bpe_files(tok: Tokenizer, model_max_length: int) -> dict[str, str]:
    """The files beside ``tokenizer.json`` that make ``AutoTokenizer`` load a RoBERTa tokenizer:
    the configs, and ``vocab.json`` + ``merges.txt`` (what RoBERTa folders hold)."""
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": {"content": MASK, "lstrip": True, "rstrip": False, "normalized": False},
    }
    config = {
        "tokenizer_class": "RobertaTokenizer",
        "add_prefix_space": False,
        "trim_offsets": True,
        "errors": "replace",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))  # <mask> included
    # a merge is a [left, right] list in tokenizers >= 0.20, "left right" before
    merges = "".join((m if isinstance(m, str) else " ".join(m)) + "\n" for m in model["merges"])
    return {
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "vocab.json": json.dumps(vocab, ensure_ascii=False) + "\n",
        "merges.txt": "#version: 0.2\n" + merges,
    }
