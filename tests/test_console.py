"""The console of a real run shows what helps: one progress bar over the whole run, the data as
a table, the summary; no tips or deprecation notices from the libraries underneath."""

from __future__ import annotations

import re

import pytest
from runs import read_metrics, run_cli

NOISE = (
    "litlogger",  # Lightning's advertisement
    "LeafSpec",  # a torch deprecation inside Lightning
    "anonymous setting",  # wandb on an argument Lightning passes
    "sync_dist",  # Lightning on metrics bertpt reduces itself
    "exists and is not empty",  # Lightning on the checkpoint folder a resume writes into
    "Run history",  # wandb's table at the end
    "Epoch 0",  # a bar per epoch
)


def small_corpus(path):
    """30 short documents: an epoch is a few batches, so the run crosses epochs."""
    words = [
        "data",
        "model",
        "token",
        "layer",
        "train",
        "value",
        "step",
        "batch",
        "sentence",
        "word",
        "corpus",
        "mask",
    ]
    docs = []
    for d in range(30):
        sentences = [
            " ".join(words[(d + s + k) % len(words)] for k in range(6 + s)).capitalize() + "."
            for s in range(4)
        ]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.mark.slow
def test_console_of_a_run_and_its_resume(tmp_path, data_dir, tokenizer_dir):
    corpus = small_corpus(tmp_path / "corpus.txt")
    run_dir = tmp_path / "run"
    common = [
        "+experiment=tiny", "+debug=fast", "trainer=ddp_cpu", f"data.corpus={corpus}",
        f"tokenizer.path={tokenizer_dir}", "data.val_fraction=0.2", "data.max_seq_length=32",
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", "export_hf=false",
    ]  # fmt: skip
    first = run_cli([*common, "optim.max_steps=12"], cwd=tmp_path)
    resumed = run_cli([*common, "optim.max_steps=16", "ckpt_path=last"], cwd=tmp_path)
    for proc in (first, resumed):
        out = proc.stdout + proc.stderr
        for noise in NOISE:
            assert noise not in out, (noise, out[-3000:])
        assert "bertpt: done." in proc.stdout
    # one bar over the run, counting optimizer steps (the corpus makes epochs of a few steps)
    assert re.search(r"train: 100%\|[^|]*\| 12/12 ", first.stdout), first.stdout[-2000:]
    assert re.search(r"train: 100%\|[^|]*\| 16/16 ", resumed.stdout), resumed.stdout[-2000:]
    assert "loss=" in first.stdout and "mlm_acc=" in first.stdout and "seq/s=" in first.stdout
    epochs = {int(r["epoch"]) for r in read_metrics(run_dir) if r["epoch"]}
    assert max(epochs) >= 2, epochs
    # the data report as a table
    assert re.search(r"^  documents\s+\d+$", first.stdout, re.MULTILINE), first.stdout[:3000]
    assert re.search(r"^  masking_rate\s+[\d.]+%$", first.stdout, re.MULTILINE)
