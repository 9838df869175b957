"""What a run folder recorded, read from its files alone: the metrics it logged
(``csv/metrics.csv``) and the command-line overrides it ran with (``.hydra/overrides.yaml``).

No torch and no Lightning: the sweep summary, the plots and the run report read a folder in a
moment, also while a run still writes into it. Values stay the strings the file holds, so a
summary shows exactly what was logged.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from bertpt.runs.folder import METRICS

OVERRIDES = Path(".hydra") / "overrides.yaml"
# Columns of metrics.csv that say when a row was logged, not what.
WHEN = ("epoch", "step")


def read_yaml(path: Path) -> Any:
    """The YAML file's content; None when it is missing."""
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def metric_series(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Each metric of ``csv/metrics.csv``: ``(step, value as written)`` of every row that logged
    it, in file order; ``{}`` when the run wrote no CSV."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[int, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(row["step"])
            # A row holds the metrics of one logging call; the other columns are empty.
            for name, value in row.items():
                if value and name not in WHEN:
                    series.setdefault(name, []).append((step, value))
    return series


def best(name: str, values: list[str]) -> str:
    """Max for accuracies, min for losses and perplexity; a NaN is never the best."""
    numbers = [v for v in values if not math.isnan(float(v))] or values
    pick = max if name.endswith("acc") else min
    return pick(numbers, key=float)


def final_and_best(
    series: dict[str, list[tuple[int, str]]], names: tuple[str, ...]
) -> dict[str, tuple[str, str]]:
    """(final, best) of each of ``names`` that was logged, as the strings the file holds."""
    out = {}
    for name in names:
        if values := [v for _, v in series.get(name, [])]:
            out[name] = (values[-1], best(name, values))
    return out


def read_overrides(run_dir: Path) -> dict[str, str]:
    """``key: value`` of the run's command-line overrides; ``+key`` and ``++key`` as ``key``."""
    overrides = read_yaml(Path(run_dir) / OVERRIDES) or []
    pairs = (o.partition("=") for o in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}
