"""The unpadded path (bertpt.model.bert.Unpadding, model.unpad) against the padded one and the
reference.

On a CPU the unpadded path's attention runs through torch's fallback for jagged tensors; on a
GPU the same call reaches FlashAttention's variable-length kernel (tests/test_gpu.py). What is
checked here is everything around that call: which rows are kept, their positions and token
types, the [CLS] and predicted rows, the gradients through the gathers, and a real run.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers  # the reference: a test dependency, missing is an error
from runs import losses_by_step, make_cfg, train_without_recompiling
from test_model import CONFIGS, TOL, make_batch, make_pair, small_config

from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.kernels import Unpadding
from bertpt.train import train


def heavily_padded(config: BertConfig) -> dict:
    """Rows of 24, 17, 9, 3, 24 and 1 real tokens: 43% of the batch is padding."""
    return make_batch(config, B=6, T=24, seed=3, lengths=[24, 17, 9, 3, 24, 1])


def unpadded_copy(model: BertForPreTraining) -> BertForPreTraining:
    twin = BertForPreTraining(dataclasses.replace(model.config, unpad=True))
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def test_packing_indexes_the_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    labels = torch.full((3, 4), -100)
    labels[0, 2] = labels[2, 0] = labels[2, 3] = 7
    p = Unpadding.of(mask, labels)
    assert p.tokens.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert p.offsets.tolist() == [0, 3, 4, 8] and p.max_len == 4 and p.min_len == 1
    # SDPA picks its kernel by the shortest and longest sequence: given, no device read.
    nested = p.to("cpu").nested(torch.zeros(8, 2, 5))  # (B, nh, j, hs)
    assert (nested._maybe_min_seqlen, nested._maybe_max_seqlen) == (1, 4)
    assert p.predicted.tolist() == [2, 4, 7]  # rows of the real tokens, row-major
    x = torch.arange(12.0).view(3, 4, 1)
    assert torch.equal(p.scatter(p.gather(x), 3), x * mask[..., None])
    labels[1, 2] = 5  # a label on a padded position
    with pytest.raises(ValueError, match="labels at padded positions"):
        Unpadding.of(mask, labels)


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s['hidden_act']}-{s['attn']}")
def test_unpadded_outputs_match_transformers(spec):
    """Real positions of the unpadded model equal transformers' (padded) outputs."""
    hf, ours, config = make_pair(spec)
    ours = unpadded_copy(ours)
    batch = heavily_padded(config)
    real = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        seq, pooled = ours.bert(**inputs)
        full = ours(**inputs)
        out = ours(**batch)
    torch.testing.assert_close(seq[real], ref.hidden_states[-1][real], **TOL)
    assert torch.count_nonzero(seq[~real]) == 0  # padded rows are not computed
    torch.testing.assert_close(pooled, hf.bert(**inputs).pooler_output, **TOL)
    torch.testing.assert_close(full.prediction_logits[real], ref.prediction_logits[real], **TOL)
    torch.testing.assert_close(full.seq_relationship_logits, ref.seq_relationship_logits, **TOL)
    predicted = batch["labels"] != -100
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[predicted], **TOL)
    assert torch.equal(out.mlm_labels, batch["labels"][predicted])
    ref_loss = hf(**batch).loss
    torch.testing.assert_close(out.loss, ref_loss, **TOL)


@pytest.mark.parametrize("given", [False, True], ids=["from-config", "unpadding-given"])
def test_unpadded_losses_and_gradients_equal_the_padded_path(given):
    """Training mode (dropout off so both draw nothing): every gradient equal to 1e-5."""
    torch.manual_seed(0)
    config = small_config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    padded = BertForPreTraining(dataclasses.replace(config, unpad=False)).train()
    # An explicit unpadding takes the unpadded path whatever config.unpad says.
    unpadded = BertForPreTraining(dataclasses.replace(config, unpad=not given)).train()
    unpadded.load_state_dict(padded.state_dict())
    batch = heavily_padded(config)
    ref = padded(**batch)
    extra = {"unpadding": Unpadding.of(batch["attention_mask"], batch["labels"])} if given else {}
    out = unpadded(**batch, **extra)
    for name in ("loss", "mlm_loss", "nsp_loss", "seq_relationship_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **TOL, msg=name)
    assert torch.equal(out.mlm_predictions, ref.mlm_predictions)
    ref.loss.backward()
    out.loss.backward()
    grads = dict(padded.named_parameters())
    for name, p in unpadded.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, **TOL, msg=name)


