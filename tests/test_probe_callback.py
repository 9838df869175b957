"""val/probe_acc: the frozen-feature probe at every validation of a real run, logged, plotted
and reported; on by default in the CPU experiments only."""

from __future__ import annotations

import json

import pytest
import torch
from runs import make_cfg, read_metrics

from bertpt.training.fit import pretrain


def lexical_task(path, n=240):
    """Four classes, each told by a word: a probe on any features that keep words learns it."""
    words = ["socket", "widget", "decimal", "thread"]
    rows = [
        {"text": f"the {words[i % 4]} of item {i} is described here", "label": words[i % 4]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_run_logs_plots_and_reports_the_probe_at_every_validation(
    data_dir, tmp_path, monkeypatch, precision
):
    """A short run logs the probe at step 0 and at each validation, plots and reports it; the
    probe encodes in the run's precision (bf16 autocast under bf16-mixed), as validation does."""
    from bertpt.probing import callback as probe_callback

    run = tmp_path / "run"
    task = lexical_task(tmp_path / "task.jsonl")
    encoded_in = []

    def spy(*args, **kwargs):
        encoded_in.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
        return encode_batches(*args, **kwargs)

    encode_batches = probe_callback.encode_batches
    monkeypatch.setattr(probe_callback, "encode_batches", spy)
    cfg = make_cfg(
        run, data_dir,
        "+experiment=tiny", "optim.max_steps=20", "optim.warmup_steps=2",
        "data.global_batch_size=8", "data.val_max_pairs=16", "trainer.val_check_interval=10",
        "trainer.log_every_n_steps=5", "trainer.num_workers=0", "logger=csv",
        "callbacks.model_checkpoint.every_n_train_steps=20", f"callbacks.val_probe.task={task}",
        f"trainer.precision={precision}",
    )  # fmt: skip
    metrics = pretrain(cfg)
    expected = torch.bfloat16 if precision == "bf16-mixed" else None
    assert encoded_in == [expected] * 2 * 3, encoded_in  # train and test, 3 probes
    rows = [r for r in read_metrics(run) if r.get("val/probe_acc")]
    # the weights it starts from (random init) at step 0, then at each validation
    assert [int(r["step"]) for r in rows] == [0, 9, 19], rows
    probe = [float(r["val/probe_acc"]) for r in rows]
    # One word tells the class, whatever the tokenizer makes of it: random and 20-step features
    # alike keep it (measured 100% at each step). A probe that learnt nothing scores chance, 25%
    # +- 7% on the 37 held-out texts: 50% is 3.5 standard deviations above it.
    assert all(0.5 < a <= 1.0 for a in probe), probe
    assert metrics["val/probe_acc"] == pytest.approx(probe[-1])
    assert (run / "plots" / "probe_acc.png").is_file()
    report = (run / "report.md").read_text()
    assert "val/probe_acc" in report


@pytest.mark.parametrize(
    "experiment, probed",
    [("tiny", True), ("mini", True), ("small", True), ("roberta_tiny", True), ("base", False)],
)
def test_the_cpu_experiments_probe_by_default_and_it_turns_off(tmp_path, experiment, probed):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from runs import CONF

    def callbacks(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("train", overrides=[f"+experiment={experiment}", *overrides])
        return cfg.callbacks

    assert (callbacks().get("val_probe") is not None) == probed
    assert callbacks("callbacks=default").get("val_probe") is None
    if probed:
        assert callbacks("callbacks.val_probe=null").val_probe is None
        assert callbacks().val_probe.task == "docstrings"  # the built-in task: no network


def test_the_cost_line_compares_the_probes_with_the_validations_they_follow():
    from bertpt.probing.callback import ValidationProbe

    probe = ValidationProbe()
    probe.seconds = [5.0, 1.0, 1.0]  # step 0 (follows no validation), then two validations
    probe.val_seconds = [8.0, 12.0]
    assert probe.cost() == "3 probes, 2.33 s each on average, adding 10% to the validations' time"
