"""trainer.precision=auto: bf16-mixed where bf16 is native (a GPU, a CPU with AMX or
AVX512-BF16), 32-true elsewhere; an explicit value always wins; a bf16-mixed CPU run learns as
fp32 does. The CPU's capability is stood in for (bertpt.precision.native_bf16_unit), as a GPU
is, so that every test runs on either kind of CPU."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from runs import losses_by_step, make_cfg

from bertpt import precision
from bertpt.config_check import check_config
from bertpt.errors import UserError
from bertpt.pretrain import build_trainer, pretrain


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
    with caplog.at_level(logging.INFO, logger="bertpt.pretrain"):
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
