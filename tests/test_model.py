"""bertpt.model.bert against the reference: transformers.BertForPreTraining with the same
weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers  # the reference: a test dependency, missing is an error
import yaml

from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.kernels import Dropout

CONFIGS = [
    # odd sizes, three token types, exact GELU, HF's eager attention
    dict(vocab_size=101, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
         intermediate_size=37, type_vocab_size=3, hidden_act="gelu", attn="eager"),
    dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
         intermediate_size=48, hidden_act="gelu_new", layer_norm_eps=1e-7, attn="sdpa"),
    dict(vocab_size=77, hidden_size=20, num_hidden_layers=3, num_attention_heads=5,
         intermediate_size=30, hidden_act="relu", pad_token_id=3, attn="sdpa"),
    dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=1,
         intermediate_size=64, hidden_act="silu", attn="eager"),
]  # fmt: skip
TOL = dict(atol=1e-5, rtol=1e-5)


def small_config(**over) -> BertConfig:
    kw = dict(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    return BertConfig(**(kw | dict(intermediate_size=16, max_position_embeddings=16) | over))


def make_pair(spec: dict, seed: int = 0):
    spec = dict(spec)
    attn = spec.pop("attn")
    kw = dict(spec, max_position_embeddings=32, initializer_range=0.2)
    torch.manual_seed(seed)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**kw, attn_implementation=attn))
    # A larger init than BERT's makes every component matter in the comparison; random LayerNorm
    # and biases too, so a swapped weight/bias or a missing bias cannot hide.
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    ours = BertForPreTraining(BertConfig(**kw))
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf.eval(), ours.eval(), BertConfig(**kw)


def make_batch(
    config: BertConfig, B: int = 4, T: int = 13, seed: int = 1, lengths: list | None = None
) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths or [T, T - 4, 5, T])[:B]
    attention_mask = (torch.arange(T) < lengths[:, None]).long()
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = torch.randint(0, config.type_vocab_size, (B, T), generator=g)
    predicted = (torch.rand(B, T, generator=g) < 0.3) & attention_mask.bool()
    predicted[0, 1] = predicted[1, 0] = True  # at least two, one on [CLS]
    labels = torch.where(predicted, torch.randint(0, config.vocab_size, (B, T), generator=g), -100)
    return dict(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        labels=labels,
        next_sentence_label=torch.randint(0, 2, (B,), generator=g),
    )


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s['hidden_act']}-{s['attn']}")
def test_outputs_match_transformers(spec):
    hf, ours, config = make_pair(spec)
    batch = make_batch(config)
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        ref_pooled = hf.bert(**inputs).pooler_output
        seq, pooled = ours.bert(**inputs)
        full = ours(**inputs)
        out = ours(**batch)
    # Padded query rows attend to the real keys in both, so all positions agree.
    torch.testing.assert_close(seq, ref.hidden_states[-1], **TOL)
    torch.testing.assert_close(pooled, ref_pooled, **TOL)
    torch.testing.assert_close(full.prediction_logits, ref.prediction_logits, **TOL)
    torch.testing.assert_close(full.seq_relationship_logits, ref.seq_relationship_logits, **TOL)
    assert full.loss is full.mlm_loss is full.nsp_loss is None

    labels = batch["labels"]
    predicted = labels != -100
    # With labels the logits are the predicted rows only, in the row-major order of the labels.
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[predicted], **TOL)
    mlm = F.cross_entropy(ref.prediction_logits.flatten(0, 1), labels.flatten())
    nsp = F.cross_entropy(ref.seq_relationship_logits, batch["next_sentence_label"])
    torch.testing.assert_close(out.mlm_loss, mlm, **TOL)
    torch.testing.assert_close(out.nsp_loss, nsp, **TOL)
    torch.testing.assert_close(out.loss, mlm + nsp, **TOL)


@pytest.mark.parametrize("spec", CONFIGS[:2], ids=lambda s: s["hidden_act"])
def test_gradients_match_transformers(spec):
    hf, ours, config = make_pair(spec)
    batch = make_batch(config)
    hf(**batch).loss.backward()
    ours(**batch).loss.backward()
    ref = dict(hf.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert set(names) == set(ref)  # tied weights once on both sides
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, **TOL, msg=name)
    assert ours.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_state_dict_keys_are_transformers_keys():
    hf, ours, _ = make_pair(CONFIGS[0])
    assert list(ours.state_dict()) == list(hf.state_dict())


def test_training_mode_uses_dropout_and_eval_is_deterministic():
    config = make_pair(CONFIGS[0])[2]
    config_kw = dataclasses.asdict(config) | dict(
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3
    )
    model = BertForPreTraining(BertConfig(**config_kw))
    batch = make_batch(config)
    model.train()
    a, b = model(**batch).loss, model(**batch).loss
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(**batch).loss, model(**batch).loss)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cpu_dropout_drops_a_share_p_and_keeps_the_mean(p):
    """bertpt's Dropout (a faster mask on a CPU): the share of zeros is p (to a 1/65536 step),
    the kept values are scaled so that the mean is kept, the gradient is the same mask, the
    same seed gives the same mask, and in eval mode it is the identity."""
    drop = Dropout(p).train()
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    zeros = (y == 0).float().mean().item()
    assert zeros == pytest.approx(p, abs=5 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 65536)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2 / (1 - round(p * 65536) / 65536)))
    assert y.mean().item() == pytest.approx(2.0, rel=0.01)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach() / 2)
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # a new draw
    columns = (y == 0).float().mean(0)  # no pattern across the 4 elements of one 64-bit draw
    assert columns.reshape(-1, 4).mean(0).sub(p).abs().max() < 0.01
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.isfinite(Dropout(1 - 1e-6).train()(x)).all()  # p rounds to 1: no 1 / 0 scale


def test_cpu_attention_with_dropout_is_sdpa_with_its_mask():
    """On a CPU, training attention with dropout runs its own math (to use the faster mask):
    with that mask keeping everything, it equals SDPA's output with padding masked."""
    config = small_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4)
    torch.manual_seed(0)
    sdpa = BertForPreTraining(
        dataclasses.replace(config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ).train()
    own = BertForPreTraining(dataclasses.replace(config, hidden_dropout_prob=0.0)).train()
    own.load_state_dict(sdpa.state_dict())
    for layer in own.bert.encoder.layer:
        assert layer.attention.self.dropout.p == 0.1
        layer.attention.self.dropout.eval()  # the own path, dropping nothing
    batch = make_batch(config, lengths=[13, 9, 5, 13])
    a, b = sdpa(**batch), own(**batch)
    torch.testing.assert_close(b.loss, a.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(sdpa.named_parameters(), own.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=name)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_gradient_checkpointing_gives_the_same_gradients(unpad):
    plain = BertForPreTraining(small_config(num_hidden_layers=2, unpad=unpad)).train()
    ckpt = BertForPreTraining(
        small_config(num_hidden_layers=2, gradient_checkpointing=True, unpad=unpad)
    )
    ckpt.train().load_state_dict(plain.state_dict())
    batch = make_batch(plain.config)
    for model in (plain, ckpt):  # dropout on: the replayed RNG state must match
        torch.manual_seed(7)
        model(**batch).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_no_masked_token_gives_zero_mlm_loss_with_grad():
    model = BertForPreTraining(small_config())
    ids = torch.randint(0, 40, (2, 6))
    out = model(ids, labels=torch.full_like(ids, -100), next_sentence_label=torch.tensor([0, 1]))
    assert out.prediction_logits.shape == (0, 40)
    assert out.mlm_loss.item() == 0.0 and out.mlm_loss.requires_grad
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(out.loss, out.nsp_loss)


def test_losses_present_only_for_given_labels():
    model = BertForPreTraining(small_config())
    ids = torch.randint(1, 40, (2, 6))
    nsp_only = model(ids, next_sentence_label=torch.tensor([1, 0]))
    assert nsp_only.mlm_loss is None and nsp_only.loss is nsp_only.nsp_loss
    assert nsp_only.prediction_logits.shape == (2, 6, 40)
    mlm_only = model(ids, labels=ids)
    assert mlm_only.nsp_loss is None and mlm_only.loss is mlm_only.mlm_loss
    assert mlm_only.prediction_logits.shape == (12, 40)


def test_init_statistics_and_tying():
    config = BertConfig(vocab_size=3000, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256, pad_token_id=5)  # fmt: skip
    model = BertForPreTraining(config)
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is emb
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert torch.count_nonzero(emb[5]) == 0
    others = torch.cat([emb[:5].flatten(), emb[6:].flatten()])
    assert abs(others.std().item() - 0.02) < 0.001
    q = model.bert.encoder.layer[1].attention.self.query
    assert abs(q.weight.std().item() - 0.02) < 0.002 and torch.count_nonzero(q.bias) == 0
    ln = model.bert.encoder.layer[0].output.LayerNorm
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)
    assert torch.count_nonzero(model.cls.predictions.bias) == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(hidden_size=100, num_attention_heads=3), r"hidden_size \(100\) is not divisible"),
        (dict(hidden_act="tanh"), r"hidden_act \('tanh'\) is not supported: use one of"),
        (dict(hidden_dropout_prob=1.0), r"hidden_dropout_prob \(1.0\) must be in \[0, 1\)"),
        (dict(attention_probs_dropout_prob=-0.1), r"attention_probs_dropout_prob \(-0.1\)"),
        (dict(num_hidden_layers=0), r"num_hidden_layers \(0\) must be a positive"),
        (dict(vocab_size=10, pad_token_id=10), r"pad_token_id \(10\)"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**kw)


