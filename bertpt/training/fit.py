"""Build and run a pretraining run from a checked config: Trainer, data, module, fit, export.

This is the heavy half of ``python -m bertpt.train`` (torch, Lightning); ``bertpt.train`` checks
the config first and imports this only when the config is good.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from bertpt.model.checkpoint import atomic_torch_save
from bertpt.model.hf import to_hf
from bertpt.runs import folder as run_folder
from bertpt.runs import report
from bertpt.training import precision
from bertpt.training.console import quiet_dependencies
from bertpt.training.datamodule import PretrainDataModule
from bertpt.training.export import model_from_module_state
from bertpt.training.loggers import build_loggers, finish_loggers
from bertpt.training.module import BertPretrainModule
from bertpt.training.preflight import Resume, choose_tokenizer, read_resume
from bertpt.training.run_rules import checkpoint_path

log = logging.getLogger(__name__)

# Keys of conf/trainer that change only the speed and that Lightning's Trainer does not take.
SPEED_KEYS = ("num_workers", "pad_to_multiple_of", "compile", "fused_optimizer")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes local files with :func:`atomic_torch_save`.

    Remote URLs (``s3://``, ``gs://`` ...) keep Lightning's writer: object stores already put
    an object all at once.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"storage_options is not supported by {type(self).__name__}: "
                f"got {storage_options!r}; drop it or use a custom CheckpointIO"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def _fit_to_machine(trainer_cfg: dict[str, Any], speed: dict[str, Any]) -> None:
    """Run a GPU config on a machine without a GPU: warn and use what the CPU supports. Then
    resolve ``precision: auto`` (bertpt.training.precision) and say once which precision the run
    uses."""
    if trainer_cfg.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        cpu_precision, _ = precision.resolve(precision.AUTO, "cpu")
        log.warning(
            "no GPU here: running on the CPU with 1 device, %s, not compiled (asked: %s "
            "devices, %s, %s)",
            cpu_precision,
            trainer_cfg.get("devices"),
            trainer_cfg.get("strategy"),
            trainer_cfg.get("precision"),
        )
        trainer_cfg.update(accelerator="cpu", devices=1, strategy="auto", precision=cpu_precision)
        speed["compile"] = False  # compiling for a CPU run of a GPU config costs minutes
    elif not torch.cuda.is_available() and str(trainer_cfg.get("precision")).startswith("16"):
        log.warning("fp16 needs a GPU: using 32-true on the CPU")
        trainer_cfg["precision"] = "32-true"
    chosen, why = precision.resolve(trainer_cfg.get("precision"), trainer_cfg.get("accelerator"))
    trainer_cfg["precision"] = chosen
    log.info("precision: %s (%s)", chosen, why)


def _model_config(cfg: DictConfig) -> dict[str, Any]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("init_from", None)
    return model_cfg


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c and "_target_" in c]


def build_trainer(
    cfg: DictConfig, wandb_id: str | None = None
) -> tuple[pl.Trainer, dict[str, Any]]:
    """The Trainer of conf/trainer (fitted to this machine), and the speed keys it does not take."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    speed = {k: trainer_cfg.pop(k, None) for k in SPEED_KEYS}
    _fit_to_machine(trainer_cfg, speed)
    # The run's config (hparams.yaml, W&B, report.md) records the precision that ran, not "auto".
    cfg.trainer.precision = trainer_cfg["precision"]
    plugins = [hydra.utils.instantiate(p) for p in trainer_cfg.pop("plugins", None) or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a crash mid-write never leaves a corrupt last.ckpt
    trainer: pl.Trainer = hydra.utils.instantiate(
        trainer_cfg,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=build_loggers(cfg.get("logger"), cfg.paths.output_dir, wandb_id) or False,
        plugins=plugins,
    )
    return trainer, speed


def pretrain(cfg: DictConfig) -> dict[str, float]:
    """Pretrain with a composed, checked config; return the final metrics."""
    quiet_dependencies()
    if cfg.optim.warmup_steps >= cfg.optim.max_steps:
        log.warning(
            "optim.warmup_steps=%d is not below optim.max_steps=%d: the learning rate never "
            "reaches optim.lr in this run",
            cfg.optim.warmup_steps,
            cfg.optim.max_steps,
        )
    model_cfg = _model_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt = checkpoint_path(cfg.ckpt_path, output_dir) if cfg.ckpt_path else None
    resume = read_resume(ckpt, model_cfg) if ckpt else None
    init_from = cfg.model.get("init_from")
    tokenizer_cfg = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    tokenizer_cfg["path"] = choose_tokenizer(tokenizer_cfg, resume, init_from)

    # Continuing this folder's own run keeps its history; a checkpoint from elsewhere starts
    # this folder's history (and is refused in a folder that holds another run).
    in_place = resume is not None and resume.path.resolve().is_relative_to(output_dir.resolve())
    with run_folder.claim(output_dir, resume.step if in_place else None):
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = PretrainDataModule(
            data=OmegaConf.to_container(cfg.data, resolve=True),
            tokenizer=tokenizer_cfg,
            paths=OmegaConf.to_container(cfg.paths, resolve=True),
            seed=cfg.seed,
            num_workers=cfg.trainer.num_workers or 0,
            pad_to_multiple_of=cfg.trainer.pad_to_multiple_of,
        )
        wandb_id = None
        if run_folder.is_launching_process():
            # Corpus, tokenizer and tokenized store before the loggers and the Trainer start, so
            # data that cannot work stops the run in one line. Lightning's prepare_data finds
            # them cached here (and prepares them on the other nodes).
            datamodule.prepare_data()
            wandb_id = run_folder.wandb_run_id(output_dir, resume=in_place)
        trainer, speed = build_trainer(cfg, wandb_id)
        try:
            return _fit(cfg, trainer, speed, model_cfg, datamodule, resume)
        finally:
            finish_loggers(trainer.loggers)


def _fit(
    cfg: DictConfig,
    trainer: pl.Trainer,
    speed: dict[str, Any],
    model_cfg: dict[str, Any],
    datamodule: PretrainDataModule,
    resume: Resume | None,
) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    module = BertPretrainModule(
        model_config=model_cfg,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        # a resume loads the checkpoint's weights: the Hugging Face ones would be overwritten
        init_from=None if resume else cfg.model.get("init_from"),
        on_nan=cfg.on_nan,
        max_skipped_steps=cfg.max_skipped_steps,
        compile=bool(speed["compile"]),
        fused_optimizer=bool(speed["fused_optimizer"]),
    )

    run_config = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    run_config = OmegaConf.to_container(OmegaConf.create(run_config), resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(run_config)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path if resume else None)
    except Exception:
        if trainer.is_global_zero:
            report.after_failure(output_dir)
        raise
    wall_time_s = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # Every rank takes part: under FSDP this gathers the full weights from the shards (to rank 0).
    weights = trainer.strategy.lightning_module_state_dict() if cfg.export_hf else None

    if not trainer.is_global_zero:
        return metrics
    ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    hf_dir = None
    if cfg.export_hf:
        model = model_from_module_state(weights, module.hparams.model_config, "the trained model")
        info = {"source": str(output_dir.resolve()), "global_step": trainer.global_step}
        tokenizer = datamodule.own_tokenizer_dir
        hf_dir = to_hf(model, output_dir / "hf", tokenizer_dir=tokenizer, info=info)
    facts = report.RunFacts(
        config=run_config,
        model_config=dict(module.hparams.model_config),
        steps=trainer.global_step,
        wall_time_s=wall_time_s,
        checkpoint=ckpt,
        export_dir=hf_dir,
        data_report=getattr(datamodule, "report", None),
        skipped_steps=list(module.skipped_steps),
    )
    log.info("\n" + report.finish_run(output_dir, facts))  # the console and train.log
    return metrics
