"""trainer.precision=auto: bf16-mixed where bf16 is native (a GPU, a CPU with AMX or
AVX512-BF16), 32-true elsewhere; an explicit value always wins; a bf16-mixed CPU run learns as
fp32 does. The CPU's capability is stood in for (bertpt.training.precision.native_bf16_unit), as a
GPU is, so that every test runs on either kind of CPU."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from runs import losses_by_step, make_cfg

from bertpt.common.errors import UserError
from bertpt.training import precision
from bertpt.training.config_check import check_config
from bertpt.training.fit import build_trainer, pretrain


@pytest.fixture
def cpu_with(monkeypatch):
    """Make this CPU one with the given native bf16 unit (None: none)."""

    def stand_in(unit):
        monkeypatch.setattr(precision, "native_bf16_unit", lambda: unit)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return stand_in


@pytest.mark.parametrize(
    "unit, expected",
    [("AMX", "bf16-mixed"), ("AVX512-BF16", "bf16-mixed"), (None, "32-true")],
)
def test_auto_is_bf16_only_where_the_cpu_has_it_natively(cpu_with, unit, expected):
    cpu_with(unit)
    chosen, why = precision.resolve("auto", "auto")
    assert chosen == expected
    assert (unit in why) if unit else ("no native bf16" in why)
    # an explicit value wins on any machine
    for asked in ("32-true", "bf16-mixed", "bf16-true", "64-true"):
        assert precision.resolve(asked, "cpu") == (asked, "as configured")
    # none at all: a precision plugin in trainer.plugins sets it (test_trainers' fp16 leg)
    assert precision.resolve(None, "cpu")[0] is None


def test_auto_is_bf16_on_a_gpu(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_unit", lambda: None)  # a CPU without it
    assert precision.resolve("auto", "gpu")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve("auto", "auto")[0] == "bf16-mixed"
    assert precision.resolve("auto", "cpu")[0] == "32-true"  # a CPU run on a GPU machine


@pytest.mark.parametrize(
    "amx, avx512_bf16, limit, unit",
    [
        (True, True, None, "AMX"),
        (False, True, None, "AVX512-BF16"),
        (False, False, None, None),
        (True, True, "AVX512_CORE_BF16", "AVX512-BF16"),  # oneDNN told not to use AMX
        (True, True, "avx2", None),
        (True, True, "AVX512_CORE", None),
        (True, True, "ALL", "AMX"),
    ],
)
def test_the_unit_is_what_torch_reports_within_onednns_limit(
    monkeypatch, amx, avx512_bf16, limit, unit
):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert precision.native_bf16_unit() == unit


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_cpu"])
def test_the_cpu_trainer_configs_ask_for_auto_and_the_check_knows_it(tmp_path, trainer):
    cfg = make_cfg(tmp_path / "run", tmp_path, "+experiment=tiny", f"trainer={trainer}")
    assert cfg.trainer.precision == "auto"
    check_config(cfg, tmp_path / "run")
    bad = make_cfg(tmp_path / "run", tmp_path, "+experiment=tiny", "trainer.precision=autoo")
    with pytest.raises(UserError, match=r"trainer.precision='autoo' is not an option.*auto"):
        check_config(bad, tmp_path / "run")
    for gpu in ("gpu", "ddp", "fsdp"):
        assert make_cfg(tmp_path, tmp_path, f"trainer={gpu}").trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("unit, expected", [("AMX", "bf16-mixed"), (None, "32-true")])
def test_the_trainer_gets_the_choice_says_it_once_and_records_it(
    tmp_path, cpu_with, caplog, unit, expected
):
    cpu_with(unit)
    cfg = make_cfg(tmp_path / "run", tmp_path, "+experiment=tiny", "logger=csv")
    with caplog.at_level(logging.INFO, logger="bertpt.training.fit"):
        trainer, _ = build_trainer(cfg)
    assert trainer.precision == expected
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith(f"precision: {expected} (auto: this CPU")
    assert cfg.trainer.precision == expected  # what the run's config records
    # a GPU config on this CPU falls back to what auto picks here
    gpu = make_cfg(tmp_path / "gpu", tmp_path, "trainer=gpu", "logger=csv")
    assert build_trainer(gpu)[0].precision == expected
    # an explicit value wins
    fp32 = make_cfg(
        tmp_path / "fp32", tmp_path, "+experiment=tiny", "trainer.precision=32-true", "logger=csv"
    )
    assert build_trainer(fp32)[0].precision == "32-true"


def test_a_bf16_mixed_cpu_run_learns_as_fp32_does(tmp_path, data_dir, cpu_with):
    """Under auto on a CPU with native bf16 the run trains in bf16-mixed, its config records
    that, and its losses track an fp32 run's step by step within bf16's tolerance. (Where the
    CPU lacks native bf16, torch emulates it: the same numbers, slowly; hence 24 tiny steps.)"""
    cpu_with("AMX")
    losses, runs = {}, {}
    for name, asked in (("auto", "auto"), ("fp32", "32-true")):
        runs[name] = run = tmp_path / name
        cfg = make_cfg(
            run, data_dir,
            "+experiment=tiny", "optim.max_steps=24", "optim.warmup_steps=4",
            "data.global_batch_size=16", "data.val_max_pairs=32",
            "trainer.val_check_interval=24", "trainer.log_every_n_steps=4",
            "trainer.num_workers=0", "logger=csv", "export_hf=false",
            "callbacks.model_checkpoint.every_n_train_steps=24", f"trainer.precision={asked}",
        )  # fmt: skip
        pretrain(cfg)
        losses[name] = losses_by_step(run)
    recorded = yaml.safe_load((runs["auto"] / "csv" / "hparams.yaml").read_text())
    assert recorded["trainer"]["precision"] == "bf16-mixed"
    steps = sorted(losses["fp32"])
    assert steps == sorted(losses["auto"]) and len(steps) == 6
    first, last = steps[0], steps[-1]
    assert losses["fp32"][last] < losses["fp32"][first] - 0.5  # it learned in these steps
    for step in steps:
        fp32, bf16 = losses["fp32"][step], losses["auto"][step]
        assert bf16 != fp32  # two precisions did run
        assert abs(bf16 - fp32) < 0.02 * fp32, (step, bf16, fp32)


def small_config(**overrides):
    """A 2-layer BERT of width 64 for one-step checks."""
    from bertpt.model.bert import BertConfig

    return BertConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, **overrides,
    )  # fmt: skip


def test_a_bf16_mixed_cpu_step_runs_every_product_in_bf16_and_casts_each_weight_once():
    """Under bf16 autocast (what bf16-mixed runs), a training step's matrix products and
    attention all take bf16 inputs, the fused decoder loss included (none falls back to fp32),
    each weight is cast to bf16 at most once per step, and the fused AdamW keeps fp32 weights
    and fp32 state."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from bertpt.benchmarks.speed import make_batch
    from bertpt.model.bert import BertForPreTraining

    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}

    class Record(TorchDispatchMode):
        """The products' input dtypes, and how often each weight (or the concatenation of
        weights that one projection uses) is cast to bf16."""

        def __init__(self, weights):
            super().__init__()
            self.weights = {w.data_ptr() for w in weights}
            self.products, self.casts, self.kept = [], Counter(), []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            if func in products or "scaled_dot_product" in str(func):
                self.products.append((str(func), {t.dtype for t in tensors}))
            to_bf16 = func is aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
            if to_bf16 and args[0].data_ptr() in self.weights:
                self.casts[args[0].data_ptr()] += 1
            out = func(*args, **kwargs)
            if func is aten.cat.default and all(t.data_ptr() in self.weights for t in args[0]):
                self.weights.add(out.data_ptr())  # query, key and value weights as one
                self.kept.append(out)  # alive, so that no later tensor reuses its address
            return out

    config = small_config()
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = make_batch(config, 8, 32)
    with Record(model.parameters()) as seen:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
    assert len(seen.products) > 20  # every layer's projections, attention and the heads
    in_fp32 = [name for name, dtypes in seen.products if dtypes != {torch.bfloat16}]
    assert not in_fp32, in_fp32
    decoder = model.cls.predictions.decoder.weight  # the word embeddings, tied
    assert seen.casts[decoder.data_ptr()] == 1  # cast by the fused decoder loss, once
    twice = [n for n, p in model.named_parameters() if seen.casts[p.data_ptr()] > 1]
    assert not twice and max(seen.casts.values()) == 1, twice
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = [s for p in model.parameters() for s in optimizer.state[p].values() if s.dim()]
    assert state and all(s.dtype == torch.float32 for s in state)


