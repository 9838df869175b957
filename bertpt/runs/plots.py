"""Curves of a run, or of several runs overlaid: ``plots/*.png`` in the run folder at the end of
every run, and by hand

    python -m bertpt.plot RUN [RUN ...] [--out FILE]

Each panel draws metrics against the optimizer step, from ``csv/metrics.csv``: training metrics
raw (thin, faint) and smoothed (an exponential moving average, bold), validation (a few points)
dashed with markers. Several runs (a sweep's jobs, a run and its continuation) share each panel,
one colour a run, and the legend names each run by the overrides that tell it apart.

matplotlib is an optional extra (``pip install -e '.[plot]'``; ``make install`` has it). It is
imported here only, and only its object-oriented API is used (``Figure`` renders to PNG with
Agg by itself): no display, no pyplot state in the caller's process.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.runs.folder import METRICS
from bertpt.runs.history import metric_series, read_overrides

# file stem: (title, metrics drawn)
PANELS = {
    "mlm_loss": ("MLM loss", ("train/mlm_loss", "val/mlm_loss")),
    "nsp_loss": ("NSP loss", ("train/nsp_loss", "val/nsp_loss")),
    "mlm_acc": ("MLM accuracy (masked tokens)", ("train/mlm_acc", "val/mlm_acc")),
    "nsp_acc": ("NSP accuracy", ("train/nsp_acc", "val/nsp_acc")),
    # the frozen-feature probe at each validation (callbacks=probe): downstream quality
    "probe_acc": ("probe accuracy (frozen features)", ("val/probe_acc",)),
    "lr": ("learning rate", ("train/lr",)),
    "grad_norm": ("gradient norm (before clipping)", ("train/grad_norm",)),
    "throughput": ("throughput (sequences/s)", ("train/seq_per_s",)),
}
PLOTS_DIR = "plots"
OVERVIEW = "overview.png"
# A series this short (validation) is drawn point by point: an average over it would hide it.
SMOOTH_MIN_POINTS = 10
# A failed run is plotted once it logged this many training steps: fewer make no curve.
MIN_LOGGED_STEPS = 3
# Overrides that say where a run writes, not what it trains: left out of the legend.
NOT_IN_LABEL = ("hydra.", "paths.")
READING = "training: raw faint, smoothed bold\nvalidation: dashed, markers"
LABEL_WIDTH = 40  # characters of a legend line in the last cell of the overview
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


@dataclass
class Run:
    label: str
    series: dict[str, list[tuple[int, float]]]


def smooth(values: list[float]) -> list[float]:
    """Debiased exponential moving average (TensorBoard's), its span about 1/15 of the points;
    a non-finite value (a skipped NaN step) is left out and the average carries on."""
    alpha = 2 / (max(2, len(values) // 15) + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = (1 - alpha) * avg + alpha * v
            weight = (1 - alpha) * weight + alpha  # the bias of starting the average at 0
        out.append(avg / weight if weight else math.nan)
    return out


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders of ``paths``: a run folder itself, or a folder of runs (a sweep) for each of
    its runs, in job order; UserError for a path that holds neither."""
    found = []
    for path in map(Path, paths):
        if (path / METRICS).is_file():
            found.append(path)
            continue
        jobs = sorted(
            (p.parent.parent for p in path.glob(f"*/{METRICS}")),
            key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
        )
        if not jobs:
            raise UserError(
                f"{path} holds no {METRICS} — give a run folder (outputs/train/runs/DATE_TIME) "
                "or a sweep folder of a run that logged to CSV (the default logger does)"
            )
        found += jobs
    return found


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's overrides, less those every run shares (when there are several); the folder
    name where that leaves nothing or two labels alike."""
    overrides = [
        {k: v for k, v in read_overrides(d).items() if not k.startswith(NOT_IN_LABEL)}
        for d in run_dirs
    ]
    shared = set.intersection(*(set(o.items()) for o in overrides)) if len(overrides) > 1 else set()
    labels = [
        " ".join(f"{k}={v}" for k, v in o.items() if (k, v) not in shared) or d.name
        for o, d in zip(overrides, run_dirs, strict=True)
    ]
    if len(set(labels)) < len(labels):
        labels = [
            label if label == d.name else f"{label} ({d.name})"
            for label, d in zip(labels, run_dirs, strict=True)
        ]
    return labels


def load_runs(run_dirs: list[Path]) -> list[Run]:
    runs = []
    for d, label in zip(run_dirs, run_labels(run_dirs), strict=True):
        series = metric_series(d)
        numbers = {k: [(s, float(v)) for s, v in points] for k, points in series.items()}
        runs.append(Run(label, numbers))
    return runs


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas; a UserError naming the fix where it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError(
            "matplotlib is not installed — pip install -e '.[plot]' for plots (make install "
            "includes it)"
        ) from e
    return Figure, FigureCanvasAgg


def _draw(ax: Any, runs: list[Run], stem: str) -> bool:
    """One panel; False when none of the runs logged its metrics."""
    title, metrics = PANELS[stem]
    drawn = False
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        for name in metrics:
            if not (points := run.series.get(name)):
                continue
            steps, values = zip(*points, strict=True)
            style = "--" if name.startswith("val/") else "-"
            if len(values) >= SMOOTH_MIN_POINTS:
                ax.plot(steps, values, style, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, smooth(list(values)), style, color=color, linewidth=1.6)
            else:
                ax.plot(steps, values, style, color=color, marker="o", markersize=3)
            drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return drawn


def _run_legend(ax: Any, runs: list[Run]) -> None:
    """The runs' colours in ``ax`` (an empty cell), with how to read the lines."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=COLORS[i % len(COLORS)], linewidth=2, label=label)
        for i, label in enumerate(textwrap.fill(run.label, LABEL_WIDTH) for run in runs)
    ]
    ax.axis("off")
    ax.legend(handles=handles, loc="center", fontsize=8, frameon=False, title=READING)


