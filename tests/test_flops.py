"""The FLOPs formula behind every MFU figure: parameter count, terms, GPU peaks."""

from __future__ import annotations

import pytest

from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.flops import flops_per_sequence, non_embedding_params, peak_flops


@pytest.mark.parametrize(
    "config",
    [
        BertConfig(),  # BERT-base
        BertConfig(
            vocab_size=8192,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=512,
        ),
    ],
    ids=["base", "tiny"],
)
def test_non_embedding_params_count_the_model(config):
    model = BertForPreTraining(config)
    # named_parameters lists the tied decoder weight and bias once, under their owners
    counted = sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("bert.embeddings.")
    )
    assert non_embedding_params(config) == counted


def test_flops_terms():
    c = BertConfig()
    base = flops_per_sequence(c, 128, masked=0)
    assert base == 6 * non_embedding_params(c) * 128 + 12 * 12 * 768 * 128**2
    assert flops_per_sequence(c, 128, masked=20) - base == 6 * 768 * 30522 * 20
    assert 70e9 < flops_per_sequence(c, 128, masked=20) < 72e9  # BERT-base, seq 128


def test_peaks_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12 and peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("Some Future GPU") is None
