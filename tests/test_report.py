"""The run report: report.md and the console table at the end of a real run give the figures
its csv/metrics.csv holds, the run's shape and where its files are."""

from __future__ import annotations

import re
import statistics

import pytest
import yaml
from runs import read_metrics

from bertpt.runs.report import REPORT, VAL_METRICS, duration


def logged(run, name):
    return [float(r[name]) for r in read_metrics(run) if r[name]]


def best(name, values):
    return max(values) if name.endswith("acc") else min(values)


def table_rows(text):
    """``| a | b | c |`` lines as lists of cells."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and "---" not in line
    ]


def test_report_figures_match_the_csv(finished_run):
    run, _ = finished_run
    text = (run / REPORT).read_text()
    rows = {r[0]: r[1:] for r in table_rows(text)}
    for name in VAL_METRICS:  # val/probe_acc included: the run probed at every validation
        values = logged(run, name)
        final, best_value = (float(x) for x in rows[name])
        assert final == pytest.approx(values[-1], rel=5e-4), name
        assert best_value == pytest.approx(best(name, values), rel=5e-4), name
    assert len(logged(run, "val/mlm_loss")) == 4  # validated at steps 10, 20, 30, 40

    # 40 optimizer steps: the CSV logged steps 0..39, each once
    steps = [int(r["step"]) for r in read_metrics(run) if r["train/loss"]]
    assert steps == list(range(40))
    assert rows["steps"][0] == "40 of 40 (optim.max_steps)"

    seq_per_s = statistics.mean(logged(run, "train/seq_per_s"))
    speed = re.match(r"([\d,.]+) sequences/s, ([\d,]+) tokens/s", rows["average throughput"][0])
    assert float(speed.group(1).replace(",", "")) == pytest.approx(seq_per_s, abs=0.051)
    tok_per_s = statistics.mean(logged(run, "train/tok_per_s"))
    assert float(speed.group(2).replace(",", "")) == pytest.approx(tok_per_s, abs=0.51)

    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    data = hparams["data_report"]
    assert rows["batch"][0] == "16 sequences of up to 128 tokens (global)"
    tokens = rows["tokens seen"][0]
    assert tokens.startswith(f"~{round(40 * 16 * data['mean_pair_length']):,} (steps x batch"), (
        tokens
    )
    assert rows["model"][0].startswith("2 x 128, 2 heads")
    # the data report of the start of the run, and where the files are
    assert re.search(rf"^  documents\s+{data['documents']:,}$", text, re.M)
    assert f"- checkpoint: `{run / 'checkpoints' / 'last.ckpt'}`" in text
    assert f"- Hugging Face export: `{run / 'hf'}`" in text
    assert "![curves](plots/overview.png)" in text
    assert "| overrides | `+experiment=tiny optim.max_steps=40 optim.warmup_steps=1 " in text


def test_console_table_at_the_end_of_the_run(finished_run):
    run, stdout = finished_run
    tail = stdout[stdout.index("bertpt: done.") :]
    assert re.match(r"bertpt: done\. tiny: 40 steps in [\d.]+ s, [\d.]+ seq/s", tail), tail[:300]
    report_rows = {r[0]: r[1:] for r in table_rows((run / REPORT).read_text())}
    for name in VAL_METRICS:
        row = re.search(rf"^  {re.escape(name)}\s+(\S+)\s+(\S+)$", tail, re.M)
        assert row and list(row.groups()) == report_rows[name], (name, tail[:800])
    for label, path in [
        ("checkpoint:         ", run / "checkpoints" / "last.ckpt"),
        ("Hugging Face export:", run / "hf"),
        ("plots:              ", run / "plots"),
        ("report:             ", run / REPORT),
    ]:
        assert f"bertpt: {label} {path}" in tail, (label, tail)
        assert path.exists()


def test_duration():
    assert [duration(s) for s in (4.3, 351, 11_220)] == ["4.3 s", "5 min 51 s", "3 h 07 min"]
