"""Training end to end: config composition, a CPU run, resume, DDP, multirun, overfitting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf
from runs import ROOT, free_port, losses_by_step, make_cfg, read_metrics, run_cli

from bertpt.common.errors import UserError
from bertpt.train import train
from bertpt.training.config_check import check_config
from bertpt.training.run_rules import per_device_batch_size

# What a config does on a machine without a GPU: skipped on one, where test_gpu.py checks the
# GPU side.
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path, experiment):
    extra = ["model.init_from=/some/phase1/hf"] if experiment == "base_phase2" else []
    cfg = make_cfg(tmp_path, tmp_path, f"+experiment={experiment}", *extra)
    assert cfg.run_name == experiment
    assert cfg.trainer.max_steps == cfg.optim.max_steps
    if experiment.startswith("base"):
        assert cfg.model.num_hidden_layers == 12 and cfg.model.hidden_size == 768
        assert cfg.data.global_batch_size == 256 and cfg.trainer.precision == "bf16-mixed"
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == -1
    if experiment == "base":
        assert (cfg.data.max_seq_length, cfg.optim.lr, cfg.optim.warmup_steps) == (128, 1e-4, 10000)
        assert cfg.optim.max_steps == 1_000_000
    if experiment == "base_phase2":
        assert cfg.data.max_seq_length == 512
    if experiment.startswith("roberta"):
        check_config(cfg, None)  # what the command checks first: the recipe's pieces agree
        assert (cfg.model.model_type, cfg.model.pad_token_id, cfg.model.type_vocab_size) == (
            "roberta",
            1,
            1,
        )
        assert (cfg.tokenizer.kind, cfg.tokenizer.lowercase, cfg.data.objective) == (
            "bpe",
            False,
            "mlm",
        )
        assert (*cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (0.9, 0.98, 1e-6, 0.01)
    if experiment == "roberta_base":
        assert cfg.model.num_hidden_layers == 12 and cfg.model.hidden_size == 768
        assert (cfg.model.max_position_embeddings, cfg.data.max_seq_length) == (514, 512)
        assert (cfg.tokenizer.vocab_size, cfg.optim.lr, cfg.optim.warmup_steps) == (
            50265,
            6e-4,
            24000,
        )
        assert cfg.optim.max_steps == 500_000 and cfg.trainer.precision == "bf16-mixed"
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == -1
        # 8192 sequences a step: 32 per GPU on 8 GPUs, accumulated 32 times
        batch, accumulate = cfg.data.global_batch_size, cfg.trainer.accumulate_grad_batches
        assert batch == 8192 and per_device_batch_size(batch, 8, accumulate) == 32


def test_command_line_group_beats_experiment(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path, "+experiment=base", "model=tiny", "trainer=cpu")
    assert cfg.model.num_hidden_layers == 2 and cfg.trainer.accelerator == "cpu"


def test_fast_cpu_run(tmp_path, data_dir):
    run = tmp_path / "run"
    cfg = make_cfg(run, data_dir, "+experiment=tiny", "+debug=fast")
    metrics = train(cfg)
    for key in ("train/loss", "val/mlm_loss", "val/mlm_acc", "val/nsp_acc", "val/nsp_loss"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "step0000004.ckpt").is_file()
    rows = read_metrics(run)
    logged = set().union(*(k for r in rows for k, v in r.items() if v))
    for key in (
        "train/loss",
        "train/mlm_loss",
        "train/nsp_loss",
        "train/mlm_acc",
        "train/nsp_acc",
        "train/grad_norm",
        "train/seq_per_s",
        "train/tok_per_s",
        "train/lr",
        "val/mlm_loss",
        "val/mlm_acc",
        "val/nsp_acc",
        "val/nsp_loss",
        "val/perplexity",
    ):
        assert any(r.get(key) for r in rows), f"{key} not in metrics.csv ({sorted(logged)})"
    wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and wandb_runs[0].stat().st_size > 0
    # the Hugging Face export is there and loads
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    AutoTokenizer.from_pretrained(run / "hf")
    AutoModelForMaskedLM.from_pretrained(run / "hf")


def test_nan_stops_with_step(tmp_path, data_dir):
    cfg = make_cfg(
        tmp_path / "run",
        data_dir,
        "+experiment=tiny",
        "+debug=fast",
        "optim.lr=1e30",
        "trainer.gradient_clip_val=null",
        "export_hf=false",
    )
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+"):
        train(cfg)


def test_batch_not_divisible(tmp_path, data_dir):
    cfg = make_cfg(
        tmp_path / "run",
        data_dir,
        "+experiment=tiny",
        "+debug=fast",
        "data.global_batch_size=9",
        "trainer.accumulate_grad_batches=2",
    )
    with pytest.raises(UserError, match=r"global_batch_size=9 is not divisible .* \(1 x 2 = 2\)"):
        train(cfg)


def test_seq_longer_than_positions(tmp_path, data_dir):
    cfg = make_cfg(tmp_path / "run", data_dir, "+experiment=tiny", "data.max_seq_length=1024")
    with pytest.raises(UserError, match=r"max_seq_length=1024 exceeds .*=512"):
        train(cfg)


@pytest.mark.slow
@CPU_ONLY
def test_base_experiment_smoke(tmp_path, data_dir, caplog):
    """`+experiment=base` starts on a CPU-only machine (warns, falls back to one CPU device,
    eager) and takes 2 steps."""
    cfg = make_cfg(
        tmp_path / "run",
        data_dir,
        "+experiment=base",
        "tokenizer.vocab_size=8192",
        "optim.max_steps=2",
        "optim.warmup_steps=1",
        "data.global_batch_size=4",
        "data.num_proc=1",
        "trainer.val_check_interval=2",
        "data.val_max_pairs=4",
        "trainer.num_workers=0",
        "export_hf=false",
        "logger=csv",
    )
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.compile is True  # what base asks
    with caplog.at_level("WARNING"):
        metrics = train(cfg)
    assert "no GPU here: running on the CPU with 1 device" in caplog.text
    assert "not compiled (asked: " in caplog.text
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2


def test_overfit_one_batch(data_dir, tmp_path):
    """One fixed batch, 40 steps: the MLM + NSP loss must fall far."""
    from bertpt.training.datamodule import PretrainDataModule
    from bertpt.training.module import BertPretrainModule

    cfg = make_cfg(tmp_path, data_dir, "+experiment=tiny", "+debug=fast")
    dm = PretrainDataModule(cfg.data, cfg.tokenizer, cfg.paths, seed=0)
    dm.prepare_data()
    dm.setup()
    batch = dm.train_collator([dm.train_pairs[i] for i in range(16)])
    model_cfg = {k: v for k, v in cfg.model.items() if k != "init_from"}
    model_cfg.update(
        vocab_size=dm.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    module = BertPretrainModule(
        model_cfg, {**cfg.optim, "lr": 3e-3, "warmup_steps": 0, "max_steps": 1000}
    )
    module.configure_model()
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(40):
        loss = module.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


@pytest.mark.slow
def test_exact_resume(tmp_path, data_dir):
    """Resume from the step-4 checkpoint of an 8-step run (2 loader workers, validation between
    checkpoints): the losses of steps 4-7 equal the uninterrupted run's."""
    common = [
        "+experiment=tiny",
        "+debug=fast",
        "optim.max_steps=8",
        "optim.warmup_steps=2",
        "trainer.num_workers=2",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        "trainer.val_check_interval=3",
        "export_hf=false",
        "logger=csv",
    ]
    full = tmp_path / "full"
    train(make_cfg(full, data_dir, *common))
    ckpt = full / "checkpoints" / "step0000004.ckpt"
    resumed = tmp_path / "resumed"
    train(make_cfg(resumed, data_dir, *common, f"ckpt_path={ckpt}"))

    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(a) == list(range(8)) and sorted(b) == list(range(4, 8))
    for step in range(4, 8):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])