def test_config_from_dict_rejects_unknown_keys():
    assert BertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4}).hidden_size == 64
    with pytest.raises(ValueError, match=r"unknown BertConfig keys \['hiden_size'\]"):
        BertConfig.from_dict({"hiden_size": 64})


def test_sequence_longer_than_positions_is_a_clear_error():
    model = BertForPreTraining(small_config(max_position_embeddings=4))
    with pytest.raises(ValueError, match=r"sequence length \(5\) exceeds max_position_embeddings"):
        model(torch.ones(1, 5, dtype=torch.long))


PRESETS = {
    "tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8),
    "medium": (8, 512, 8), "base": (12, 768, 12), "large": (24, 1024, 16),
}  # fmt: skip


@pytest.mark.parametrize("name", PRESETS)
def test_model_presets(name):
    d = yaml.safe_load((Path(__file__).parents[1] / "conf" / "model" / f"{name}.yaml").read_text())
    assert d.pop("init_from") is None
    assert d.pop("vocab_size") == "${tokenizer.vocab_size}"  # one owner: the tokenizer
    config = BertConfig.from_dict({**d, "vocab_size": 30522})
    hidden = PRESETS[name][1]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == PRESETS[
        name
    ]
    assert config.intermediate_size == 4 * hidden
    assert config.vocab_size == 30522 and config.max_position_embeddings == 512


