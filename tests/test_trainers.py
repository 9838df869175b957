"""Every trainer configuration runs for real: the real Trainer, strategy and precision plugin.

Each `conf/trainer/*.yaml` that a CPU can run is crossed with each precision the CPU supports,
and each pair runs once: it trains a few steps, writes a checkpoint and resumes from
``ckpt_path=last``. DDP and FSDP at their configs' precisions also resume exactly and export
(test_resume_is_exact_and_exports_the_trained_weights), the other pairs only train and resume
(test_trains_checkpoints_and_resumes). FSDP runs on CPU processes (gloo) through bertpt's
strategy, so its save, resume and export are tested here too; the GPU-only configs are
exercised by tests/test_gpu.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from runs import ROOT, losses_by_step, make_cfg, read_metrics, run_cli

from bertpt.train import train

# How each CPU-runnable trainer config runs here; fsdp.yaml asks for GPUs, so it is pointed at
# CPU processes. `in_process`: one process, so train(cfg) runs inside pytest (faster); the
# others launch processes and run through the command line.
CPU_TRAINERS = {
    "default": dict(overrides=["trainer=default"], in_process=True),
    "cpu": dict(overrides=["trainer=cpu"], in_process=True),
    "ddp_cpu": dict(overrides=["trainer=ddp_cpu"], in_process=False),
    "fsdp_1": dict(
        overrides=["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1"],
        in_process=False,
    ),
    "fsdp_2": dict(
        overrides=["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"],
        in_process=False,
    ),
}
GPU_ONLY_TRAINERS = {"gpu", "ddp"}  # tests/test_gpu.py
CPU_PRECISIONS = ("32-true", "bf16-mixed")
COMMON = ["+experiment=tiny", "+debug=fast", "logger=csv"]
# The pairs that test_resume_is_exact_and_exports_the_trained_weights runs (DDP in fp32, FSDP in
# fsdp.yaml's bf16-mixed); test_trains_checkpoints_and_resumes runs the others: each pair once.
EXACT_RESUME = [("ddp_cpu", "32-true"), ("fsdp_1", "bf16-mixed"), ("fsdp_2", "bf16-mixed")]
# On a machine without a GPU, trainer=default builds trainer=cpu's Trainer
# (test_default_trainer_is_the_cpu_trainer_without_a_gpu): its cells would repeat the cpu ones.
ON_A_GPU_MACHINE = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="without a GPU trainer=default is trainer=cpu, which the cpu-* cells run",
)


def train_and_resume_cells():
    """Every (trainer, precision) pair that test_resume_is_exact_... does not run."""
    for trainer in sorted(CPU_TRAINERS):
        for precision in CPU_PRECISIONS:
            if (trainer, precision) in EXACT_RESUME:
                continue
            marks = [ON_A_GPU_MACHINE] if trainer == "default" else []
            yield pytest.param(trainer, precision, marks=marks, id=f"{trainer}-{precision}")


def run(run_dir: Path, data_dir: Path, overrides: list[str], in_process: bool) -> None:
    if in_process:
        train(make_cfg(run_dir, data_dir, *overrides))
    else:
        run_cli(
            [f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *overrides],
            cwd=run_dir.parent,
            env_extra={"PYTHONPATH": str(ROOT / "tests")},
        )


def test_every_trainer_config_is_covered():
    configs = {p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml")}
    cpu = {name.split("_")[0] if name.startswith("fsdp") else name for name in CPU_TRAINERS}
    assert configs == cpu | GPU_ONLY_TRAINERS
    # the pairs that test_trains_checkpoints_and_resumes leaves to test_resume_is_exact_... exist
    assert set(EXACT_RESUME) <= {(t, p) for t in CPU_TRAINERS for p in CPU_PRECISIONS}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU trainer=default trains on it")
def test_default_trainer_is_the_cpu_trainer_without_a_gpu(tmp_path, data_dir):
    """Why the default-* cells run on GPU machines only: without a GPU, trainer=default builds
    the Trainer that trainer=cpu builds (accelerator, devices, strategy, precision, the rest of
    the config), which the cpu-* cells run."""
    from bertpt.training.fit import build_trainer

    def built(name: str) -> tuple:
        cfg = make_cfg(tmp_path / "run", data_dir, *COMMON, f"trainer={name}")
        trainer, speed = build_trainer(cfg)
        rest = OmegaConf.to_container(cfg.trainer, resolve=True)
        rest.pop("accelerator"), rest.pop("devices")  # "auto" in default.yaml: compared as built
        chosen = (type(trainer.accelerator), trainer.num_devices, type(trainer.strategy))
        return (*chosen, type(trainer.precision_plugin), trainer.precision, speed, rest)

    assert built("default") == built("cpu")


@pytest.mark.slow
@pytest.mark.parametrize(("trainer", "precision"), train_and_resume_cells())
def test_trains_checkpoints_and_resumes(tmp_path, data_dir, trainer, precision):
    spec = CPU_TRAINERS[trainer]
    run_dir = tmp_path / "run"
    args = [*COMMON, *spec["overrides"], f"trainer.precision={precision}", "export_hf=false"]
    run(run_dir, data_dir, [*args, "optim.max_steps=4"], spec["in_process"])
    first = losses_by_step(run_dir)
    assert sorted(first) == [0, 1, 2, 3]
    assert all(math.isfinite(v) for v in first.values()), first
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4

    # Train on to step 6 in the same folder: it continues at step 4, not at 0.
    run(run_dir, data_dir, [*args, "optim.max_steps=6", "ckpt_path=last"], spec["in_process"])
    resumed = losses_by_step(run_dir)
    assert {4, 5} <= set(resumed) and all(math.isfinite(resumed[s]) for s in (4, 5)), resumed
    steps = [int(r["step"]) for r in read_metrics(run_dir) if r["train/loss"]]
    assert min(s for s in steps if s >= 4) == 4 and max(steps) == 5
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize(("trainer", "precision"), EXACT_RESUME, ids=[t for t, _ in EXACT_RESUME])
def test_resume_is_exact_and_exports_the_trained_weights(tmp_path, data_dir, trainer, precision):
    """DDP and FSDP (full state dicts) on CPU processes: resuming from the step-4 checkpoint
    gives the uninterrupted run's losses exactly (each rank's dropout continues where it was);
    the run exports the weights of its last checkpoint (gathered from the shards), which are
    not those it started from; and ``ckpt_path=last`` continues it in its folder at step 6."""
    from bertpt.model.checkpoint import model_weights, read_checkpoint
    from bertpt.model.hf import from_hf
    from bertpt.training.export import export

    args = [*COMMON, *CPU_TRAINERS[trainer]["overrides"], f"trainer.precision={precision}"]
    full, resumed, init = tmp_path / "full", tmp_path / "resumed", tmp_path / "init"
    record = ["+callbacks.init._target_=record_init.RecordInitialWeights",
              f"+callbacks.init.out_dir={init}"]  # fmt: skip
    run(full, data_dir, [*args, "optim.max_steps=6", *record], in_process=False)
    last = full / "checkpoints" / "last.ckpt"
    ckpt4 = full / "checkpoints" / "step0000004.ckpt"
    resume4 = [*args, "optim.max_steps=6", f"ckpt_path={ckpt4}", "export_hf=false"]
    run(resumed, data_dir, resume4, in_process=False)
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(b) == [4, 5]
    assert all(a[s] == b[s] for s in (4, 5)), (a, b)

    # The export at the end and the export of last.ckpt hold last.ckpt's weights ...
    export(last, tmp_path / "from_ckpt")
    at_end = from_hf(full / "hf").state_dict()
    from_ckpt = from_hf(tmp_path / "from_ckpt").state_dict()
    in_ckpt = read_checkpoint(last)
    assert in_ckpt.step == 6
    assert at_end.keys() == from_ckpt.keys() == in_ckpt.state_dict.keys()
    for name, exported in (("the export at the end", at_end), ("its export", from_ckpt)):
        differ = [k for k in exported if not torch.equal(exported[k], in_ckpt.state_dict[k])]
        assert not differ, f"{name} is not last.ckpt's weights: {differ}"
    # ... which trained: every tensor moved away from the weights the run started from (an
    # export of the initial weights, or of anything but the trained model, fails here)
    initial = model_weights(torch.load(init / "initial.pt", weights_only=True), "initial.pt")
    assert initial.keys() == at_end.keys()
    unmoved = [k for k in initial if torch.equal(initial[k], at_end[k])]
    assert not unmoved, f"exported as they were before the first step: {unmoved}"

    # ckpt_path=last trains the finished run on in its folder: from step 6, each step once
    more = [*args, "optim.max_steps=8", "ckpt_path=last", "export_hf=false"]
    run(full, data_dir, more, in_process=False)
    steps = [int(r["step"]) for r in read_metrics(full) if r["train/loss"]]
    assert steps == list(range(8)), steps
    c = losses_by_step(full)
    assert all(c[s] == a[s] for s in range(6)) and all(math.isfinite(c[s]) for s in (6, 7)), c
    assert read_checkpoint(last).step == 8


def _grads(out_dir: Path) -> list[dict]:
    lines = (out_dir / "grads_rank0.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _clipping_run(tmp_path: Path, data_dir: Path, precision: str, fused: bool) -> tuple:
    """Six steps clipped at a norm far below the gradients' (0.05): the logged norm and the
    norms that a callback measured before clipping and after the step."""
    run_dir, grads = tmp_path / f"{precision}-{fused}", tmp_path / f"grads-{precision}-{fused}"
    if precision == "16-mixed":
        # Lightning turns 16-mixed into bf16 on a CPU; the real plugin with a real GradScaler
        # runs there when it is passed explicitly.
        precision_args = [
            "trainer.precision=null",
            "+trainer.plugins=[{_target_: lightning.pytorch.plugins.precision.MixedPrecision, "
            "precision: 16-mixed, device: cpu, scaler: {_target_: torch.amp.GradScaler, "
            "device: cpu}}]",
        ]
    else:
        precision_args = [f"trainer.precision={precision}"]
    cfg = make_cfg(
        run_dir,
        data_dir,
        *COMMON,
        "trainer=cpu",
        *precision_args,
        f"trainer.fused_optimizer={fused}",
        "trainer.gradient_clip_val=0.05",
        "optim.max_steps=6",
        "export_hf=false",
        "+callbacks.grads._target_=record_grads.RecordGrads",
        f"+callbacks.grads.out_dir={grads}",
    )
    train(cfg)
    logged = {
        int(r["step"]): float(r["train/grad_norm"])
        for r in read_metrics(run_dir)
        if r.get("train/grad_norm")
    }
    return logged, _grads(grads)


@pytest.mark.slow
def test_ddp_with_compiled_unpadded_layers(tmp_path, data_dir):
    """What trainer=ddp runs on GPUs (DDP, the layers compiled, the unpadded path with its eager
    attention call between compiled parts), on two CPU processes with inductor: it trains,
    never recompiles after the first step (FailOnRecompile raises), validates and exports."""
    run_dir = tmp_path / "run"
    run(
        run_dir,
        data_dir,
        [*COMMON, "trainer=ddp_cpu", "trainer.compile=true", "model.unpad=true",
         "optim.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
         "+callbacks.recompile._target_=no_recompile.FailOnRecompile"],
        in_process=False,
    )  # fmt: skip
    losses = losses_by_step(run_dir)
    assert list(losses) == list(range(6)) and all(math.isfinite(x) for x in losses.values())
    assert (run_dir / "hf" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_clipping_under_every_precision(tmp_path, data_dir, fused):
    """Clipping works with a fused or unfused AdamW under fp32, bf16 and fp16 (GradScaler):
    the gradients the optimizer used have at most the clip norm, and the logged norm is the
    one before clipping (unscaled under fp16)."""
    reference = None
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        logged, grads = _clipping_run(tmp_path, data_dir, precision, fused)
        finite = [g for g in grads if math.isfinite(logged[g["step"]])]
        # fp16 may skip its first steps while the GradScaler finds its scale
        assert len(finite) >= (3 if precision == "16-mixed" else 6), (precision, logged)
        for g in finite:
            assert logged[g["step"]] > 0.5, (precision, g)  # far above the clip: it did clip
            assert g["after"] <= 0.05 * (1 + 1e-3), (precision, g)
            if precision != "16-mixed":
                assert logged[g["step"]] == pytest.approx(g["before"], rel=1e-4), (precision, g)
        if reference is None:
            reference = logged
        else:  # the same first step in another precision: same norm, not a scaled one
            step = min(g["step"] for g in finite)
            assert logged[step] == pytest.approx(reference[step], rel=0.1), (precision, logged)


def test_wandb_that_cannot_start_falls_back_to_csv(tmp_path, data_dir, caplog):
    """A W&B that fails to start (here: an invalid setting that wandb itself rejects) costs one
    warning; the run trains and logs to CSV."""
    run_dir = tmp_path / "run"
    cfg = make_cfg(
        run_dir,
        data_dir,
        "+experiment=tiny",
        "+debug=fast",
        "logger=wandb",
        "export_hf=false",
        "+logger.wandb.settings.mode=bogus",
    )
    with caplog.at_level("WARNING", logger="bertpt.training.loggers"):
        metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    warnings = [r for r in caplog.records if r.name == "bertpt.training.loggers"]
    assert len(warnings) == 1 and "logger wandb cannot start" in warnings[0].getMessage()
    assert "bogus" in warnings[0].getMessage()
    assert len(losses_by_step(run_dir)) == 4 and not list(run_dir.glob("wandb/offline-run-*"))


@pytest.mark.slow
def test_missing_wandb_falls_back_to_csv(tmp_path, data_dir):
    """Without an importable wandb the command still trains (CSV) and says so in one line."""
    fake = tmp_path / "no_wandb" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["+experiment=tiny", "+debug=fast", "export_hf=false", f"paths.data_dir={data_dir}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(tmp_path / "no_wandb")},
    )  # fmt: skip
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "logger wandb" in lines[0], proc.stderr[-2000:]
    assert len(losses_by_step(run_dir)) == 4