@pytest.mark.slow
def test_ddp_two_processes_disjoint(tmp_path, data_dir):
    run = tmp_path / "ddp"
    seen = tmp_path / "seen"
    run_cli(
        [
            "+experiment=tiny",
            "+debug=fast",
            "trainer=ddp_cpu",
            "optim.max_steps=6",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run}",
            "logger=csv",
            "+callbacks.record._target_=record_batches.RecordBatches",
            f"+callbacks.record.out_dir={seen}",
        ],
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(ROOT / "tests")},
    )
    r0 = (seen / "seen_rank0.txt").read_text().split()
    r1 = (seen / "seen_rank1.txt").read_text().split()
    assert len(r0) == len(r1) == 6 * 4  # 6 steps x (global batch 8 / 2 ranks)
    assert not set(r0) & set(r1), "ranks saw the same sequence"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
    assert (run / "hf" / "model.safetensors").is_file()


def test_init_from_keeps_gradient_checkpointing(tmp_path):
    """Starting from a Hugging Face folder keeps the run's gradient_checkpointing setting."""
    from bertpt.model.bert import BertConfig, BertForPreTraining
    from bertpt.model.hf import to_hf
    from bertpt.training.module import BertPretrainModule

    small = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    to_hf(BertForPreTraining(BertConfig(**small)), tmp_path / "hf")
    module = BertPretrainModule(
        {**small, "gradient_checkpointing": True}, {}, init_from=str(tmp_path / "hf")
    )
    module.configure_model()
    assert module.model.bert.encoder.gradient_checkpointing is True
    assert module.hparams.model_config["gradient_checkpointing"] is True


