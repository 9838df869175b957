"""Checkpoint writes are all or nothing: a failure or a kill mid-write keeps the previous file."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bertpt.model.checkpoint as ckpt_mod
from bertpt.common.errors import UserError
from bertpt.model.bert import BertConfig
from bertpt.model.checkpoint import atomic_torch_save, read_checkpoint
from bertpt.training.fit import AtomicCheckpointIO

WRITER = """
import sys, torch
from bertpt.model.checkpoint import atomic_torch_save
path, n = sys.argv[1], int(sys.argv[2])
version = 0
while True:
    version += 1
    # ~32 MB whose every element names the version: a torn write would mix versions or truncate
    atomic_torch_save({"version": version, "w": torch.full((n,), float(version))}, path)
    print(version, flush=True)
"""


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)

    def crash_midway(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash_midway)
    with pytest.raises(UserError, match=r"cannot write .*No space left.* intact: free space"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(10)}, path)
    monkeypatch.undo()

    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(10.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"], "temp file left"


def test_overwrite_and_file_url(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_torch_save({"v": 1}, path)
    AtomicCheckpointIO().save_checkpoint({"v": 2}, f"file://{path}")
    assert torch.load(path, weights_only=True) == {"v": 2}
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({"v": 3}, path, storage_options={"x": 1})


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    """SIGKILL a process that rewrites one 32 MB checkpoint in a loop, at several moments."""
    path = tmp_path / "last.ckpt"
    n = 8 * 1024 * 1024
    for delay in (0.15, 0.4, 0.7):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        first = proc.stdout.readline()  # one complete checkpoint exists before the kill
        assert first.strip(), "writer died before its first checkpoint"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = torch.load(path, weights_only=True)
        assert saved["w"].numel() == n
        assert bool((saved["w"] == saved["version"]).all()), "a torn checkpoint was loaded"
    # a kill may leave a temporary file beside `last`; the next write removes it
    atomic_torch_save({"version": 0}, path)
    assert [p.name for p in Path(tmp_path).iterdir()] == ["last.ckpt"]


def test_checkpoint_gets_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_torch_save({"v": 1}, tmp_path / "a.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644


def test_read_checkpoint(tmp_path):
    """What BertPretrainModule's checkpoint holds comes back as a Checkpoint, the model's weights
    without the module's `model.` prefix and without the module's other state."""
    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)  # fmt: skip
    ckpt = {
        "state_dict": {"model.bert.w": torch.ones(2), "train_acc.total": torch.tensor(3.0)},
        "global_step": 7,
        "optimizer_states": [{"state": {0: torch.zeros(2)}}],
        "hyper_parameters": {
            "model_config": config.to_dict(),
            "optim": {"lr": 1e-3},
            "tokenizer_dir": "/runs/a/tokenizer",
            "tokenizer_hash": "ab" * 32,
        },
    }
    atomic_torch_save(ckpt, tmp_path / "last.ckpt")
    got = read_checkpoint(tmp_path / "last.ckpt")
    assert (got.path, got.step) == (tmp_path / "last.ckpt", 7)
    assert list(got.state_dict) == ["bert.w"]
    assert torch.equal(got.state_dict["bert.w"], torch.ones(2))
    assert got.config == config
    assert (got.tokenizer_dir, got.tokenizer_hash) == ("/runs/a/tokenizer", "ab" * 32)

    del ckpt["hyper_parameters"]["tokenizer_dir"]
    atomic_torch_save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match=r"old\.ckpt .* lacks hyper_parameters\['tokenizer_dir'\]"):
        read_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "none.ckpt")