def test_fused_mlm_head_matches_plain_loss_and_argmax():
    _hf, ours, config = make_pair(CONFIGS[1])
    batch = make_batch(config)
    out = ours(**batch)
    targets = batch["labels"][batch["labels"] != -100]
    torch.testing.assert_close(out.mlm_loss, F.cross_entropy(out.prediction_logits, targets))
    assert torch.equal(out.mlm_predictions, out.prediction_logits.argmax(-1))
    # The lazily computed logits are differentiable like any other output: a loss on them gives
    # every weight the gradient the same loss on Hugging Face's logits of those rows gives.
    out.prediction_logits.pow(2).mean().backward()
    ref = _hf(**batch).prediction_logits[batch["labels"] != -100]
    ref.pow(2).mean().backward()
    hf_grads = dict(_hf.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is not None or hf_grads[name].grad is not None:
            torch.testing.assert_close(p.grad, hf_grads[name].grad, **TOL, msg=name)
    assert ours.cls.predictions.bias.grad.abs().sum() > 0


def test_two_forwards_share_the_workspace_safely():
    """Forward twice (the second batch predicts more rows, so the workspace grows), then one
    backward of the sum: the gradients of Hugging Face's two losses."""
    hf, ours, config = make_pair(CONFIGS[0])
    small, big = make_batch(config, B=2, T=6, seed=3), make_batch(config, seed=4)
    (hf(**small).loss + hf(**big).loss).backward()
    (ours(**small).loss + ours(**big).loss).backward()
    ref = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, **TOL, msg=name)