def test_under_bf16_on_a_cpu_the_masked_rows_come_in_few_shapes_and_change_nothing(monkeypatch):
    """Under bf16 autocast on a CPU the rows that the last layer and the vocabulary projection
    compute are rounded up to a multiple of ROW_BUCKET (oneDNN makes a kernel per shape), so
    batches with different numbers of masked tokens share shapes; the extra rows are never
    scored: loss, predictions and every gradient are those of the unrounded step. In fp32 the
    rows are not rounded."""
    from bertpt.benchmarks.speed import make_batch
    from bertpt.model import bert, kernels

    config = small_config(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )  # same step twice
    torch.manual_seed(0)
    model = bert.BertForPreTraining(config).train()
    rows = []
    model.cls.predictions.transform.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))

    def step(bucket, bf16, batch):
        monkeypatch.setattr(kernels, "ROW_BUCKET", bucket)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out.loss.detach(), out.mlm_predictions, grads

    for seed in range(3):  # batches whose masked counts differ
        torch.manual_seed(seed)
        batch = make_batch(config, 8, 32)
        masked = int((batch["labels"] != kernels.IGNORE_INDEX).sum())
        loss, predictions, grads = step(1, True, batch)
        assert rows[-1] == masked
        rounded_loss, rounded_predictions, rounded_grads = step(32, True, batch)
        # the last layer's rows: one [CLS] row per sequence (8) and the masked ones, rounded
        assert (8 + rows[-1]) % 32 == 0 and masked <= rows[-1] < masked + 32
        assert len(rounded_predictions) == masked
        assert torch.equal(rounded_predictions, predictions)
        torch.testing.assert_close(rounded_loss, loss, rtol=1e-3, atol=1e-3)
        for name, grad in grads.items():
            torch.testing.assert_close(rounded_grads[name], grad, rtol=2e-2, atol=2e-4, msg=name)
        step(32, False, batch)
        assert rows[-1] == masked  # fp32: as it comes
