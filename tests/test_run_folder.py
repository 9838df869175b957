"""Nothing lost, nothing mixed up: history across resumes, one run per folder, sweeps apart,
bounded NaN skipping, checkpoint writes the disk refuses."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import pytest
from faults import run_with_file_size_limit
from runs import losses_by_step, make_cfg, read_metrics, run_cli

from bertpt.common.errors import UserError
from bertpt.model.checkpoint import read_checkpoint
from bertpt.runs import folder as run_folder
from bertpt.train import train

FAST = ["+experiment=tiny", "+debug=fast", "export_hf=false"]


def steps_of(run_dir: Path, key: str) -> list[int]:
    return [int(r["step"]) for r in read_metrics(run_dir) if r.get(key)]


def wandb_ids(run_dir: Path) -> list[str]:
    # offline-run-<date>_<time>-<id>: one folder per process that logged
    return [p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")]


@pytest.mark.slow
def test_resume_twice_keeps_every_step_once(tmp_path, data_dir):
    """Three legs (to steps 4, 6, 8) in one folder: the CSV holds every training step and every
    validation exactly once, and W&B logged all three legs under one run id."""
    run_dir = tmp_path / "run"
    train(make_cfg(run_dir, data_dir, *FAST, "optim.max_steps=4"))
    for last in (6, 8):
        train(make_cfg(run_dir, data_dir, *FAST, f"optim.max_steps={last}", "ckpt_path=last"))
    assert steps_of(run_dir, "train/loss") == list(range(8))
    val = steps_of(run_dir, "val/mlm_loss")
    assert val == [1, 3, 5, 7], val  # val_check_interval=2: after steps 2, 4, 6, 8
    ids = wandb_ids(run_dir)
    assert len(ids) == 3 and len(set(ids)) == 1, ids
    assert (run_dir / run_folder.WANDB_ID).read_text().strip() == ids[0]


@pytest.mark.slow
def test_failed_resume_keeps_history(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    train(make_cfg(run_dir, data_dir, *FAST, "optim.max_steps=4", "logger=csv"))
    before = read_metrics(run_dir)
    failing = [*FAST, "optim.max_steps=6", "ckpt_path=last", "logger=csv"]
    # the resumed run's first step is NaN and on_nan=stop ends it
    failing += ["+callbacks.nan._target_=faults.NanAtSteps", "+callbacks.nan.steps=[4]"]
    with pytest.raises(UserError, match="loss is nan at step 4"):
        train(make_cfg(run_dir, data_dir, *failing))
    assert read_metrics(run_dir) == before
    assert not (run_dir / run_folder.LOCK).exists()


def test_fresh_run_into_a_used_folder_is_refused(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"a previous run")
    with pytest.raises(UserError, match=r"already holds a run — resume it with ckpt_path=last"):
        train(make_cfg(run_dir, data_dir, *FAST))


def test_second_run_into_a_folder_in_use_stops_at_once(tmp_path, data_dir):
    """While this process holds the folder, `python -m bertpt.train` into it exits 2 with one
    line naming this process, and leaves the folder as it was."""
    run_dir = tmp_path / "run"
    with run_folder.claim(run_dir, resume_step=None):
        proc = run_cli(
            [*FAST, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", "ckpt_path=null"],
            cwd=tmp_path,
            check=False,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: run folder"), lines
        assert f"process {os.getpid()}" in lines[0] and "choose another hydra.run.dir" in lines[0]
        assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / run_folder.LOCK).exists()


def test_nan_skips_are_bounded_and_counted(tmp_path, data_dir, caplog):
    """on_nan=skip: a NaN step is skipped and counted in the summary; past max_skipped_steps the
    run stops naming the steps."""
    run_dir = tmp_path / "ok"
    nan = ["on_nan=skip", "logger=csv", "+callbacks.nan._target_=faults.NanAtSteps"]
    with caplog.at_level(logging.INFO, logger="bertpt.training.fit"):
        metrics = train(make_cfg(run_dir, data_dir, *FAST, *nan, "+callbacks.nan.steps=[1]"))
    assert math.isfinite(metrics["train/loss"])
    assert "skipped steps:       1 (1), on_nan=skip" in caplog.text
    losses = losses_by_step(run_dir)
    assert math.isnan(losses[1]) and all(math.isfinite(losses[s]) for s in (0, 2, 3)), losses
    # a running count, from the skipped step on
    rows = [r for r in read_metrics(run_dir) if r["train/loss"]]
    assert [r["train/skipped_steps"] for r in rows] == ["", "1.0", "1.0", "1.0"], rows

    many = make_cfg(
        tmp_path / "many", data_dir, *FAST, *nan, "+callbacks.nan.steps=[0,1,2]",
        "max_skipped_steps=2",
    )  # fmt: skip
    with pytest.raises(UserError, match=r"not finite at 3 steps \(0, 1, 2\).*max_skipped_steps=2"):
        train(many)


def test_checkpoint_the_disk_refuses_is_one_line(tmp_path, data_dir):
    """A checkpoint write that fails (here: a file-size limit, as a full disk would) ends the run
    with one line naming the file; the previous checkpoint stays readable, and the run resumes
    from it."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    train(make_cfg(run_dir, data_dir, *FAST, "logger=csv", "optim.max_steps=2"))
    assert read_checkpoint(last).step == 2  # written with no limit
    written = last.read_bytes()
    # Resumed to step 3, the run rewrites last.ckpt as it ends (no step file first: checkpoints
    # come every 2 steps), under a limit that a checkpoint, as big as this one, cannot fit in and
    # every other file of the run can.
    resume = [*FAST, "logger=csv", "optim.max_steps=3", "ckpt_path=last"]
    proc = run_with_file_size_limit(
        len(written) // 2,
        "sys.argv = ['bertpt.train'] + sys.argv[1:]; runpy.run_module('bertpt.train', "
        "run_name='__main__')",
        *resume, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
        imports="import runpy, sys", cwd=tmp_path,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    # The reason is the OSError's, or that torch's zip writer stopped short.
    assert re.fullmatch(
        rf"error: cannot write checkpoint {re.escape(str(last))}: the disk refused the write "
        r"\((File too large|the file stopped short of its end)\) — the previous checkpoint is "
        rf"intact: free space in {re.escape(str(last.parent))} and resume with ckpt_path=last",
        lines[-1],
    ), lines[-5:]
    assert not list(last.parent.glob(".*.tmp"))

    # The checkpoint that was there is there, whole: it loads, at its step ...
    assert last.read_bytes() == written, "the refused write changed last.ckpt"
    assert read_checkpoint(last).step == 2
    # ... and a resume from it, with room on the disk, continues at that step.
    train(make_cfg(run_dir, data_dir, *resume))
    assert steps_of(run_dir, "train/loss") == [0, 1, 2]
    assert read_checkpoint(last).step == 3
