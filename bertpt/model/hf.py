"""Read and write Hugging Face BERT and RoBERTa folders (`config.json` + weights + tokenizer).

Works on files only: `transformers` is never imported, so exporting needs no extra dependency.
A folder may hold BertModel weights (keys without the `bert.` prefix), BertForMaskedLM weights
(no pooler, no next-sentence head) or BertForPreTraining weights, or RobertaModel /
RobertaForMaskedLM weights; heads that a folder lacks are freshly initialised. Checkpoints from
older `transformers` and the original TF conversion (`LayerNorm.gamma/beta`, a saved
`position_ids` buffer, no `decoder.bias`) load as well.

bertpt's RoBERTa is its BERT with `model_type="roberta"`, under BERT's module names; the
RoBERTa names (`roberta.*`, `lm_head.*`) exist only in the files, renamed here on the way in and
out (:data:`ROBERTA_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertpt.common.atomic import publish_dir
from bertpt.common.errors import UserError, refused_writes
from bertpt.data.tokenizer import copy_tokenizer, tokenizer_hash
from bertpt.model.bert import SPEED_FIELDS, BertConfig, BertForPreTraining
from bertpt.model.checkpoint import error_reason, load_torch_file

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Parameters that a BertModel or BertForMaskedLM folder may lack; everything else must be there.
HEAD_PREFIXES = ("bert.pooler.", "cls.")
# What a folder may hold that a RoBERTa model has no use for: RobertaModel saves a pooler.
UNUSED_HEADS = ("bert.pooler.", "cls.seq_relationship.")
# bertpt's key prefix -> RoBERTa's, first match wins (HF modeling_roberta: the encoder is
# `roberta`, the MLM head `lm_head` with dense -> gelu -> layer_norm -> decoder).
ROBERTA_KEYS = {
    "bert.": "roberta.",
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.decoder.": "lm_head.decoder.",
    "cls.predictions.bias": "lm_head.bias",
}
# What config.json says of each model type beyond BertConfig's fields.
HF_TYPES = {
    "bert": {"architectures": ["BertForPreTraining"]},
    "roberta": {"architectures": ["RobertaForMaskedLM"], "bos_token_id": 0, "eos_token_id": 2},
}
# Stored once on disk, as HF does: the decoder weight is the word embedding matrix and the
# decoder bias is `cls.predictions.bias` (safetensors refuses tensors that share memory).
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
# bertpt's own record of an export (source, step, tokenizer hash); config.json stays HF's.
EXPORT_INFO = "bertpt_export.json"
# BertConfig's fields that a HF config.json holds under the same name (model_type is written
# and read on its own, speed settings not at all).
HF_FIELDS = tuple(
    f.name for f in dataclasses.fields(BertConfig) if f.name not in (*SPEED_FIELDS, "model_type")
)


def config_from_hf_dict(d: Mapping) -> BertConfig:
    """BertConfig from a HF `config.json` dict; keys bertpt has no use for are ignored."""
    model_type = d.get("model_type", "bert")
    if model_type not in HF_TYPES:
        raise UserError(
            f"model_type is {model_type!r}, not {' or '.join(map(repr, HF_TYPES))} — bertpt "
            "loads BERT and RoBERTa checkpoints only"
        )
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(
            f"position_embedding_type {d['position_embedding_type']!r} is not supported — "
            "bertpt implements absolute position embeddings only"
        )
    if d.get("tie_word_embeddings", True) is False:
        raise UserError(
            "tie_word_embeddings is false — bertpt always ties the MLM decoder to the word "
            "embeddings, so it cannot load this model"
        )
    fields = {k: d[k] for k in HF_FIELDS if d.get(k) is not None}
    return BertConfig(**fields, model_type=model_type)


def hf_config_dict(config: BertConfig) -> dict:
    """The `config.json` of a HF `BertForPreTraining` or `RobertaForMaskedLM` of this shape."""
    d = {k: getattr(config, k) for k in HF_FIELDS}
    return {
        **HF_TYPES[config.model_type],
        "model_type": config.model_type,
        **d,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _rename(sd: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> dict:
    """``sd`` with each key's first matching prefix of ``prefixes`` replaced by its value."""
    out = {}
    for k, v in sd.items():
        old = next((p for p in prefixes if k.startswith(p)), None)
        out[k if old is None else prefixes[old] + k[len(old) :]] = v
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, a `.safetensors.index.json` (shards) or a torch `.bin`/`.pt`."""
    path = Path(path)
    try:
        if path.name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in read_state_dict(path.parent / s).items()}
        if path.suffix == ".safetensors":
            return load_file(path)
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} cannot be read as weights ({error_reason(e)}) — it is truncated or not a "
            "weights file: copy it again"
        ) from e
    sd = load_torch_file(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(
            f"{path} holds a {type(sd).__name__}, not a dict of tensors — pass a state dict"
        )
    return sd


def normalize_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Map the key spellings of HF versions and model classes onto BertForPreTraining's."""
    sd = _rename(sd, {v: k for k, v in ROBERTA_KEYS.items()})  # a RoBERTa folder
    if not any(k.startswith(("bert.", "cls.")) for k in sd):  # a BertModel / RobertaModel folder
        sd = {f"bert.{k}": v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids"):
            continue  # buffers that some versions saved; bertpt recomputes them
        if "LayerNorm." in k:  # TF-converted checkpoints
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
        out[k] = v
    for alias, key in TIED.items():
        if alias not in out and key in out:
            out[alias] = out[key]
        elif key not in out and alias in out:
            out[key] = out[alias]
        elif alias in out and not torch.equal(out[alias], out[key]):
            raise UserError(
                f"{source}: {alias} differs from {key} — bertpt ties them, so an untied "
                "checkpoint cannot be loaded without changing its predictions"
            )
    return out


def load_into(
    model: BertForPreTraining,
    sd: Mapping[str, torch.Tensor],
    source: str,
    allow_unexpected: bool = False,
) -> list[str]:
    """Copy `sd` into `model`; returns the head modules that kept their fresh initialisation."""
    sd = normalize_state_dict(sd, source)
    expected = model.state_dict()
    unused = [k for k in sd if k not in expected and k.startswith(UNUSED_HEADS)]
    if unused:
        log.info("%s: %d weights of heads this model has none of are not used", source, len(unused))
        sd = {k: v for k, v in sd.items() if k not in unused}
    unexpected = sorted(set(sd) - set(expected))
    if unexpected and not allow_unexpected:
        raise UserError(
            f"{source}: {len(unexpected)} unexpected keys, e.g. {unexpected[:3]} — not a BERT "
            "checkpoint of this config (pass allow_unexpected=True to ignore them)"
        )
    missing = sorted(set(expected) - set(sd))
    body = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    if body:
        raise UserError(
            f"{source}: {len(body)} encoder keys missing, e.g. {body[:3]} — the weights do not "
            "match the config (number of layers?) or are incomplete"
        )
    for k, v in sd.items():
        if k in expected and v.shape != expected[k].shape:
            raise UserError(
                f"{source}: {k} has shape {tuple(v.shape)} but the config expects "
                f"{tuple(expected[k].shape)} — the config disagrees with the weights: pass the "
                "config they were trained with"
            )
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    fresh = sorted({".".join(k.split(".")[:2]) for k in missing})
    if fresh:
        log.warning("%s has no weights for %s: freshly initialised", source, ", ".join(fresh))
    if unexpected:
        log.warning("%s: ignored %d unexpected keys %s", source, len(unexpected), unexpected[:5])
    return fresh


def weights_file(folder: str | Path) -> Path:
    """The weights file of a Hugging Face folder, in transformers' order of preference."""
    folder = Path(folder)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise UserError(f"{folder} holds none of {list(WEIGHT_FILES)} — pass a folder with weights")
    return weights


def from_hf(path: str | Path, allow_unexpected: bool = False) -> BertForPreTraining:
    """A BertForPreTraining built from a HF folder (BertModel, BertForMaskedLM or pretraining;
    RobertaModel or RobertaForMaskedLM)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{config_file} not found — pass a Hugging Face BERT or RoBERTa folder")
    try:
        config = config_from_hf_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise UserError(f"{config_file}: {e}") from e
    weights = weights_file(path)
    model = BertForPreTraining(config)
    load_into(model, read_state_dict(weights), str(weights), allow_unexpected)
    return model


def check_out_dir(out: str | Path, overwrite: bool = False) -> None:
    """Raise UserError unless ``out`` may take an export: a new or empty folder, a previous
    export, or anything else with ``overwrite`` (a typo must not cost someone's data)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file — choose a folder path for the export")
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    if not all((out / f).is_file() for f in ("config.json", "model.safetensors")):
        raise UserError(
            f"{out} is a non-empty folder that is not an export (no config.json and "
            "model.safetensors) — choose another folder, or pass --overwrite (overwrite=True) "
            "to replace it and everything in it"
        )


def to_hf(
    model: BertForPreTraining,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a folder that `transformers.BertForPreTraining.from_pretrained` (a RoBERTa model:
    `RobertaForMaskedLM`) loads unchanged.

    ``bertpt_export.json`` beside it records ``info`` (source, step) and the sha256 of the
    copied ``tokenizer.json``. The folder is written beside ``out_dir`` and then swapped into
    place: no file of an older export survives, and a failure leaves the old folder as it was.
    A non-empty ``out_dir`` that is not an export is refused unless ``overwrite``.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    sd = {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if k not in TIED  # HF re-ties them on load
    }
    if model.config.model_type == "roberta":
        sd = _rename(sd, ROBERTA_KEYS)
    kept, then = "an export already there is intact", " and export again"
    with refused_writes("the export", out, kept, then), publish_dir(out, replace=True) as pub:
        tmp = pub.tmp
        save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2) + "\n")
        copied = copy_tokenizer(tokenizer_dir, tmp) if tokenizer_dir is not None else []
        digest = tokenizer_hash(tmp) if "tokenizer.json" in copied else None
        record = {**(info or {}), "tokenizer_hash": digest}
        (tmp / EXPORT_INFO).write_text(json.dumps(record, indent=2) + "\n")
    return out
