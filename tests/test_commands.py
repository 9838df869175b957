"""The commands the README names beside training, run for real: the console scripts
``bertpt-tokenizer`` and ``bertpt-export`` (pyproject's [project.scripts], in the venv's bin/),
``python -m bertpt.bench_data``, the probe's ``--no-baseline``, ``--max-train-examples`` and column
flags, and ``python -m bertpt.plot`` on a run without ``--out`` and on a whole sweep folder."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from runs import ROOT
from safetensors.torch import load_file

from bertpt.benchmarks.data import bench_pairs
from bertpt.probing.probe import main as probe
from bertpt.runs import plots

BIN = Path(sys.executable).parent  # the venv's bin/: .venv/bin under `make test`
# This checkout's bertpt in every process, whichever copy the venv installed.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
BOOLS = ("False", "True")
TAB_ORANGE, TAB_GREEN = (255, 127, 14), (44, 160, 44)  # the 2nd and 3rd run's colours


def command(*args: str | Path, cwd: Path | None = None, check: bool = True):
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def script(name: str) -> Path:
    path = BIN / name
    assert path.is_file(), f"no {path}: pip install -e . installs the console scripts there"
    return path


def png_colours(path: Path) -> set[tuple[int, int, int]]:
    """The colours of a PNG that decodes whole, at least 100 x 100 pixels."""
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 100, (path, im.format, im.size)
        return {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 24)}


# --- console scripts ---------------------------------------------------------------------------


def test_bertpt_tokenizer_script_trains_what_the_library_trains(
    default_corpus, tokenizer_dir, tmp_path
):
    out = tmp_path / "tok"
    proc = command(script("bertpt-tokenizer"), default_corpus, "--out", out, "--vocab-size", "2000")
    assert proc.stdout.strip() == f"tokenizer: {out} (2000 tokens)", proc.stdout
    # The session's tokenizer_dir: the same corpus and settings trained in-process, byte for byte.
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name
    # A user error is the script's exit status 2 and one line.
    bad = command(
        script("bertpt-tokenizer"), tmp_path / "missing.txt", "--out", tmp_path / "x", check=False
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr
    assert bad.stderr.count("\n") == 1 and "missing.txt" in bad.stderr, bad.stderr


def test_bertpt_export_script_exports_a_real_run(finished_run, tmp_path):
    """From the run folder and from its checkpoint file: the weights the run exported at its end,
    its tokenizer, and a folder transformers loads without a missing or unexpected key."""
    run, _ = finished_run
    theirs = load_file(run / "hf" / "model.safetensors")
    for source in (run, run / "checkpoints" / "last.ckpt"):
        out = tmp_path / source.name / "hf"
        proc = command(script("bertpt-export"), source, out)
        assert proc.stdout.strip() == f"wrote {out}", proc.stdout
        mine = load_file(out / "model.safetensors")
        assert mine.keys() == theirs.keys()
        differ = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert not differ, f"{source}: tensors differ from the run's own export: {differ[:5]}"
        for name in ("config.json", "tokenizer.json", "vocab.txt"):
            assert (out / name).read_bytes() == (run / "hf" / name).read_bytes(), name
        tokenizer = (run / "tokenizer" / "tokenizer.json").read_bytes()  # the run's own
        assert (out / "tokenizer.json").read_bytes() == tokenizer

    import transformers

    _, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    bad = command(script("bertpt-export"), tmp_path / "nothing", tmp_path / "o", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr


# --- python -m bertpt.bench_data ---------------------------------------------------------------


def test_bench_data_prints_the_collator_and_pair_rates(tmp_path):
    out = command(
        sys.executable, "-m", "bertpt.bench_data", "--seq-len", "32", "--min-time", "0.05",
        cwd=tmp_path,
    ).stdout.splitlines()  # fmt: skip
    assert re.fullmatch(r"torch threads: \d+, sequence length 32", out[0]), out
    assert out[1].split() == ["collator", "batch", "mode", "wwm", "seq/s"], out
    rows = [line.split() for line in out[2:10]]
    cases = [(b, m, w) for b in ("32", "256") for m in ("independent", "exact") for w in BOOLS]
    assert [tuple(r[:3]) for r in rows] == cases, out
    assert all(float(r[3].replace(",", "")) > 0 for r in rows), out
    pairs = re.fullmatch(
        r"pairs: ([\d,]+) docs, ([\d,]+) sentences -> ([\d,]+) pairs/epoch; epoch plan [\d.]+ s "
        r"\([\d,]+ sentences/s\); __getitem__ ([\d,]+) pairs/s",
        out[10],
    )
    assert pairs and len(out) == 11, out
    # The pairs of sequences of 32 tokens (a pure function of the seed): the flag reached them.
    docs, sents, n, _, _ = bench_pairs(seq_len=32, min_time=0.01)
    numbers = [int(x.replace(",", "")) for x in pairs.groups()]
    assert numbers[:3] == [docs, sents, n] and numbers[3] > 0, (numbers, (docs, sents, n))


# --- the probe's flags -------------------------------------------------------------------------


def probe_rows(out: str) -> list[tuple[str, str]]:
    """(probe, init) of each row of the probe's table."""
    return re.findall(r"^  (linear|fine-tuned|words) +(pretrained|random init|TF-IDF) ", out, re.M)


