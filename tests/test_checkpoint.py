"""Checkpoint writes are all or nothing: a failure or a kill mid-write keeps the previous file."""

from __future__ import annotations

import re
import signal

import pytest
import torch
from faults import run_with_file_size_limit

from bertpt.common.errors import UserError
from bertpt.model.bert import BertConfig
from bertpt.model.checkpoint import atomic_torch_save, load_torch_file, read_checkpoint
from bertpt.training.fit import AtomicCheckpointIO

IMPORTS = """
import sys, torch
from bertpt.common.errors import UserError
from bertpt.model.checkpoint import atomic_torch_save
"""
# Saves a checkpoint of step 2 to sys.argv[1]: a million floats (4 MB), all 2.0.
SAVE_STEP_2 = """
try:
    atomic_torch_save({"step": 2, "w": torch.full((1 << 20,), 2.0)}, sys.argv[1])
except UserError as e:
    print(e)
    sys.exit(3)
"""


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    """The disk refuses a checkpoint (a real 1 MB file-size limit, as a full disk would): one
    line names the file and the fix; the previous checkpoint is untouched and loads, and the
    refused one's temporary file is gone."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)
    before = path.read_bytes()

    proc = run_with_file_size_limit(1 << 20, SAVE_STEP_2, str(path), imports=IMPORTS)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]
    # The reason is the OSError's, or that torch's zip writer stopped short.
    assert re.fullmatch(
        rf"cannot write checkpoint {re.escape(str(path))}: the disk refused the write "
        r"\((File too large|the file stopped short of its end)\) — "
        rf"the previous checkpoint is intact: free space in {re.escape(str(path.parent))} and "
        r"resume with ckpt_path=last\n",
        proc.stdout,
    ), proc.stdout
    assert path.read_bytes() == before
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


# Writes a checkpoint of version 2 (sys.argv[2] floats that all say 2.0) to sys.argv[1].
WRITE_VERSION_2 = """
atomic_torch_save({"version": 2, "w": torch.full((int(sys.argv[2]),), 2.0)}, sys.argv[1])
"""


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    """The kernel kills a process in the middle of writing a checkpoint: it dies in the write
    that would take the file past a size limit (SIGXFSZ), so the death lands at a known byte,
    for certain. Killed after its first 4 kB, half way, or one byte short of the end, the writer
    leaves the previous checkpoint at the path, whole, or no file at all; never a torn one. The
    next write removes the dead writer's temporary file."""
    n = 1 << 18  # 1 MB of floats
    atomic_torch_save({"version": 2, "w": torch.full((n,), 2.0)}, tmp_path / "size" / "x.ckpt")
    full = (tmp_path / "size" / "x.ckpt").stat().st_size

    for limit, previous in ((4096, True), (full // 2, False), (full - 1, True)):
        folder = tmp_path / f"at-{limit}-{previous}"
        path = folder / "last.ckpt"
        if previous:
            atomic_torch_save({"version": 1, "w": torch.full((n,), 1.0)}, path)
        proc = run_with_file_size_limit(
            limit, WRITE_VERSION_2, str(path), str(n), imports=IMPORTS, kill=True
        )
        # Killed in a write that took a file to `limit` bytes.
        assert proc.returncode == -signal.SIGXFSZ, (limit, proc.returncode, proc.stderr[-3000:])
        if previous:
            saved = load_torch_file(path)  # a torn file is a UserError naming it
            assert saved["version"] == 1 and torch.equal(saved["w"], torch.full((n,), 1.0)), limit
        else:
            assert not path.exists(), f"killed at byte {limit}, the writer left {path}"
        # That file was the temporary, the first `limit` bytes of the `full` new checkpoint.
        [tmp] = folder.glob(".last.ckpt.*.tmp")
        assert tmp.stat().st_size == limit < full
        atomic_torch_save({"version": 3}, path)
        assert [p.name for p in folder.iterdir()] == ["last.ckpt"], "the dead writer's temp stays"


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
