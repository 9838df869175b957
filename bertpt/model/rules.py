"""What makes a model shape valid: the rules of ``bertpt.model.bert.BertConfig``, without torch.

``BertConfig.__post_init__`` and the config check (``bertpt.training.config_check``, which runs
before torch is imported) both call :func:`check_model`, so a ``model`` group the check passes is
one ``BertConfig`` builds. A broken rule is one :class:`~bertpt.common.errors.UserError`,
``<what> — <fix>``, naming the value as its caller spells it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bertpt.common.errors import UserError

# The names of the activations bertpt.model.bert implements (its ACTIVATIONS maps them to
# functions): Hugging Face's, "gelu" the exact erf GELU, "gelu_new" its tanh approximation
# (GPT-2's).
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")
# HF's model_type of each variant of the one encoder: BERT (pooler, next-sentence head) or RoBERTa.
MODEL_TYPES = ("bert", "roberta")
SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Fields that must be positive, each with BERT's value for the message.
SCALES = {"initializer_range": 0.02, "layer_norm_eps": 1e-12}
# How a message names a value by default: as BertConfig's argument. The config check names the
# override that sets it instead ("model.{name}={value!r}").
ARGUMENT = "{name} ({value!r})"


def position_offset(model_type: str, pad_token_id: int) -> int:
    """The position id of a sequence's first token: 0, or RoBERTa's pad_token_id + 1 (HF's
    create_position_ids_from_input_ids: 514 position embeddings for 512 tokens)."""
    return pad_token_id + 1 if model_type == "roberta" else 0


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _integer(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_model(fields: Mapping[str, Any], named: str = ARGUMENT) -> None:
    """Raise UserError for the first BertConfig field in ``fields`` that breaks a rule; ``named``
    formats a value for the message from its ``name`` and ``value``. A field left out is not
    checked (BertConfig's default, which passes, stands in for it), nor a rule between two
    fields one of which is left out; other keys are not read."""

    def name(field: str) -> str:
        return named.format(name=field, value=fields[field])

    def check(field: str, ok: Callable[[Any], bool], what: str, fix: str) -> None:
        if field in fields and not ok(fields[field]):
            raise UserError(f"{name(field)} {what} — {fix}")

    for field in SIZES:
        check(field, _positive_int, "must be a positive integer", "use an integer of at least 1")
    if "hidden_size" in fields and "num_attention_heads" in fields:
        hidden, heads = fields["hidden_size"], fields["num_attention_heads"]
        if hidden % heads:
            raise UserError(
                f"{name('hidden_size')} is not divisible by {name('num_attention_heads')} — pick "
                f"a head count that divides {hidden} (e.g. {hidden // 64 or 1}) or another size"
            )
    check(
        "hidden_act",
        lambda act: act in ACTIVATIONS,
        f"is not supported: use one of {', '.join(ACTIVATIONS)}",
        "BERT and RoBERTa use gelu",
    )
    check(
        "model_type",
        lambda model_type: model_type in MODEL_TYPES,
        f"must be one of {', '.join(MODEL_TYPES)}",
        "bertpt builds the encoder as BERT or as RoBERTa only",
    )
    for field in DROPOUTS:
        check(
            field,
            lambda p: _number(p) and 0.0 <= p < 1.0,
            "must be in [0, 1)",
            "use a dropout probability such as BERT's 0.1",
        )
    for field, bert in SCALES.items():
        check(
            field,
            lambda x: _number(x) and x > 0,
            "must be a positive number",
            f"use a value such as BERT's {bert}",
        )
    check(
        "unpad",
        lambda unpad: unpad in (True, False, "auto"),
        "is not an option",
        "use auto (unpadded on a GPU), true or false",
    )
    if "vocab_size" in fields:
        vocab = fields["vocab_size"]
        check(
            "pad_token_id",
            lambda pad: _integer(pad) and 0 <= pad < vocab,
            f"is not an id of the vocabulary [0, {vocab})",
            "use the tokenizer's padding id",
        )