def test_probe_without_baseline_probes_the_encoder_alone(finished_run, tmp_path, capsys):
    """Both probes on the encoder and the words floor: no random-init model, line or lr."""
    good, bad = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    rows = [f"film {i} was {(good if i % 2 else bad)[i % 4]},{i % 2}" for i in range(120)]
    task = tmp_path / "task.csv"
    task.write_text("text,label\n" + "\n".join(rows) + "\n")
    args = ["--task", str(task), "--seeds", "2", "--epochs", "1", "--lrs", "1e-3", "--no-baseline"]
    probe([str(finished_run[0] / "hf"), *args])
    out = capsys.readouterr().out
    assert "random" not in out, out
    assert probe_rows(out) == [
        ("linear", "pretrained"), ("fine-tuned", "pretrained"), ("words", "TF-IDF")
    ], out  # fmt: skip
    fine_tuned = re.search(r"^  fine-tuned +pretrained .*$", out, re.M).group()
    # the median, the range and each of the 2 seeds
    assert len(re.findall(r"\d+\.\d%", fine_tuned)) == 1 + 2 + 2, fine_tuned
    assert len(re.findall(r"^  fine-tuned, pretrained, seed \d", out, re.M)) == 2, out


def test_probe_column_flags_and_max_train_examples(finished_run, tmp_path, capsys):
    """A csv whose text, pair and label are in columns of other names, beside decoy ``text`` and
    ``label`` columns of noise: the label is in the first sentence for half the rows and in the
    second for the others, so the words floor reaches 100% only from both columns."""
    good, bad = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    task = tmp_path / "pairs.csv"
    with open(task, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "sentence1", "sentence2", "answer", "split"])
        for i in range(300):
            word = (good if i % 2 else bad)[(i // 2) % 4]
            said, plain = f"it was {word}", f"scene {i % 5}"
            first, second = (said, plain) if i % 4 < 2 else (plain, said)
            row = [f"noise {i % 3}", "abc"[i % 3], first, second, "yes" if i % 2 else "no"]
            writer.writerow([*row, "test" if i % 5 == 0 else "train"])
    columns = ["--text-column", "sentence1", "--pair-column", "sentence2"]
    columns += ["--label-column", "answer"]
    args = ["--task", str(task), *columns, "--max-train-examples", "100", "--mode", "linear"]
    probe([str(finished_run[0] / "hf"), *args, "--no-baseline"])
    out = capsys.readouterr().out
    assert f"probe {task}: {finished_run[0] / 'hf'} on 100 examples" in out, out
    assert f"probe {task}: 2 classes, 100 train / 60 test examples" in out, out
    assert re.search(r"^  words +TF-IDF +100\.0%", out, re.M), out


# --- python -m bertpt.plot ---------------------------------------------------------------------


def test_plot_a_run_without_out_redraws_its_plots_folder(finished_run, tmp_path):
    """``python -m bertpt.plot RUN``: RUN/plots/ (re)drawn, an overview and a file per panel,
    whatever the working directory; nothing written where it runs."""
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "hf"))
    (run / "plots" / plots.OVERVIEW).write_bytes(b"stale")
    (run / "plots" / "mlm_loss.png").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = command(sys.executable, "-m", "bertpt.plot", run, cwd=elsewhere)
    overview = run / "plots" / plots.OVERVIEW
    assert proc.stdout.strip() == f"plots: {run / 'plots'} (9 files, overview: {overview})"
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(
        [plots.OVERVIEW] + [f"{stem}.png" for stem in plots.PANELS]
    )
    for png in (run / "plots").iterdir():
        assert len(png_colours(png)) > 20, png  # lines and text, not a blank canvas
    assert not list(elsewhere.iterdir())


def test_plot_a_sweep_folder_overlays_its_jobs(real_sweep, tmp_path):
    """The sweep folder stands for its jobs that logged to CSV: one figure with both (two
    colours, no third: the W&B-only jobs have no curves here), named by the value each job swept
    (the logger they share is left out); without ``--out`` the figure is plots.png where it
    runs."""
    sweep, _ = real_sweep
    out = tmp_path / "sweep.png"
    proc = command(sys.executable, "-m", "bertpt.plot", sweep, "--out", out, cwd=tmp_path)
    assert proc.stdout.strip() == f"plots: {out}"
    colours = png_colours(out)
    assert TAB_ORANGE in colours, "the sweep's figure draws one run: no second run's colour"
    assert TAB_GREEN not in colours, "the sweep's figure draws a third run"
    assert plots.run_labels(plots.run_folders([sweep])) == ["optim.lr=0.0001", "optim.lr=0.0003"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = sorted(p for p in sweep.rglob("*"))
    proc = command(sys.executable, "-m", "bertpt.plot", sweep, cwd=elsewhere)
    assert proc.stdout.strip() == "plots: plots.png"
    assert png_colours(elsewhere / "plots.png") == colours  # the same figure
    assert sorted(p for p in sweep.rglob("*")) == before  # nothing written into the sweep
