"""bertpt.bench: the batch it times is a realistic pretraining batch; a step trains."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys

import pytest
import torch
from runs import ROOT

from bertpt.benchmarks.speed import Row, Runner, load_preset, make_batch
from bertpt.model.bert import BertConfig, BertForPreTraining


def test_presets_load_from_conf():
    assert load_preset("mini").hidden_size == 256


def test_speedup_pairs_the_rounds_so_a_slow_spell_of_the_machine_hits_both_sides():
    def row(seconds):
        return Row("tiny", 128, 32, "v", "fp32", 32 / seconds[1], None, 0.0, seconds)

    # bertpt is 3x faster in all rounds but one; the machine slowed down from round 3 on.
    bertpt, hf = row([1.0, 1.0, 1.0, 2.0, 2.0]), row([3.0, 3.0, 6.0, 6.0, 6.0])
    assert bertpt.speedup(hf) == 3.0
    # Medians taken apart would say 6x (6 s against 1 s).
    assert statistics.median(hf.seconds) / statistics.median(bertpt.seconds) == 6.0


def test_batch_is_masked_padded_and_typed_like_the_collator():
    config = BertConfig(vocab_size=1000)
    batch = make_batch(config, batch_size=64, seq_len=128)
    real = batch["attention_mask"].bool()
    predicted = batch["labels"] != -100
    assert 0.8 < real.float().mean() < 0.97  # some padding, mostly real tokens
    assert 0.12 < predicted[real].float().mean() < 0.18  # ~15% of real tokens
    assert not predicted[~real].any() and not predicted[:, 0].any()  # never padding or [CLS]
    assert torch.all(batch["input_ids"][~real] == config.pad_token_id)
    assert torch.all(batch["token_type_ids"][~real] == 0) and batch["token_type_ids"].any()
    assert set(batch["next_sentence_label"].tolist()) == {0, 1}


def test_runner_step_updates_weights_and_records_time():
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = BertForPreTraining(config)
    before = model.cls.seq_relationship.weight.detach().clone()
    runner = Runner(model, make_batch(config, 4, 16), bf16=False)
    runner.step()
    assert len(runner.seconds) == 1 and runner.seqs_per_s(4) > 0
    assert not torch.equal(before, model.cls.seq_relationship.weight)
    assert all(p.grad is None for p in model.parameters())  # zero_grad ran


def test_run_throughput_reads_a_real_run(tmp_path, data_dir):
    """What `--lightning` prints is read from a real run's folder (here a CPU run)."""
    from runs import run_cli

    from bertpt.benchmarks.speed import run_throughput
    from bertpt.model.flops import flops_per_sequence

    run = tmp_path / "run"
    run_cli(
        ["+experiment=tiny", "+debug=fast", "optim.max_steps=6", "logger=csv", "export_hf=false",
         f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"],
        cwd=tmp_path,
    )  # fmt: skip
    seq_per_s, config, seq_len, masked = run_throughput(run, from_step=2)
    assert seq_per_s > 0 and seq_len == 128
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (128, 2, 8192)
    assert 10 < masked < 20  # ~15% of ~110 real tokens
    assert flops_per_sequence(config, seq_len, masked) > 0


def test_largest_batch_doubles_then_bisects():
    from bertpt.benchmarks.speed import largest_batch

    tried = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= 300

    assert largest_batch(fits, start=64, limit=1 << 14) == 300
    assert tried[:4] == [64, 128, 256, 512] and len(tried) < 14
    assert largest_batch(lambda n: n <= 5, start=256, limit=1024) == 5  # the first one is too big
    assert largest_batch(lambda n: False, start=8, limit=1024) == 0
    assert largest_batch(lambda n: True, start=8, limit=100) == 100


def test_cli_times_each_variant_side_by_side(capsys):
    from bertpt.benchmarks.speed import main

    main(["--models", "tiny", "--variants", "bertpt,bertpt-unpadded,hf", "--batch-size", "8",
          "--steps", "2", "--warmup", "1"])  # fmt: skip
    out = capsys.readouterr().out
    rows = {line.split()[3]: line.split() for line in out.splitlines() if line.startswith("tiny")}
    assert set(rows) == {"bertpt", "bertpt-unpadded", "hf"}
    assert rows["hf"][8] == "1.00x" and all(float(r[5]) > 0 for r in rows.values())
    assert "6 x non-embedding params" in out  # the FLOPs formula beside the figures


@pytest.mark.parametrize("unit", ["AMX", None])
def test_cli_times_both_precisions_where_bf16_is_native_and_stars_autos(capsys, monkeypatch, unit):
    from bertpt.benchmarks.speed import main
    from bertpt.training import precision

    monkeypatch.setattr(precision, "native_bf16_unit", lambda: unit)
    main(["--models", "tiny", "--variants", "bertpt,hf", "--batch-size", "4",
          "--steps", "1", "--warmup", "1"])  # fmt: skip
    out = capsys.readouterr().out
    precisions = {(r.split()[3], r.split()[4]) for r in out.splitlines() if r.startswith("tiny")}
    if unit:
        assert "native bf16: AMX; trainer.precision=auto trains in bf16-mixed here" in out
        expected = {(v, p) for v in ("bertpt", "hf") for p in ("fp32", "bf16*")}
    else:
        assert "native bf16: none" in out and "--bf16 times the emulated bf16 too" in out
        expected = {("bertpt", "fp32*"), ("hf", "fp32*")}
    assert precisions == expected


@pytest.mark.slow
def test_bench_quality_trains_both_sides_and_prints_them_side_by_side(tmp_path):
    """python -m bertpt.bench_quality, shortened: bertpt's real command and the transformers
    loop for 20 steps each (two logged windows of 10: the training time is read from them),
    evaluated twice on the same held-out pairs and probe."""
    proc = subprocess.run(
        [sys.executable, "-m", "bertpt.bench_quality", "--experiment", "tiny", "--steps", "20",
         "--evals", "2", "--eval-pairs", "128", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(
        r"^\s+(\d+)\s+(bertpt|transformers)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$", proc.stdout, re.M
    )
    assert [(step, side) for step, side, *_ in rows] == [
        ("10", "bertpt"),
        ("10", "transformers"),
        ("20", "bertpt"),
        ("20", "transformers"),
    ], proc.stdout[-2000:]
    for *_, mlm, nsp, probe in rows:
        assert 0 <= float(mlm) <= 1 and 0 <= float(nsp) <= 1 and 0 <= float(probe) <= 100
    # both sides saw the same batch size and steps: they are timed over the same work
    assert re.search(
        r"training time for 20 steps .*: bertpt \d+ s, transformers \d+ s", proc.stdout
    )
    assert (tmp_path / "bertpt" / "checkpoints" / "step0000010.ckpt").is_file()
