"""Export a bertpt checkpoint as a Hugging Face BERT folder.

    python -m bertpt.export SOURCE OUT_DIR [--tokenizer DIR | --no-tokenizer] [--config FILE]
                            [--allow-tokenizer-mismatch] [--overwrite]

SOURCE is one of:
  * a run folder holding `checkpoints/last.ckpt`;
  * a Lightning checkpoint `.ckpt` that a bertpt run wrote, loaded as data only
    (`torch.load(weights_only=True)`): a file that would run code is refused;
  * a state dict (`.safetensors`, `.pt`, `.bin`, loaded as tensors only) with `config.json` beside
    it or given by `--config` (bertpt's fields or a Hugging Face BERT config.json).

The tokenizer copied into OUT_DIR is `--tokenizer`, else the run folder's `tokenizer/` (for
`RUN/checkpoints/x.ckpt`, `RUN/tokenizer/`), else the checkpoint's `tokenizer_dir`; finding none
is an error unless `--no-tokenizer`. A checkpoint that records `tokenizer_hash` (the sha256 of its
`tokenizer.json`) refuses any other tokenizer unless `--allow-tokenizer-mismatch`.

OUT_DIR is replaced as a whole (no file of an older export survives; a failure leaves it as it
was); a non-empty folder that is not an export is refused unless `--overwrite`.
`bertpt_export.json` in it records the source, the step and the tokenizer hash.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.data.tokenizer import check_tokenizer_hash
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.checkpoint import Checkpoint, bert_config, model_weights, read_checkpoint
from bertpt.model.hf import check_out_dir, config_from_hf_dict, load_into, read_state_dict, to_hf
from bertpt.runs.folder import LAST

log = logging.getLogger(__name__)


def _config_from_json(path: Path) -> BertConfig:
    if not path.is_file():
        raise UserError(f"{path} not found — pass the model's config.json with --config")
    try:
        d = json.loads(path.read_text())
        if "model_type" in d:  # a Hugging Face config.json
            return config_from_hf_dict(d)
        d.pop("init_from", None)
        return BertConfig.from_dict(d)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: {e} — pass the model's config.json with --config") from e


def _model(config: BertConfig, weights: Mapping[str, Any], source: str) -> BertForPreTraining:
    model = BertForPreTraining(config)
    load_into(model, weights, source)
    return model


def model_from_module_state(
    state_dict: Mapping[str, Any], model_config: Mapping[str, Any], source: str
) -> BertForPreTraining:
    """The BertForPreTraining held in a BertPretrainModule's state dict (keys ``model.*``),
    built from the module's ``model_config`` hyper-parameter. Raises UserError."""
    return _model(bert_config(model_config, source), model_weights(state_dict, source), source)


def checkpoint_model(ckpt: Checkpoint) -> BertForPreTraining:
    """The BertForPreTraining of a checkpoint that a bertpt run wrote. Raises UserError."""
    return _model(ckpt.config, ckpt.state_dict, str(ckpt.path))


def _load_state_dict(path: Path, config_path: str | Path | None) -> BertForPreTraining:
    config = _config_from_json(Path(config_path or path.parent / "config.json"))
    return _model(config, read_state_dict(path), str(path))


def run_folder_of(source: Path) -> Path | None:
    """The run folder that a source belongs to: itself, or RUN for RUN/checkpoints/x.ckpt."""
    if source.is_dir():
        return source
    return source.parent.parent if source.parent.name == "checkpoints" else None


def _find_tokenizer(
    source: Path, explicit: str | Path | None, run: Path | None, recorded: str | None
) -> Path:
    """The tokenizer folder to export: --tokenizer, the run's copy, or the recorded path."""
    if explicit is not None:
        if not Path(explicit).is_dir():
            raise UserError(f"tokenizer folder {explicit} not found — check --tokenizer")
        return Path(explicit)
    if run is not None and (run / "tokenizer").is_dir():
        return run / "tokenizer"
    if recorded and Path(recorded).is_dir():
        log.info("tokenizer: %s, recorded in the checkpoint", Path(recorded).resolve())
        return Path(recorded).resolve()
    looked = [str(p) for p in (run and run / "tokenizer", recorded) if p]
    where = f" (not in {' nor '.join(looked)})" if looked else ""
    raise UserError(
        f"no tokenizer found for {source}{where} — pass --tokenizer DIR, or --no-tokenizer to "
        "export the model alone"
    )


def export(
    source: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    *,
    no_tokenizer: bool = False,
    allow_tokenizer_mismatch: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files, bertpt_export.json)
    from `source`; see the module doc for how the tokenizer is found. Raises UserError."""
    source, out = Path(source), Path(out_dir)
    run = run_folder_of(source)
    if source.is_dir():
        if not (source / LAST).is_file():
            raise UserError(f"{source} is a folder without {LAST} — pass a run folder or a .ckpt")
        source = source / LAST
    if not source.is_file():
        raise UserError(f"{source} not found — check the path")
    if source.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"{out} holds {source}, which the export would delete — choose another folder"
        )
    check_out_dir(out, overwrite)  # before the long work of loading
    if source.suffix == ".ckpt":
        ckpt = read_checkpoint(source)
        model = checkpoint_model(ckpt)
        step, recorded_dir, recorded_hash = ckpt.step, ckpt.tokenizer_dir, ckpt.tokenizer_hash
    else:
        model = _load_state_dict(source, config_path)
        step = recorded_dir = recorded_hash = None

    tokenizer = None
    if not no_tokenizer:
        tokenizer = _find_tokenizer(source, tokenizer_dir, run, recorded_dir)
        if recorded_hash:
            fix = (
                "pass that tokenizer with --tokenizer DIR, or --allow-tokenizer-mismatch to "
                "export with this one anyway"
            )
            check_tokenizer_hash(tokenizer, recorded_hash, fix, allow_tokenizer_mismatch)
    info = {"source": str(source.resolve()), "global_step": step}
    return to_hf(model, out, tokenizer, info=info, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="run folder, Lightning .ckpt, or .safetensors/.pt/.bin")
    parser.add_argument("out_dir", help="folder to write (created, or replaced as a whole)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", help="tokenizer folder to copy (default: the run's own)")
    tok.add_argument("--no-tokenizer", action="store_true", help="export the model alone")
    parser.add_argument("--config", help="config.json of a bare state dict (default: beside it)")
    parser.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="export with a tokenizer whose hash differs from the checkpoint's",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR even if it is not an export"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        out = export(
            args.source,
            args.out_dir,
            args.tokenizer,
            args.config,
            no_tokenizer=args.no_tokenizer,
            allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
            overwrite=args.overwrite,
        )
    print(f"wrote {out}")
