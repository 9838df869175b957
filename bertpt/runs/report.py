"""What a run did, at its end: a short table on the console and ``report.md`` in the run folder.

The report gives the run's shape (model size, steps, batch, tokens seen, optimizer), its final
and best validation metrics as ``csv/metrics.csv`` holds them, wall time and average throughput,
where the checkpoint, export and plots are, and the data report measured at the start.
:func:`finish_run` also draws the plots (``bertpt.runs.plots``); :func:`after_failure` draws them
for a run that failed once it had logged a few steps. Neither raises: a report is never the
reason a run fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bertpt.data.stats import format_report
from bertpt.model.bert import BertConfig, BertForPreTraining, num_parameters
from bertpt.runs import plots as plot
from bertpt.runs.folder import METRICS
from bertpt.runs.history import OVERRIDES, final_and_best, metric_series, read_yaml

log = logging.getLogger(__name__)

REPORT = "report.md"
# Validation metrics reported, in order: final and best (the lowest loss, the highest accuracy).
VAL_METRICS = (
    *("val/mlm_loss", "val/mlm_acc", "val/nsp_loss", "val/nsp_acc", "val/perplexity"),
    "val/probe_acc",  # the frozen-feature probe (callbacks=probe)
)


@dataclass
class RunFacts:
    """What only the running process knows; the rest of the report is read from the folder."""

    config: dict[str, Any]  # the composed config, resolved, without hydra
    model_config: dict[str, Any]  # the model as built (the tokenizer's vocabulary size)
    steps: int
    wall_time_s: float
    checkpoint: str = ""
    export_dir: Path | None = None
    data_report: dict[str, Any] | None = None
    skipped_steps: list[int] = field(default_factory=list)


def _parameters(model_config: dict[str, Any]) -> int:
    # On the meta device: the count without allocating the weights (BERT-large is 1.3 GB).
    with torch.device("meta"):
        return num_parameters(BertForPreTraining(BertConfig.from_dict(model_config)))


def duration(seconds: float) -> str:
    """``42.0 s``, ``5 min 51 s``, ``3 h 07 min``."""
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _mean(series: dict[str, list[tuple[int, str]]], name: str) -> float | None:
    values = [float(v) for _, v in series.get(name, [])]
    return sum(values) / len(values) if values else None


def summary(run_dir: Path, facts: RunFacts) -> dict[str, Any]:
    """The figures of the report, by name (what the console table and report.md show)."""
    cfg, m = facts.config, facts.model_config
    series = metric_series(run_dir)
    batch, seq = cfg["data"]["global_batch_size"], cfg["data"]["max_seq_length"]
    pair_length = (facts.data_report or {}).get("mean_pair_length")
    optim = cfg["optim"]
    return {
        "run": cfg.get("run_name", ""),
        "model": f"{m['num_hidden_layers']} x {m['hidden_size']}, "
        f"{m['num_attention_heads']} heads, vocabulary {m['vocab_size']:,}",
        "parameters": _parameters(m),
        "steps": facts.steps,
        "max_steps": optim["max_steps"],
        "batch": batch,
        "max_seq_length": seq,
        # Non-padding tokens: the data report's mean pair length, measured on this corpus.
        "tokens_seen": round(facts.steps * batch * pair_length) if pair_length else None,
        "mean_pair_length": pair_length,
        "optimizer": f"AdamW, lr {optim['lr']:g}, weight decay {optim['weight_decay']:g}, "
        f"warmup {optim['warmup_steps']} steps, then linear decay",
        "wall_time_s": facts.wall_time_s,
        "seq_per_s": _mean(series, "train/seq_per_s"),
        "tok_per_s": _mean(series, "train/tok_per_s"),
        "logged_steps": len(series.get("train/seq_per_s", [])),
        "validations": len(series.get("val/mlm_loss", [])),
        "val": final_and_best(series, VAL_METRICS),
        "overrides": " ".join(read_yaml(Path(run_dir) / OVERRIDES) or []),  # as typed
    }


def _count(n: float) -> str:
    """``12,345``, ``1.38 M``, ``110 M``."""
    if n < 1e6:
        return f"{n:,.0f}"
    return f"{n / 1e6:.2f} M" if n < 1e7 else f"{n / 1e6:,.0f} M"


def _headline(s: dict[str, Any]) -> str:
    parts = [f"{s['steps']:,} steps in {duration(s['wall_time_s'])}"]
    if s["seq_per_s"] is not None:
        parts.append(f"{s['seq_per_s']:,.1f} seq/s")
    if s["tokens_seen"]:
        parts.append(f"~{_count(s['tokens_seen'])} tokens seen")
    parts.append(f"{s['model'].split(',')[0]} ({_count(s['parameters'])} parameters)")
    return ", ".join(parts)


def _val_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(name, f"{float(f):.4g}", f"{float(b):.4g}") for name, (f, b) in s["val"].items()]


def console_table(s: dict[str, Any]) -> str:
    """The lines printed at the end of a run (without those naming its files)."""
    lines = [f"bertpt: done. {s['run']}: {_headline(s)}"]
    rows = _val_rows(s)
    if rows:
        width = max(len(name) for name, _, _ in rows)
        lines.append(f"  {'validation':<{width}}  {'final':>8}  {'best':>8}")
        lines += [f"  {n:<{width}}  {f:>8}  {b:>8}" for n, f, b in rows]
    else:
        lines.append(f"  no validation metrics in {METRICS}")
    return "\n".join(lines)


def markdown(run_dir: Path, s: dict[str, Any], facts: RunFacts, plots: list[Path]) -> str:
    """report.md: the run's shape, validation, files and data report."""
    tokens = (
        f"~{_count(s['tokens_seen'])} "
        f"(steps x batch x mean pair length {s['mean_pair_length']:.1f})"
        if s["tokens_seen"]
        else "unknown (no data report)"
    )
    speed = (
        f"{s['seq_per_s']:,.1f} sequences/s, {s['tok_per_s']:,.0f} tokens/s "
        f"(mean over {s['logged_steps']} logged steps)"
        if s["seq_per_s"] is not None
        else "not logged"
    )
    rows = [
        ("model", f"{s['model']}; {s['parameters']:,} parameters"),
        ("steps", f"{s['steps']:,} of {s['max_steps']:,} (optim.max_steps)"),
        ("batch", f"{s['batch']} sequences of up to {s['max_seq_length']} tokens (global)"),
        ("tokens seen", tokens),
        ("optimizer", s["optimizer"]),
        ("wall time", f"{duration(s['wall_time_s'])} (training and validation, this process)"),
        ("average throughput", speed),
    ]
    if s["overrides"]:
        rows.append(("overrides", f"`{s['overrides']}`"))
    if facts.skipped_steps:
        rows.append(("skipped steps", ", ".join(map(str, facts.skipped_steps))))
    out = [f"# Run report: {s['run']}", "", f"`{Path(run_dir).resolve()}`", ""]
    out += ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    out += ["## Validation", ""]
    if val := _val_rows(s):
        out += ["| metric | final | best |", "| --- | --- | --- |"]
        out += [f"| {n} | {f} | {b} |" for n, f, b in val]
        out += ["", f"Best: the lowest loss, the highest accuracy, over {s['validations']} "]
        out[-1] += f"validations; from `{METRICS}`."
    else:
        out.append(f"No validation metrics in `{METRICS}`.")
    out += ["", "## Files", ""]
    out.append(f"- checkpoint: `{facts.checkpoint or '(none)'}`")
    out.append(f"- Hugging Face export: `{facts.export_dir or '(none: export_hf=false)'}`")
    if plots:
        names = ", ".join(p.name for p in plots)
        out += [
            f"- plots: `{plots[-1].parent}`: {names}",
            "",
            f"![curves]({plot.PLOTS_DIR}/{plot.OVERVIEW})",
        ]
    else:
        out.append("- plots: none (see the warning in the run's log)")
    if facts.data_report:
        out += ["", "## Data (measured at the start of the run)", ""]
        out += ["```text", format_report(facts.data_report), "```"]
    return "\n".join(out) + "\n"


