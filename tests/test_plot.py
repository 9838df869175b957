"""Plots of a run: written at the end of a real run (and of a failed one), overlaid for several
runs with the overrides in the legend, and never a reason for a run to fail."""

from __future__ import annotations

import csv
import logging
import math
import shutil
import sys

import pytest
from PIL import Image
from runs import make_cfg, read_metrics

from bertpt.common.errors import UserError
from bertpt.runs import plots as plot
from bertpt.runs import report
from bertpt.train import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=100):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as im:
        im.verify()  # the whole file decodes
    with Image.open(path) as im:
        assert im.width >= min_width and im.height >= 100, (path, im.size)
        # not a blank canvas: lines and text in more than a handful of colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20, path


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, data_dir):
    """A run whose loss is NaN at step 5 (on_nan=stop): it fails after logging steps 0-4."""
    run = tmp_path_factory.mktemp("failed") / "run"
    cfg = make_cfg(
        run, data_dir, "+experiment=tiny", "+debug=fast", "optim.max_steps=8", "logger=csv",
        "export_hf=false", "+callbacks.nan._target_=faults.NanAtSteps", "+callbacks.nan.steps=[5]",
    )  # fmt: skip
    with pytest.raises(UserError, match="loss is nan at step 5"):
        train(cfg)
    return run


def test_a_run_ends_with_its_plots(finished_run):
    run, stdout = finished_run
    for stem in plot.PANELS:  # val/probe_acc included: the run probed at every validation
        assert_png(run / "plots" / f"{stem}.png")
    assert_png(run / "plots" / plot.OVERVIEW, min_width=800)
    assert f"bertpt: plots:               {run / 'plots'}" in stdout


def test_a_failed_run_is_plotted_once_it_logged_a_few_steps(failed_run, tmp_path):
    assert_png(failed_run / "plots" / plot.OVERVIEW, min_width=800)
    assert_png(failed_run / "plots" / "mlm_loss.png")
    # A panel only for what the run logged: it ran no probe.
    assert not (failed_run / "plots" / "probe_acc.png").exists()
    assert not (failed_run / report.REPORT).exists()  # a report is for a finished run
    # Two logged steps make no curve: no plots.
    few = tmp_path / "few"
    (few / "csv").mkdir(parents=True)
    rows = [r for r in read_metrics(failed_run) if r["train/loss"]][:2]
    with open(few / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report.after_failure(few)
    assert not (few / "plots").exists()


def test_overlay_of_two_runs_names_their_overrides(finished_run, failed_run, tmp_path):
    run, _ = finished_run
    out = tmp_path / "both.png"
    plot.main([str(run), str(failed_run), "--out", str(out)])
    assert_png(out, min_width=800)

    fig = plot.overview_figure(plot.load_runs([run, failed_run]), "2 runs")
    legend = [t.get_text().replace("\n", " ") for t in fig.axes[-1].get_legend().get_texts()]
    # The command-line run is named by its overrides (less those saying where it writes); the
    # in-process run has no .hydra/overrides.yaml and is named by its folder.
    assert "optim.max_steps=40" in legend[0] and "data.global_batch_size=16" in legend[0]
    assert "hydra.run.dir" not in legend[0] and "paths.data_dir" not in legend[0]
    assert legend[1] == failed_run.name
    # both runs' training curves are in the MLM loss panel: one line per run, raw and smoothed
    mlm_loss = fig.axes[0]
    steps = [len(line.get_xdata()) for line in mlm_loss.get_lines()]
    assert 40 in steps and 5 in steps, steps


def test_a_sweep_folder_stands_for_its_jobs(finished_run, failed_run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_run[0], sweep / "0", ignore=shutil.ignore_patterns("*.ckpt", "hf"))
    shutil.copytree(failed_run, sweep / "1")
    assert plot.run_folders([sweep]) == [sweep / "0", sweep / "1"]
    with pytest.raises(UserError, match=r"holds no csv/metrics.csv — give a run folder"):
        plot.run_folders([tmp_path / "nothing"])


def test_smoothing_follows_the_values_and_skips_nan():
    assert plot.smooth([2.0] * 30) == pytest.approx([2.0] * 30)
    values = [float(i) for i in range(30)]
    values[10] = math.nan
    smoothed = plot.smooth(values)
    assert all(math.isfinite(v) for v in smoothed)
    assert smoothed[0] == 0.0 and 20 < smoothed[-1] < 29  # lags behind a rising series


def test_without_matplotlib_the_run_says_so_in_one_line_and_succeeds(
    tmp_path, data_dir, monkeypatch, caplog
):
    # `import matplotlib...` raises ImportError, as where it is not installed.
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    run = tmp_path / "run"
    cfg = make_cfg(run, data_dir, "+experiment=tiny", "+debug=fast", "logger=csv")
    with caplog.at_level(logging.WARNING):
        train(cfg)
    warnings = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "pip install -e '.[plot]'" in warnings[0]
    assert not (run / "plots").exists()
    assert (run / "hf" / "model.safetensors").is_file() and read_metrics(run)
    assert "plots: none" in (run / report.REPORT).read_text()