def test_unpad_auto_is_padded_on_a_cpu():
    model = BertForPreTraining(small_config(hidden_size=16))  # head size 8
    assert model.config.unpad == "auto" and not model.bert.unpads("cpu")
    assert model.bert.unpads("cuda")
    odd = BertForPreTraining(small_config(hidden_size=12))
    assert not odd.bert.unpads("cuda")  # head size 6, not FlashAttention's: padded unless asked
    odd.set_speed(unpad=True)
    assert odd.bert.unpads("cuda")
    model.set_speed(unpad=True)
    assert model.bert.unpads("cpu")
    with pytest.raises(ValueError, match="unpad"):
        model.set_speed(unpad="sometimes")


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_compiled_layers_do_not_recompile_across_batches(unpad):
    """Batch shapes vary (sequence length by pad_to_multiple_of, token count and masked rows by
    chance): the compiled layers take them as symbolic sizes, also around the unpadded path's
    attention, which runs eager between two compiled parts of each layer. Dynamo's guards decide
    recompiles, so its cheapest backend shows them; the GPU test compiles with the real one."""
    config = small_config(num_hidden_layers=2, max_position_embeddings=64, unpad=unpad)
    model = BertForPreTraining(config).train()
    for layer in model.bert.encoder.layer:
        layer.compile(backend="aot_eager")
    lengths = [24, 32, 16, 40, 8]
    train_without_recompiling(
        model, [make_batch(config, B=4, T=T, seed=i) for i, T in enumerate(lengths)]
    )


def test_compiled_unpadded_layer_breaks_only_at_the_attention_call():
    """trainer.compile on the unpadded path: dynamo compiles everything in a layer but the jagged
    attention call (eager on purpose). Anything else that breaks the graph, such as a nested
    tensor reaching compiled code, would leave that code eager, and fail here."""
    from torch._dynamo.utils import counters

    config = small_config(num_hidden_layers=2, max_position_embeddings=64, unpad=True)
    model = BertForPreTraining(config).train()
    ops: list[str] = []

    def record(gm, inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    for layer in model.bert.encoder.layer:
        layer.compile(backend=record)
    torch._dynamo.reset()
    try:
        model(**make_batch(config, B=4, T=24)).loss.backward()
        breaks = dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    assert breaks and all("jagged_attention" in reason for reason in breaks), breaks
    for op in ("layer_norm", "gelu", "dropout"):  # both LayerNorms, the GELU, both dropouts
        assert sum(op in o for o in ops) == {"layer_norm": 4, "gelu": 2, "dropout": 4}[op], ops


@pytest.mark.slow
def test_unpadded_run_equals_the_padded_run(tmp_path, data_dir, caplog):
    """The real Trainer with model.unpad=true, eager and with the layers compiled by inductor
    (what trainer=gpu runs, here on a CPU): the module indexes the tokens on the host, and the
    losses of every step and the exported weights equal a padded run's (dropout off)."""
    common = ("+experiment=tiny", "+debug=fast", "optim.max_steps=3", "logger=csv",
              "trainer.val_check_interval=3", "model.hidden_dropout_prob=0",
              "model.attention_probs_dropout_prob=0")  # fmt: skip
    legs = {
        "padded": ("model.unpad=false",),
        "unpadded": ("model.unpad=true",),
        "unpadded-compiled": ("model.unpad=true", "trainer.compile=true"),
    }
    runs = {}
    for name, overrides in legs.items():
        runs[name] = tmp_path / name
        with caplog.at_level("INFO", logger="bertpt.training.module"):
            train(make_cfg(runs[name], data_dir, *common, *overrides))
    assert caplog.text.count("compiled the encoder layers") == 1
    padded = losses_by_step(runs["padded"])
    a = transformers.BertForPreTraining.from_pretrained(runs["padded"] / "hf").state_dict()
    for name, tolerance in (("unpadded", 1e-5), ("unpadded-compiled", 1e-4)):
        losses = losses_by_step(runs[name])
        assert list(losses) == list(padded) == [0, 1, 2], name
        for step, loss in padded.items():
            assert losses[step] == pytest.approx(loss, rel=tolerance), (name, step)
        b = transformers.BertForPreTraining.from_pretrained(runs[name] / "hf").state_dict()
        assert list(a) == list(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=10 * tolerance, rtol=1e-4, msg=key)
