"""The files a run starts from are checked before any long work: malicious, truncated or
mismatched checkpoints, and tokenizers that do not match the model."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from runs import make_cfg, other_tokenizer, run_cli

from bertpt.common.errors import UserError
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.hf import to_hf
from bertpt.train import train

FAST = ["+experiment=tiny", "+debug=fast", "export_hf=false", "logger=csv"]


class Payload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """A real 4-step run (checkpoints at steps 2 and 4, its tokenizer copy, its metrics): the
    folder the resume checks start from. A test that changes it works on a copy (`copy_of`)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(make_cfg(run_dir, data_dir, *FAST))
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """The run folder copied to ``tmp_path/run``, its own checkpoints and history with it."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("where", ["ckpt_path", "model.init_from"])
def test_malicious_file_is_refused_and_never_runs(tmp_path, data_dir, tokenizer_dir, where):
    marker = tmp_path / "payload_ran"
    evil = {"state_dict": {}, "global_step": 4, "x": Payload(marker)}
    if where == "ckpt_path":
        target = tmp_path / "evil.ckpt"
        torch.save(evil, target)
    else:  # a Hugging Face folder whose weights file is the pickle
        target = tmp_path / "hf"
        target.mkdir()
        small = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32)  # fmt: skip
        to_hf(BertForPreTraining(small), target, tokenizer_dir=tokenizer_dir)
        (target / "model.safetensors").unlink()
        torch.save(evil, target / "pytorch_model.bin")
    args = [*FAST, f"{where}={target}", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/r"]
    proc = run_cli(args, cwd=tmp_path, check=False)
    line = one_error_line(proc)
    assert "never runs code" in line and "os.makedirs" in line, line
    assert not marker.exists()


def test_truncated_checkpoint_is_one_line(tmp_path, data_dir, trained_run):
    run_dir = copy_of(trained_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = run_cli(
        [*FAST, "optim.max_steps=6", "ckpt_path=last", f"paths.data_dir={data_dir}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, check=False,
    )  # fmt: skip
    line = one_error_line(proc)
    assert str(last) in line and "truncated" in line


def test_checkpoint_of_another_model_is_refused(tmp_path, data_dir, trained_run):
    run_dir = copy_of(trained_run, tmp_path)
    cfg = make_cfg(run_dir, data_dir, *FAST, "ckpt_path=last", "model.hidden_size=64")
    with pytest.raises(UserError, match=r"trained with hidden_size=128 \(this run: 64\)"):
        train(cfg)


def test_init_from_keeps_its_tokenizer_and_refuses_another(tmp_path, data_dir, tokenizer_dir):
    small = BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64)  # fmt: skip
    hf = to_hf(BertForPreTraining(small), tmp_path / "hf", tokenizer_dir=tokenizer_dir)
    other = other_tokenizer(tokenizer_dir, tmp_path / "other")
    cfg = make_cfg(tmp_path / "a", data_dir, *FAST, f"model.init_from={hf}",
                   f"tokenizer.path={other}")  # fmt: skip
    with pytest.raises(UserError, match=r"has another vocabulary than model\.init_from"):
        train(cfg)
    # without tokenizer.path the model's own tokenizer is used, and the run trains
    run_dir = tmp_path / "b"
    train(make_cfg(run_dir, data_dir, *FAST, f"model.init_from={hf}"))
    assert (run_dir / "tokenizer" / "tokenizer.json").read_bytes() == (
        hf / "tokenizer.json"
    ).read_bytes()


@pytest.mark.parametrize("kind", ["missing", "file", "not_a_tokenizer"])
def test_bad_tokenizer_path_is_an_error_not_a_new_tokenizer(tmp_path, data_dir, kind):
    path = {
        "missing": tmp_path / "nope",
        "file": data_dir / "corpus.txt",
        "not_a_tokenizer": tmp_path,
    }[kind]
    cfg = make_cfg(tmp_path / "run", data_dir, *FAST, f"tokenizer.path={path}")
    with pytest.raises(UserError, match=re.escape(str(path))):
        train(cfg)


def test_resume_keeps_the_run_tokenizer_from_any_directory(tmp_path, data_dir, trained_run):
    """A run resumed and exported from another working directory uses the run's own tokenizer
    copy; a tokenizer.path with another vocabulary is refused on resume."""
    run_dir = copy_of(trained_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli(
        [*FAST, "optim.max_steps=6", "ckpt_path=last", "export_hf=true",
         f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"],
        cwd=elsewhere,
    )  # fmt: skip
    exported = (run_dir / "hf" / "tokenizer.json").read_bytes()
    assert exported == (run_dir / "tokenizer" / "tokenizer.json").read_bytes()
    other = other_tokenizer(run_dir / "tokenizer", tmp_path / "other")
    cfg = make_cfg(run_dir, data_dir, *FAST, "optim.max_steps=8", "ckpt_path=last",
                   f"tokenizer.path={other}")  # fmt: skip
    with pytest.raises(UserError, match=r"has sha256 \w+ but the checkpoint was trained with"):
        train(cfg)


def test_resume_refuses_a_changed_run_tokenizer(tmp_path, data_dir, trained_run):
    """The run's own tokenizer copy is checked against the hash in the checkpoint too."""
    run_dir = copy_of(trained_run, tmp_path)
    copy = run_dir / "tokenizer"
    changed = other_tokenizer(copy, tmp_path / "changed")
    shutil.copy(changed / "tokenizer.json", copy / "tokenizer.json")
    cfg = make_cfg(run_dir, data_dir, *FAST, "optim.max_steps=6", "ckpt_path=last")
    with pytest.raises(UserError, match=r"tokenizer .*/run/tokenizer has sha256 .* restore"):
        train(cfg)


def test_foreign_checkpoint_into_a_used_folder_is_refused(tmp_path, data_dir, trained_run):
    """Resuming run A's checkpoint into run B's folder would mix B's history with A's."""
    a, b = trained_run, copy_of(trained_run, tmp_path)
    before = (b / "csv" / "metrics.csv").read_text()
    ckpt = a / "checkpoints" / "step0000002.ckpt"
    cfg = make_cfg(b, data_dir, *FAST, "optim.max_steps=6", f"ckpt_path={ckpt}")
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg)
    assert (b / "csv" / "metrics.csv").read_text() == before
