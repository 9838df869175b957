"""Model FLOPs of a BERT pretraining step and the model-FLOPs utilisation (MFU) they give.

MFU is model FLOPs per second over the GPU's dense bf16 peak. The model FLOPs of one sequence:

    6 x (parameters excluding embeddings) x seq    forward (2) + backward (4) per weight and token
  + 12 x layers x hidden x seq^2                   attention scores and weighted sum, fwd + bwd
  + 6 x hidden x vocab x masked                    the MLM decoder, on predicted positions only

counted on the padded length ``seq``: the work the model must do, not what an implementation
chooses to skip or repeat (recomputation under activation checkpointing is not counted).
"""

from __future__ import annotations

from bertpt.model.bert import BertConfig

FORMULA = (
    "model FLOPs/seq = 6 x non-embedding params x seq + 12 x layers x hidden x seq^2 "
    "+ 6 x hidden x vocab x masked"
)

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, matched
# against torch.cuda.get_device_name() in this order (the first substring that matches).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L4", 121e12),
)


def non_embedding_params(config: BertConfig) -> int:
    """Parameters of BertForPreTraining outside ``bert.embeddings`` (the decoder is tied to it)."""
    H, I = config.hidden_size, config.intermediate_size  # noqa: E741
    layer = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H  # Q K V O, FFN, 2 LayerNorms
    pooler_and_nsp = (H * H + H) + (2 * H + 2) if config.nsp_head else 0  # RoBERTa: none
    mlm_head = (H * H + H) + 2 * H + config.vocab_size  # transform, its LayerNorm, decoder bias
    return config.num_hidden_layers * layer + pooler_and_nsp + mlm_head


def flops_per_sequence(config: BertConfig, seq_len: int, masked: float) -> float:
    """Training FLOPs of one sequence of (padded) length ``seq_len`` with ``masked`` predictions."""
    H, L = config.hidden_size, config.num_hidden_layers
    dense = 6 * non_embedding_params(config) * seq_len
    attention = 12 * L * H * seq_len**2
    decoder = 6 * H * config.vocab_size * masked
    return float(dense + attention + decoder)


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name; None when it is not in the table."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def mfu(seq_per_s: float, config: BertConfig, seq_len: int, masked: float, peak: float) -> float:
    return seq_per_s * flops_per_sequence(config, seq_len, masked) / peak