def _split_legend(ax: Any) -> None:
    """Which line is training and which validation, in a panel that has both."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="gray", label="train"),
        Line2D([], [], color="gray", linestyle="--", marker="o", markersize=3, label="validation"),
    ]
    ax.legend(handles=handles, fontsize=7)


def overview_figure(runs: list[Run], title: str) -> Any:
    """Every panel in one figure; the runs' legend fills the last cell."""
    Figure, _ = _matplotlib()
    fig = Figure(figsize=(12, 9), dpi=80)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.06, top=0.92, wspace=0.22, hspace=0.38)
    axes = fig.subplots(3, 3).flatten()
    for ax, stem in zip(axes, PANELS, strict=False):
        if _draw(ax, runs, stem) and len(PANELS[stem][1]) > 1:
            _split_legend(ax)
    _run_legend(axes[-1], runs)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_run(run_dir: Path) -> list[Path]:
    """Write ``plots/overview.png`` and ``plots/<panel>.png`` for each panel with data.

    The figure is drawn once and each panel's file cut out of it (with its title, ticks and
    legend): drawing a figure per panel took seconds, at the end of every run."""
    _, FigureCanvasAgg = _matplotlib()
    import numpy as np
    from PIL import Image  # matplotlib's own dependency

    run_dir = Path(run_dir)
    runs = load_runs(run_folders([run_dir]))
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    fig = overview_figure(runs, f"{run_dir.resolve().name}: {runs[0].label}")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    Image.fromarray(pixels).convert("RGB").save(out_dir / OVERVIEW)
    written = []
    renderer, height = canvas.get_renderer(), pixels.shape[0]
    for ax, stem in zip(fig.axes, PANELS, strict=False):
        if not any(run.series.get(m) for run in runs for m in PANELS[stem][1]):
            continue
        box = ax.get_tightbbox(renderer).padded(4)  # display pixels, origin bottom left
        x0, x1 = max(0, int(box.x0)), math.ceil(box.x1)
        rows = slice(max(0, height - math.ceil(box.y1)), height - int(box.y0))
        Image.fromarray(pixels[rows, x0:x1]).convert("RGB").save(out_dir / f"{stem}.png")
        written.append(out_dir / f"{stem}.png")
    return [*written, out_dir / OVERVIEW]


def plot_runs(paths: list[Path], out: Path) -> Path:
    """The overview of several runs (or sweeps) overlaid, written to ``out``."""
    run_dirs = run_folders(paths)
    title = run_dirs[0].name if len(run_dirs) == 1 else f"{len(run_dirs)} runs"
    out.parent.mkdir(parents=True, exist_ok=True)
    overview_figure(load_runs(run_dirs), title).savefig(out)
    return out


def logged_steps(run_dir: Path) -> int:
    """Training steps the run logged to its CSV."""
    return len(metric_series(run_dir).get("train/loss", []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.plot",
        description="Plot a run's metrics against the step, or overlay several runs.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folders, or a sweep folder for all its jobs"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="one figure of all the runs overlaid (default: RUN/plots/ for one run, "
        "plots.png for several)",
    )
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.out is None and len(args.runs) == 1 and (args.runs[0] / METRICS).is_file():
            written = plot_run(args.runs[0])
            print(f"plots: {written[0].parent} ({len(written)} files, overview: {written[-1]})")
        else:
            print(f"plots: {plot_runs(args.runs, args.out or Path('plots.png'))}")