def _warn(what: str, e: Exception) -> None:
    log.warning("%s: %s", what, " ".join(str(e).split())[:300] or type(e).__name__)


def finish_run(run_dir: Path, facts: RunFacts) -> str:
    """Draw the plots, write report.md, and return the console lines of a finished run."""
    run_dir = Path(run_dir)
    try:
        plots = plot.plot_run(run_dir)
    except Exception as e:  # matplotlib missing (a UserError naming the fix), or a bug
        _warn("no plots", e)
        plots = []
    report_file = None
    try:
        s = summary(run_dir, facts)
        (run_dir / REPORT).write_text(markdown(run_dir, s, facts, plots))
        report_file = run_dir / REPORT
        lines = [console_table(s)]
    except Exception as e:
        _warn("no run report", e)
        lines = [f"bertpt: done. {facts.steps:,} steps in {duration(facts.wall_time_s)}"]
    if facts.skipped_steps:
        steps = ", ".join(map(str, facts.skipped_steps))
        lines.append(
            f"bertpt: skipped steps:       {len(facts.skipped_steps)} ({steps}), on_nan=skip"
        )
    lines.append(f"bertpt: checkpoint:          {facts.checkpoint or '(none)'}")
    if facts.export_dir is not None:
        lines.append(f"bertpt: Hugging Face export: {facts.export_dir}")
    if plots:
        panels = f"{plots[-1].name} and {len(plots) - 1} panels"
        lines.append(f"bertpt: plots:               {plots[-1].parent} ({panels})")
    if report_file is not None:
        lines.append(f"bertpt: report:              {report_file}")
    return "\n".join(lines)


def after_failure(run_dir: Path) -> None:
    """Plot a run that failed, once it logged a few steps (fewer make no curve)."""
    try:
        if plot.logged_steps(run_dir) >= plot.MIN_LOGGED_STEPS:
            plots = plot.plot_run(run_dir)
            log.info("plots of the failed run: %s", plots[-1].parent)
    except Exception as e:
        _warn("no plots", e)
