"""BERT for pretraining (masked LM + next sentence prediction), in plain PyTorch; with
``model_type="roberta"`` the same encoder as RoBERTa (masked LM only).

Module and parameter names follow Hugging Face `transformers` (`modeling_bert.py`) so that
`BertForPreTraining.state_dict()` has exactly the keys of `transformers.BertForPreTraining` and a
checkpoint maps across without a single rename. What HF carries for other uses (cross-attention,
KV cache, head masks, attention outputs) is left out. Imports torch, the standard library,
``bertpt.model.kernels`` (the fused and unpadded pieces) and ``bertpt.model.rules`` (BertConfig's
validation, shared with the config check) only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bertpt.model.kernels import (
    IGNORE_INDEX,
    DecoderCrossEntropy,
    Dropout,
    Unpadding,
    jagged_attention,
    padded_rows,
)

# BertConfig's rules, shared with the config check (torch-free).
from bertpt.model.rules import check_model, position_offset

# HF's ACT2FN names, those of bertpt.model.rules.ACTIVATIONS, which BertConfig accepts; "gelu" is
# the exact erf GELU, "gelu_new" the tanh approximation (GPT-2's).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}

# BertConfig fields that change only the speed: not written to a HF config.json.
SPEED_FIELDS = ("gradient_checkpointing", "unpad")


@dataclass
class BertConfig:
    """Model shape and regularisation; HF `BertConfig` field names and defaults (BERT-base)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # "roberta": RoBERTa is this encoder with positions numbered from pad_token_id + 1 (HF's
    # create_position_ids_from_input_ids: 514 position embeddings for 512 tokens), no pooler and
    # no next-sentence head. Module names stay BERT's; bertpt.model.hf renames the checkpoint keys.
    model_type: str = "bert"
    pad_token_id: int = 0
    # Speed only, never the result; not part of a HF config.json (SPEED_FIELDS).
    # Recompute each layer's activations in backward (saves memory, costs ~1/3 more compute).
    gradient_checkpointing: bool = False
    # Drop the padding from the compute (see Unpadding): True, False, or "auto" (on a GPU only:
    # a CPU has no variable-length attention kernel, and the padded path is the reference).
    unpad: bool | str = "auto"

    def __post_init__(self) -> None:
        check_model(vars(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BertConfig:
        """Build from a flat mapping (a Hydra `model` group, a checkpoint's hyper-parameters).

        Unknown keys are an error rather than silently dropped: a typo such as `hiden_size` would
        otherwise train the default model.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown BertConfig keys {unknown}: valid keys are {sorted(known)}")
        return cls(**d)

    @property
    def position_offset(self) -> int:
        """The position id of a sequence's first token: 0, or RoBERTa's pad_token_id + 1."""
        return position_offset(self.model_type, self.pad_token_id)

    @property
    def nsp_head(self) -> bool:
        """Whether the model has BERT's pooler and next-sentence head (RoBERTa has neither)."""
        return self.model_type == "bert"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        # RoBERTa's padding takes the position pad_token_id, a zero row that never trains (HF).
        self.offset, self.pad_token_id = config.position_offset, config.pad_token_id
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings,
            config.hidden_size,
            padding_idx=config.pad_token_id if self.offset else None,
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # CamelCase `LayerNorm` keeps the checkpoint keys of the original TF/HF BERT.
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        unpadding: Unpadding | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, H); with `unpadding`, the real tokens' rows only, (K, H)."""
        seq_len = input_ids.size(1)
        if seq_len + self.offset > self.position_embeddings.num_embeddings:
            numbered = f", numbered from {self.offset}" if self.offset else ""
            raise ValueError(
                f"sequence length ({seq_len}) exceeds max_position_embeddings "
                f"({self.position_embeddings.num_embeddings}{numbered}): shorten the sequences "
                "or use a model with more position embeddings"
            )
        if unpadding is not None:
            input_ids = unpadding.gather(input_ids)  # (K,)
            token_type_ids = None if token_type_ids is None else unpadding.gather(token_type_ids)
            # A real token's column in its right-padded row is its position (RoBERTa's: + offset,
            # HF's create_position_ids_from_input_ids).
            positions = self.position_embeddings(unpadding.tokens % seq_len + self.offset)  # (K, H)
        elif self.offset:  # RoBERTa: real tokens at pad+1, pad+2, ..., padding at pad (as HF)
            real = input_ids != self.pad_token_id  # (B, T)
            positions = self.position_embeddings(torch.cumsum(real, 1) * real + self.pad_token_id)
        else:  # 0..T-1 in every row: a slice of the table replaces an index lookup
            positions = self.position_embeddings.weight[:seq_len]  # (T, H)
        x = self.word_embeddings(input_ids) + positions  # (B, T, H) or (K, H)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


# How tokens see each other in a layer: a (B, 1, 1, T) key mask, None (every key), or the
# Unpadding of the real tokens (unpadded path).
Attention = torch.Tensor | Unpadding | None


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        # Its p goes to SDPA; on a CPU's training step the mask is its own (see forward).
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention: Attention = None) -> torch.Tensor:
        """(B, T, H) with a (B, 1, 1, T) bool mask, True where a key may be attended to (or
        None: every key); or the unpadded real tokens (K, H) with their Unpadding."""
        # Separate query/key/value parameters keep HF's checkpoint keys; one matmul on the
        # concatenated weights is faster than three small ones (the copy is 3*H*H, cheap).
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))  # (3H, H)
        bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))  # (3H,)
        qkv = F.linear(hidden_states, weight, bias)  # (..., 3H)
        dropout_p = self.dropout.p if self.training else 0.0
        if isinstance(attention, Unpadding):
            K, H = hidden_states.shape
            # A jagged tensor's values must be contiguous for SDPA: (3, K, nh, hs), split there.
            qkv = qkv.view(K, 3, self.num_heads, self.head_size).transpose(0, 1).contiguous()
            return jagged_attention(qkv, attention, dropout_p)
        B, T, H = hidden_states.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4).unbind(0)
        explicit = dropout_p or (q.dtype == torch.bfloat16 and self.training)
        if explicit and q.device.type == "cpu" and not torch.compiler.is_compiling():
            # SDPA trains on a CPU with its math path, the same steps as these, but draws the
            # dropout mask element by element: bertpt's Dropout draws it 4x faster. In bf16
            # (bf16-mixed on a CPU with AMX) these two products train a mini step ~40% faster
            # than SDPA's CPU flash kernel (195 against 140 seq/s), with or without dropout.
            scores = (q * self.head_size**-0.5) @ k.transpose(-2, -1)  # (B, nh, T, T)
            if attention is not None:
                scores = scores.masked_fill(~attention, float("-inf"))
            y = self.dropout(scores.softmax(-1)) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(B, T, H)  # from (B, nh, T, hs)