def test_mlm_loss_cannot_be_backpropagated_twice():
    model = BertForPreTraining(small_config())
    out = model(**make_batch(model.config))
    out.mlm_loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        out.mlm_loss.backward()


def test_bf16_autocast_is_close_to_fp32():
    hf, ours, config = make_pair(CONFIGS[1])
    batch = make_batch(config)
    ref = hf(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(**batch)
    torch.testing.assert_close(
        out.mlm_loss,
        ref.loss - F.cross_entropy(ref.seq_relationship_logits, batch["next_sentence_label"]),
        atol=0.1,
        rtol=0.05,
    )
    out.loss.backward()
    for p in ours.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def test_training_after_inference_mode_validation():
    """Lightning validates under torch.inference_mode (a sanity check can run first)."""
    hf, ours, config = make_pair(CONFIGS[2])
    batch = make_batch(config)
    with torch.inference_mode():
        first = ours(**batch).loss
    torch.testing.assert_close(first, hf(**batch).loss, **TOL)
    ours(**batch).loss.backward()
    hf(**batch).loss.backward()
    ref = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, **TOL, msg=name)


def test_fused_head_work_follows_grad_mode_and_model_precision():
    import copy
    import pickle

    model = BertForPreTraining(small_config())
    batch = make_batch(model.config)
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for grad in (False, True):  # without grad mode, no gradient work in forward
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            model(**batch)
        flops[grad] = counter.get_total_flops()
    N, H, V = int((batch["labels"] != -100).sum()), 8, 40
    assert flops[True] - flops[False] == 2 * (2 * N * H * V)  # the two gradient matmuls
    # a bf16 model (precision=bf16-true) projects in bf16 and gets bf16 gradients
    ref = model(**batch).mlm_loss
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert not hasattr(half, "_logits_workspace")  # dropped by .to() and by deepcopy
    loss = half(**batch).mlm_loss
    torch.testing.assert_close(loss.float(), ref, atol=0.05, rtol=0.02)
    loss.backward()
    assert half.cls.predictions.decoder.weight.grad.dtype == torch.bfloat16
    assert "_logits_workspace" not in pickle.loads(pickle.dumps(model)).__dict__
    # lazily computed logits use the autocast of their forward, even read outside it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.prediction_logits.dtype == torch.bfloat16


def test_fused_head_has_no_second_order_gradient():
    model = BertForPreTraining(small_config())
    loss = model(**make_batch(model.config)).mlm_loss
    (g,) = torch.autograd.grad(loss, [model.cls.predictions.bias], create_graph=True)
    # The fused loss computes its gradients in forward: asked for a graph of them, autograd
    # gets a constant, so a second-order use fails loudly instead of giving zero.
    assert g.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
        g.sum().backward()


def test_config_check_names_the_model_activations():
    """The model rules (no torch) accept exactly the activations the model implements."""
    from bertpt.model.bert import ACTIVATIONS
    from bertpt.model.rules import ACTIVATIONS as CHECKED

    assert set(CHECKED) == set(ACTIVATIONS)
