"""Every user mistake we know of, through the real command: exit status 2, one line on stderr
(`error: <what> — <fix>`) naming the offending value, and no run folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from runs import run_cli

# (id, overrides, text the error line must contain). {tmp} is the test's folder, {data} the
# shared data folder; the files a row needs are made by FILES below.
MISTAKES = [
    ("missing corpus", ["data.corpus={tmp}/nonexistent.txt"], "nonexistent.txt"),
    ("empty corpus", ["data.corpus={tmp}/empty.txt"], "empty.txt"),
    ("binary corpus", ["data.corpus={tmp}/binary.bin"], "binary.bin"),
    ("invalid utf-8 corpus", ["data.corpus={tmp}/latin.txt"], "latin.txt"),
    ("one-document corpus", ["data.corpus={tmp}/one_doc.txt"], "one_doc.txt"),
    ("heads do not divide hidden", ["model.num_attention_heads=5"], "num_attention_heads=5"),
    ("unknown activation", ["model.hidden_act=tanh"], "model.hidden_act='tanh'"),
    ("zero layer norm epsilon", ["model.layer_norm_eps=0"], "model.layer_norm_eps=0"),
    ("sequence beyond positions", ["data.max_seq_length=1024"], "max_seq_length=1024"),
    ("trainer.max_steps set", ["trainer.max_steps=800"], "set optim.max_steps=800"),
    ("trainer.max_steps unbounded", ["trainer.max_steps=-1"], "optim.max_steps"),
    ("optim.max_steps unbounded", ["optim.max_steps=-1"], "optim.max_steps=-1"),
    ("epochs instead of steps", ["trainer.max_epochs=3"], "trainer.max_epochs=3"),
    ("misspelled key", ["trainer.max_step=5"], "did you mean optim.max_steps"),
    ("misspelled key with +", ["+trainer.max_step=5"], "did you mean optim.max_steps"),
    ("+ key nothing reads", ["+foo=1"], "foo is not a setting"),
    ("misspelled group", ["optm.lr=1e-3"], "did you mean optim.lr"),
    ("unknown config of a group", ["trainer=gpux"], "trainer=gpux"),
    ("zero learning rate", ["optim.lr=0"], "optim.lr=0"),
    ("negative warmup", ["optim.warmup_steps=-5"], "optim.warmup_steps=-5"),
    ("zero batch", ["data.global_batch_size=0"], "data.global_batch_size=0"),
    ("batch not divisible", ["trainer=ddp_cpu", "data.global_batch_size=9"], "global_batch_size=9"),
    ("skip steps in 2 processes", ["trainer=ddp_cpu", "on_nan=skip"], "on_nan=skip works in one"),
    ("mask probability", ["data.mlm_probability=1.5"], "data.mlm_probability=1.5"),
    ("model vocab set", ["model.vocab_size=100"], "set tokenizer.vocab_size=100"),
    ("missing tokenizer", ["tokenizer.path={tmp}/no_tokenizer"], "no_tokenizer"),
    ("tokenizer is a file", ["tokenizer.path={tmp}/empty.txt"], "empty.txt"),
    ("missing init_from", ["model.init_from={tmp}/no_model"], "no_model"),
    ("missing checkpoint", ["ckpt_path={tmp}/none.ckpt"], "none.ckpt"),
    ("resume without its folder", ["ckpt_path=last"], "hydra.run.dir"),
    ("on_nan option", ["on_nan=ignore"], "on_nan='ignore'"),
    ("betas not a pair", ["optim.betas=0.9"], "optim.betas=0.9"),
    ("precision unknown", ["trainer.precision=8-mixed"], "trainer.precision='8-mixed'"),
    ("vocabulary too large", ["tokenizer.vocab_size=1000000"], "vocab_size (1000000)"),
    ("unknown tokenizer kind", ["tokenizer.kind=unigram"], "tokenizer.kind='unigram'"),
    ("lowercased BPE", ["tokenizer.kind=bpe"], "set tokenizer.lowercase=false"),
    (
        "BPE under a BERT's padding",
        ["tokenizer.kind=bpe", "tokenizer.lowercase=false"],
        "set model.pad_token_id=1",
    ),
    ("MLM only on a BERT", ["data.objective=mlm"], "data.objective=mlm"),
    (
        "pairs on a RoBERTa",
        ["model=roberta_tiny", "tokenizer.kind=bpe", "tokenizer.lowercase=false"],
        "data.objective=nsp",
    ),
]

FILES = {
    "empty.txt": b"",
    "binary.bin": bytes(range(256)) * 64,
    "latin.txt": "caf\xe9 na\xefve r\xe9sum\xe9 \xe0 la fa\xe7on. ".encode("latin-1") * 40,
    "one_doc.txt": b"Only one document here. With two sentences.\n",
}


@pytest.mark.parametrize(
    ("overrides", "named"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_mistake_is_one_line(tmp_path, data_dir, overrides, named):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    run_dir = tmp_path / "run"
    args = [o.format(tmp=tmp_path, data=data_dir) for o in overrides]
    proc = run_cli(
        ["+experiment=tiny", "+debug=fast", "logger=csv", f"paths.data_dir={data_dir}",
         f"hydra.run.dir={run_dir}", *args],
        cwd=tmp_path,
        check=False,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and " — " in lines[0], lines[0]
    assert named in lines[0], lines[0]
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


def test_every_mistake_row_names_its_value():
    ids = [m[0] for m in MISTAKES]
    assert len(ids) == len(set(ids))
    assert all(named for _, _, named in MISTAKES)


def test_full_traceback_with_hydra_full_error(tmp_path, data_dir):
    proc = run_cli(
        ["+experiment=tiny", "optim.lr=0", f"paths.data_dir={data_dir}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, check=False, env_extra={"HYDRA_FULL_ERROR": "1"},
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_config_errors_come_before_torch(tmp_path):
    """The check runs without importing torch or Lightning (that is what makes it fast)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bertpt.training.config_check import check_overrides, settings\n"
        "settings(); check_overrides(['optim.lr=1e-3', 'trainer=cpu'])\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.parametrize("precision", ["32", "16", "bf16", "32-true", "bf16-mixed"])
def test_lightning_precision_aliases_pass_the_check(tmp_path, precision):
    from runs import make_cfg

    from bertpt.training.config_check import check_config

    cfg = make_cfg(tmp_path, tmp_path, "+experiment=tiny", f"trainer.precision={precision}")
    check_config(cfg, None)