class _DenseAddNorm(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm: the post-LN residual of the original BERT.

    Hugging Face keeps two copies (BertSelfOutput, BertOutput) that differ only in input width;
    both subclasses below keep their names and checkpoint keys.
    """

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertSelfOutput(_DenseAddNorm):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.hidden_size)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention: Attention = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) or unpadded (K, H) -> the same shape, or (R, H) for the rows `keep` (R,) of
        the flattened tokens (B * T, or K)."""
        context = self.self(hidden_states, attention)  # every query
        if keep is not None:  # what follows attention is per position: skip unwanted rows
            context = context.flatten(0, -2)[keep]
            hidden_states = hidden_states.flatten(0, -2)[keep]
        return self.output(context, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))  # (B, T, I)


class BertOutput(_DenseAddNorm):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention: Attention = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention, keep)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention: Attention = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) or unpadded (K, H) -> the same; with `keep`, the last layer returns only
        those rows, (R, H)."""
        # The token count (unpadded), sequence length (padded) and kept rows vary from batch to
        # batch: compiled layers (trainer.compile) take them as symbolic sizes, not recompiling.
        # Each layer's input is marked: it is the previous layer's output.
        unpadded = isinstance(attention, Unpadding)
        if attention is not None and not unpadded:
            torch._dynamo.maybe_mark_dynamic(attention, 3)
        if keep is not None:
            torch._dynamo.maybe_mark_dynamic(keep, 0)
        for i, layer in enumerate(self.layer):
            torch._dynamo.maybe_mark_dynamic(hidden_states, 0 if unpadded else 1)
            args = (hidden_states, attention, keep if i == len(self.layer) - 1 else None)
            if self.gradient_checkpointing and self.training:
                # Non-reentrant checkpointing replays dropout with the saved RNG state, so the
                # gradients equal those of the plain forward.
                # The recompute check reads each saved tensor's shape, which torch's nested
                # tensors (unpadded path) do not have: the check is off there.
                check = "none" if unpadded else "default"
                hidden_states = checkpoint(
                    layer, *args, use_reentrant=False, determinism_check=check
                )
            else:
                hidden_states = layer(*args)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_states: torch.Tensor) -> torch.Tensor:
        """The [CLS] rows (B, H) of the last layer -> (B, H)."""
        return torch.tanh(self.dense(cls_states))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        # RoBERTa's LM head takes the exact GELU whatever the encoder's activation (HF's
        # RobertaLMHead), BERT's its hidden_act.
        act = "gelu" if config.model_type == "roberta" else config.hidden_act
        self.transform_act_fn = ACTIVATIONS[act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        # The decoder weight is tied to the word embeddings by BertForPreTraining; the output-only
        # bias is one tensor under two keys (`bias`, `decoder.bias`), as in HF checkpoints.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))  # (..., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2) if config.nsp_head else None

    def forward(
        self, sequence_output: torch.Tensor, pooled_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class BertModel(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if config.nsp_head else None

        self.unpad = config.unpad
        self.flash_heads = (config.hidden_size // config.num_attention_heads) % 8 == 0

    def unpads(self, device: torch.device | str) -> bool:
        """Whether a padded batch on `device` takes the unpadded path (config.unpad). `auto`
        needs a head size that FlashAttention takes (a multiple of 8, as every preset's 64):
        torch's other jagged kernels are slower than the padded path."""
        return self.unpad is True or (
            self.unpad == "auto" and torch.device(device).type == "cuda" and self.flash_heads
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        unpadding: Unpadding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (sequence_output (B, T, H), pooled_output (B, H), None without a pooler).

        `attention_mask` (B, T) is 1 for real tokens and 0 for padding (right-padded). Padded
        keys are hidden from every query. On the padded path padded query rows are computed (as
        in HF) and unused; on the unpadded path (`unpadding`, or config.unpad) they are not
        computed and come back as zeros. `keep` (R,): the rows that the last layer computes
        (all pretraining needs), every [CLS] row first where there is a pooler: flat indices
        into B * T (0, T, 2T, ...) on the padded path, into the real tokens
        (unpadding.offsets[:-1], ...) on the unpadded one; sequence_output is then (R, H).
        """
        B = len(input_ids)
        if unpadding is None and attention_mask is not None and self.unpads(attention_mask.device):
            unpadding = Unpadding.of(attention_mask)
        if unpadding is None:
            mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
            sequence_output = self.encoder(self.embeddings(input_ids, token_type_ids), mask, keep)
            cls_states = sequence_output[:, 0] if keep is None else sequence_output[:B]
            return sequence_output, self._pool(cls_states)
        hidden = self.encoder(
            self.embeddings(input_ids, token_type_ids, unpadding), unpadding, keep
        )
        if keep is not None:
            return hidden, self._pool(hidden[:B])
        cls_states = hidden[unpadding.offsets[:-1]]
        return unpadding.scatter(hidden, B), self._pool(cls_states)

    def _pool(self, cls_states: torch.Tensor) -> torch.Tensor | None:
        """(B, H) [CLS] rows -> (B, H); None for a model without a pooler (RoBERTa)."""
        return None if self.pooler is None else self.pooler(cls_states)


class BertPreTrainingOutput:
    """What ``BertForPreTraining.forward`` returns.

    ``prediction_logits``: without ``labels``, (B, T, V). With ``labels``, (N, V): one row per
    position whose label is not -100, in row-major order, i.e. aligned with
    ``labels[labels != -100]`` (N may be 0). Training never needs those logits (the loss and
    ``mlm_predictions`` come from a fused kernel), so with labels they are computed on first
    access, with autograd, from the head's hidden states and the decoder weights of that moment:
    read them before an optimizer step changes the weights.
    """

    def __init__(
        self,
        loss: torch.Tensor | None,  # mlm_loss + nsp_loss, over those whose labels were given
        mlm_loss: torch.Tensor | None,
        nsp_loss: torch.Tensor | None,
        seq_relationship_logits: torch.Tensor | None,  # (B, 2); None without an NSP head
        prediction_logits: torch.Tensor | Callable[[], torch.Tensor],
        mlm_predictions: torch.Tensor | None = None,  # (N,) argmax ids, with labels
        mlm_labels: torch.Tensor | None = None,  # (N,) their labels: labels[labels != -100]
    ) -> None:
        self.loss, self.mlm_loss, self.nsp_loss = loss, mlm_loss, nsp_loss
        self.seq_relationship_logits = seq_relationship_logits
        self.mlm_predictions, self.mlm_labels = mlm_predictions, mlm_labels
        self._logits = prediction_logits

    @property
    def prediction_logits(self) -> torch.Tensor:
        if callable(self._logits):
            self._logits = self._logits()
        return self._logits


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.apply(self._init_weights)
        # The tied decoder (a Linear, visited after the embeddings) overwrote the padding row.
        with torch.no_grad():
            self.bert.embeddings.word_embeddings.weight[config.pad_token_id].zero_()

    def set_speed(self, **options: Any) -> None:
        """Set SPEED_FIELDS (gradient_checkpointing, unpad) of a built model, e.g. one loaded
        from a Hugging Face folder, whose config.json has none."""
        self.config = dataclasses.replace(self.config, **options)  # checked by __post_init__
        self.bert.encoder.gradient_checkpointing = self.config.gradient_checkpointing
        self.bert.unpad = self.config.unpad

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        unpadding: Unpadding | None = None,
    ) -> BertPreTrainingOutput:
        """`unpadding`: Unpadding.of(attention_mask, labels), made by the caller where that is
        cheaper (on the host); made here when config.unpad asks for it and it is not given."""
        mlm_loss = nsp_loss = keep = None
        unpadded = attention_mask is not None and self.bert.unpads(attention_mask.device)
        if unpadding is None and labels is not None and unpadded:
            unpadding = Unpadding.of(attention_mask, labels)
        if labels is not None:
            # Only ~15% of positions are predicted: the last layer's feed-forward, the head
            # transform and the vocabulary projection (which dominates small models' cost)
            # run on those rows and the [CLS] rows only.
            B, T = input_ids.shape
            if unpadding is None:
                predicted = (labels != IGNORE_INDEX).flatten().nonzero().squeeze(1)  # (N,)
                cls_rows = torch.arange(0, B * T, T, device=input_ids.device)  # (B,)
                targets = labels.flatten()[predicted]  # (N,) row-major
            else:
                predicted, cls_rows = unpadding.predicted, unpadding.offsets[:-1]
                targets = unpadding.gather(labels)[predicted]
            cls_rows = cls_rows if self.config.nsp_head else cls_rows[:0]  # no pooler: none
            keep = padded_rows(torch.cat((cls_rows, predicted)), self.cls.predictions.decoder)
        sequence_output, pooled_output = self.bert(
            input_ids, token_type_ids, attention_mask, keep, unpadding
        )
        seq_relationship_logits = None
        if pooled_output is not None:
            seq_relationship_logits = self.cls.seq_relationship(pooled_output)  # (B, 2)

        head = self.cls.predictions
        mlm_predictions = None
        if labels is None:
            prediction_logits = head(sequence_output)  # (B, T, V)
        else:
            hidden = head.transform(sequence_output[len(cls_rows) :])  # (N + padding, H)
            if targets.numel():
                weight, ws = head.decoder.weight, self._workspace(len(hidden), hidden)
                want_grad = torch.is_grad_enabled() and (
                    hidden.requires_grad or weight.requires_grad or head.bias.requires_grad
                )
                mlm_loss, mlm_predictions = DecoderCrossEntropy.apply(
                    hidden, weight, head.bias, targets, ws, want_grad
                )
            else:
                # No masked token: a zero that still reaches every parameter, so DDP's gradient
                # buckets fill and the mean over batches is not poisoned by a NaN.
                mlm_loss = head.decoder(hidden).sum() * 0.0
                mlm_predictions = targets
            hidden = hidden[: len(targets)]

            device = hidden.device.type
            autocast = torch.is_autocast_enabled(device)
            low = torch.get_autocast_dtype(device)

            def prediction_logits() -> torch.Tensor:  # (N, V), in the precision of this forward
                with torch.autocast(device, dtype=low, enabled=autocast):
                    return head.decoder(hidden)

        if next_sentence_label is not None:
            if seq_relationship_logits is None:
                raise ValueError("next_sentence_label given, but the model has no NSP head")
            nsp_loss = F.cross_entropy(
                seq_relationship_logits.float(), next_sentence_label.view(-1)
            )

        if mlm_loss is not None and nsp_loss is not None:
            loss = mlm_loss + nsp_loss
        else:
            loss = mlm_loss if mlm_loss is not None else nsp_loss
        return BertPreTrainingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            seq_relationship_logits=seq_relationship_logits,
            prediction_logits=prediction_logits,
            mlm_predictions=mlm_predictions,
            mlm_labels=None if labels is None else targets,
        )

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half(): rebuilt on the next step
        self.__dict__.pop("_logits_workspace", None)
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:  # pickling and deepcopy (an EMA copy) skip it
        state = dict(super().__getstate__())
        state.pop("_logits_workspace", None)
        return state

    def _workspace(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """An fp32 buffer for (rows, V) logits, kept across steps and grown when too small."""
        need = rows * self.config.vocab_size
        ws = getattr(self, "_logits_workspace", None)
        # A buffer made under torch.inference_mode (validation first) cannot be written outside it.
        stale = ws is not None and ws.is_inference() and not torch.is_inference_mode_enabled()
        if ws is None or stale or ws.numel() < need or ws.device != like.device:
            # 25% headroom: the number of masked positions varies from batch to batch.
            ws = torch.empty(need + need // 4, dtype=torch.float32, device=like.device)
            self._logits_workspace = ws
        return ws


def num_parameters(model: nn.Module) -> int:
    """Parameter count, each tied tensor once."""
    return sum(p.numel() for p in model.parameters())