@pytest.mark.slow
def test_optuna_sweep_minimises_val_mlm_loss(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "+experiment=tiny",
            "+debug=fast",
            "+hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "export_hf=false",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
            "logger=csv",
        ],
        cwd=tmp_path,
    )
    finals = []
    for job in ("0", "1"):
        rows = [r for r in read_metrics(sweep / job) if r.get("val/mlm_loss")]
        finals.append(float(rows[-1]["val/mlm_loss"]))
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == pytest.approx(min(finals), rel=1e-6)
    assert set(result.best_params) == {"optim.lr", "optim.warmup_steps"}


def test_fsdp_config_wraps_each_layer(tmp_path):
    """trainer=fsdp: one FSDP unit per BertLayer (the tied embedding/decoder stay in the root)."""
    from bertpt.model.bert import BertConfig, BertForPreTraining, BertLayer

    cfg = make_cfg(tmp_path, tmp_path, "+experiment=large", "logger=csv")
    assert cfg.trainer.strategy._target_.endswith("FSDPStrategy")
    policy = hydra_instantiate(cfg.trainer.strategy.auto_wrap_policy)
    model = BertForPreTraining(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    wrapped = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert len(wrapped) == 3 and all(isinstance(m, BertLayer) for m in wrapped)


@CPU_ONLY
def test_fsdp_config_falls_back_on_a_cpu(tmp_path, caplog):
    """Without a GPU trainer=fsdp warns and runs on one CPU device (Lightning's FSDP is
    GPU-only), still writing its checkpoints atomically."""
    from bertpt.training.fit import AtomicCheckpointIO, build_trainer

    cfg = make_cfg(tmp_path, tmp_path, "+experiment=large", "logger=csv")
    with caplog.at_level("WARNING", logger="bertpt.train"):
        trainer, _ = build_trainer(cfg)
    assert "no GPU here" in caplog.text
    assert trainer.num_devices == 1 and type(trainer.strategy).__name__ == "SingleDeviceStrategy"
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@CPU_ONLY
def test_gpu_config_on_a_cpu_turns_compile_off(tmp_path, caplog):
    """trainer=gpu compiles on a GPU; on a CPU it runs eager (inductor on a CPU costs minutes
    for nothing), while a CPU config that asks for trainer.compile keeps it."""
    from bertpt.training.fit import build_trainer

    gpu = make_cfg(tmp_path, tmp_path, "trainer=gpu", "logger=csv")
    assert gpu.trainer.compile is True
    cpu = make_cfg(tmp_path, tmp_path, "trainer.compile=true", "logger=csv")
    with caplog.at_level("WARNING", logger="bertpt.train"):
        trainer, speed = build_trainer(gpu)
    assert "not compiled" in caplog.text and speed["compile"] is False
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    assert build_trainer(cpu)[1]["compile"] is True


TINY_TEXT = (
    "a small model reads each sentence of the text and learns to predict the word that was "
    "masked from the words around it"
)


def write_tiny_corpus(path: Path, docs: int = 8, sentences: int = 6) -> Path:
    """A corpus in BERT format of ``docs`` documents: at data.max_seq_length=32 about 20
    training pairs, an epoch of 2 or 3 batches of 8."""
    words = TINY_TEXT.split()
    lines = []
    for doc in range(docs):
        for s in range(sentences):
            lines += [" ".join(words[(3 * doc + s + k) % len(words)] for k in range(9)) + "."]
        lines += [""]
    path.write_text("\n".join(lines))
    return path


def test_epochs_reshuffle_training_and_keep_validation(tmp_path, tokenizer_dir):
    """A real run over a corpus of a few batches an epoch, 10 steps: every epoch trains on other
    batches (the sampler follows the epoch), while every validation sees the same pairs and
    masks, whichever epoch it runs in (Lightning sets the epoch of validation samplers too)."""
    data, seen = tmp_path / "data", tmp_path / "seen"
    data.mkdir()
    write_tiny_corpus(data / "corpus.txt")
    cfg = make_cfg(
        tmp_path / "run", data, "+experiment=tiny", "+debug=fast", "optim.max_steps=10",
        "data.max_seq_length=32", f"tokenizer.path={tokenizer_dir}", "export_hf=false",
        "logger=csv", "+callbacks.record._target_=record_epochs.RecordEpochs",
        f"+callbacks.record.out_dir={seen}",
    )  # fmt: skip
    train(cfg)
    records = [json.loads(line) for line in (seen / "batches.jsonl").read_text().splitlines()]

    epochs: dict[int, list[str]] = {}
    for r in records:
        if r["stage"] == "train":
            epochs.setdefault(r["epoch"], []).append(r["batch"])
    sizes = {epoch: len(batches) for epoch, batches in epochs.items()}
    assert len(epochs) >= 3 and sizes[0] == sizes[1] >= 2, sizes  # epochs of a few batches
    first = set(epochs[0])
    for epoch, batches in epochs.items():
        if epoch > 0:
            assert not first & set(batches), f"epoch {epoch} repeats batches of epoch 0"

    validations: dict[int, tuple[set[int], list[str]]] = {}
    for r in records:
        if r["stage"] == "val":
            in_epochs, batches = validations.setdefault(r["validation"], (set(), []))
            in_epochs.add(r["epoch"])
            batches.append(r["batch"])
    assert len(validations) == 5  # val_check_interval=2: after steps 2, 4, ..., 10
    assert set().union(*(e for e, _ in validations.values())) >= {0, 1, 2}, validations
    reference = validations[1][1]
    assert len(reference) > 1
    for number, (in_epochs, batches) in validations.items():
        assert batches == reference, f"validation {number} (epoch {in_epochs}) saw other batches"


@pytest.mark.slow
def test_two_nodes_with_torchrun(tmp_path, default_corpus):
    """Two "nodes" on this machine (torchrun --nnodes=2, one CPU process each, gloo): each node's
    rank 0 prepares the same fresh data folder at once, ranks see disjoint data, rank 0 writes."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(default_corpus, data / "corpus.txt")
    run, seen = tmp_path / "run", tmp_path / "seen"
    port = free_port()
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT / "tests"),
        "OMP_NUM_THREADS": "1",
    }
    nodes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                "--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1",
                f"--master-port={port}", "-m", "bertpt.train",
                "+experiment=tiny", "+debug=fast", "trainer=ddp_cpu", "trainer.devices=1",
                "trainer.num_nodes=2", "optim.max_steps=4", f"paths.data_dir={data}",
                f"hydra.run.dir={run}", "logger=csv",
                "+callbacks.record._target_=record_batches.RecordBatches",
                f"+callbacks.record.out_dir={seen}",
            ],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    r0 = (seen / "seen_rank0.txt").read_text().split()
    r1 = (seen / "seen_rank1.txt").read_text().split()
    assert len(r0) == len(r1) == 4 * 4  # 4 steps x (global batch 8 / 2 nodes)
    assert not set(r0) & set(r1), "the nodes saw the same sequence"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    assert (run / "hf" / "model.safetensors").is_file()
    assert "bertpt: Hugging Face export" in logs[0] and "bertpt: done" not in logs[1]


@pytest.mark.slow
def test_two_nodes_under_slurm_variables(tmp_path, data_dir):
    """The README's sbatch line, with the variables srun gives each task (2 nodes x 1 task, CPU):
    Lightning takes the ranks from SLURM and the run trains across both."""
    port = free_port()
    run, seen = tmp_path / "run", tmp_path / "seen"
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "WANDB_MODE": "offline",
            "PYTHONPATH": str(ROOT / "tests"),
            "OMP_NUM_THREADS": "1",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "bertpt-test",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NNODES": "2",
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NODELIST": "127.0.0.1",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": str(rank),
            "MASTER_PORT": str(port),
        }
        args = [
            "+experiment=tiny", "+debug=fast", "trainer=ddp_cpu", "optim.max_steps=4",
            f"trainer.num_nodes={env['SLURM_JOB_NUM_NODES']}",
            f"trainer.devices={env['SLURM_NTASKS_PER_NODE']}",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={run}", "logger=csv",
            "+callbacks.record._target_=record_batches.RecordBatches",
            f"+callbacks.record.out_dir={seen}",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bertpt.train", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    r0 = (seen / "seen_rank0.txt").read_text().split()
    r1 = (seen / "seen_rank1.txt").read_text().split()
    assert len(r0) == len(r1) == 4 * 4 and not set(r0) & set(r1)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_trainer_plugins_from_config_are_kept(tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from bertpt.training.fit import AtomicCheckpointIO, build_trainer

    cfg = make_cfg(tmp_path, tmp_path, "+experiment=tiny", "logger=csv", "trainer=cpu")
    assert isinstance(build_trainer(cfg)[0].strategy.checkpoint_io, AtomicCheckpointIO)
    target = "lightning.pytorch.plugins.io.TorchCheckpointIO"
    cfg = make_cfg(
        tmp_path, tmp_path, "+experiment=tiny", "logger=csv", "trainer=cpu",
        f"+trainer.plugins=[{{_target_: {target}}}]",
    )  # fmt: skip
    io = build_trainer(cfg)[0].strategy.checkpoint_io
    assert type(io) is TorchCheckpointIO


def test_small_validation_set_is_served_in_passes(tmp_path, data_dir):
    """A validation split of fewer pairs than data.val_min_pairs is served in several passes
    (epochs 0, 1, ...: other pairs and masks), the same at every check, capped at val_max_pairs."""
    from bertpt.training.datamodule import PretrainDataModule

    cfg = make_cfg(
        tmp_path, data_dir, "+experiment=tiny", "data.val_min_pairs=1000", "data.val_max_pairs=1500"
    )
    dm = PretrainDataModule(cfg.data, cfg.tokenizer, cfg.paths, seed=0)
    dm.prepare_data()
    dm.setup()
    n = len(dm.val_pairs)
    assert n < 1000  # the default corpus holds out a few dozen documents
    keys = list(dm.val_dataloader().sampler)
    passes = -(-1000 // n)
    assert len(keys) == min(passes * n, 1500) >= 1000
    assert {epoch for epoch, _ in keys} == set(range(passes))
    batches = list(dm.val_dataloader())
    assert sum(len(b["input_ids"]) for b in batches) == len(keys)
    again = list(dm.val_dataloader())
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, again, strict=True))
    # the passes differ: the pairs of epoch 1 are not those of epoch 0
    import numpy as np

    pairs = dm.val_pairs
    pairs.set_epoch(0)
    first = [pairs[i]["input_ids"] for i in range(20)]
    pairs.set_epoch(1)
    second = [pairs[i]["input_ids"] for i in range(20)]
    assert sum(np.array_equal(a, b) for a, b in zip(first, second, strict=True)) < 10
