"""Reproducible end to end: the same corpus, config and seed give the same tokenizer file and, on
CPU, the same weights, from two processes that each start from the bare corpus."""

from __future__ import annotations

import shutil

import pytest
from runs import run_cli


@pytest.mark.slow
def test_two_processes_from_scratch_train_the_same_model(tmp_path, default_corpus):
    runs = []
    for name, seed in (("a", "0"), ("b", "12345")):
        data = tmp_path / f"data_{name}"  # nothing cached: each trains its own tokenizer
        data.mkdir()
        shutil.copy(default_corpus, data / "corpus.txt")
        run_dir = tmp_path / f"run_{name}"
        run_cli(
            ["+experiment=tiny", "+debug=fast", "logger=csv", f"paths.data_dir={data}",
             f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env_extra={"PYTHONHASHSEED": seed},  # a different hash order in each process
        )  # fmt: skip
        runs.append(run_dir)
    a, b = runs
    for file in ("tokenizer/tokenizer.json", "tokenizer/vocab.txt", "hf/model.safetensors"):
        assert (a / file).read_bytes() == (b / file).read_bytes(), file
