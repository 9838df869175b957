"""Export a bertpt checkpoint as a Hugging Face BERT folder.

    python -m bertpt.export SOURCE OUT_DIR [--tokenizer DIR] [--config config.json]

SOURCE is one of:
  * a run folder holding `checkpoints/last.ckpt` (its `tokenizer/` folder is used if present);
  * a Lightning checkpoint `.ckpt`: its `state_dict` holds the model under the prefix `model.` and
    `hyper_parameters["model_config"]` the BertConfig fields (`["tokenizer_dir"]` may name the
    tokenizer). A `.ckpt` is a full pickle (optimizer state, Python objects), so it is loaded with
    `weights_only=False`: export only checkpoints you trust;
  * a state dict (`.safetensors`, `.pt`, `.bin`, loaded as tensors only) with `config.json` beside
    it or given by `--config` (bertpt's fields or a Hugging Face BERT config.json).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from bertpt.hf import config_from_hf_dict, load_into, read_state_dict, to_hf
from bertpt.model import BertConfig, BertForPreTraining

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."  # attribute name of the BertForPreTraining in the LightningModule


def _config_from_json(path: Path) -> BertConfig:
    if not path.is_file():
        raise ValueError(f"{path} not found: pass the model's config.json with --config")
    d = json.loads(path.read_text())
    if "model_type" in d:  # a Hugging Face config.json
        return config_from_hf_dict(d)
    d.pop("init_from", None)
    return BertConfig.from_dict(d)


def _load_ckpt(path: Path) -> tuple[BertForPreTraining, str | None]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # trusted: see module doc
    except Exception as e:  # a truncated or foreign file fails in many ways inside pickle
        raise ValueError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path}: expected a Lightning checkpoint dict, found {type(ckpt).__name__}"
        )
    hparams = ckpt.get("hyper_parameters") or {}
    if "model_config" not in hparams or "state_dict" not in ckpt:
        raise ValueError(
            f"{path}: not a bertpt Lightning checkpoint (needs state_dict and "
            "hyper_parameters['model_config'])"
        )
    model_config = dict(hparams["model_config"])
    model_config.pop("init_from", None)
    model = BertForPreTraining(BertConfig.from_dict(model_config))
    # torch.compile wraps the model as `_orig_mod`; the weights are the same.
    sd = {
        k[len(MODEL_PREFIX) :].replace("_orig_mod.", ""): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(MODEL_PREFIX)
    }
    if not sd:
        raise ValueError(f"{path}: no key in state_dict starts with {MODEL_PREFIX!r}")
    load_into(model, sd, str(path))
    return model, hparams.get("tokenizer_dir")


def export(
    source: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    config_path: str | Path | None = None,
) -> Path:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files) from `source`."""
    source = Path(source)
    default_tokenizer = None
    if source.is_dir():
        ckpt = source / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ValueError(f"{source} is a folder without checkpoints/last.ckpt")
        if (source / "tokenizer").is_dir():
            default_tokenizer = source / "tokenizer"
        source = ckpt
    if not source.is_file():
        raise ValueError(f"{source} not found")
    if source.suffix == ".ckpt":
        model, ckpt_tokenizer = _load_ckpt(source)
        default_tokenizer = default_tokenizer or ckpt_tokenizer
    else:
        config = _config_from_json(Path(config_path or source.parent / "config.json"))
        model = BertForPreTraining(config)
        load_into(model, read_state_dict(source), str(source))
    if tokenizer_dir is None and default_tokenizer is not None:
        if Path(default_tokenizer).is_dir():
            tokenizer_dir = default_tokenizer
        else:
            log.warning("tokenizer folder %s not found: exporting without it", default_tokenizer)
    if tokenizer_dir is None:
        log.warning("no tokenizer given: %s will hold the model only", out_dir)
    return to_hf(model, out_dir, tokenizer_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="run folder, Lightning .ckpt, or .safetensors/.pt/.bin")
    parser.add_argument("out_dir", help="folder to write (created if needed)")
    parser.add_argument("--tokenizer", help="tokenizer folder to copy (default: the run's own)")
    parser.add_argument("--config", help="config.json of a bare state dict (default: beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export(args.source, args.out_dir, args.tokenizer, args.config)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
