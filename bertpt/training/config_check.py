"""The whole config, checked before anything starts: no logger, no run folder, no data work, and
neither torch nor Lightning imported (this module and what it imports are light).

Two layers. :func:`check_overrides` reads the command line before Hydra composes it, so a
mistyped key gets the nearest real keys instead of Hydra's hint to add it with ``+``.
:func:`check_config` checks the composed config: ranges, paths, what must divide what, and the
values that one group owns and another only follows (the run length is ``optim.max_steps``).
Each mistake is one :class:`~bertpt.common.errors.UserError`, ``<what> — <fix>``. The model's own
rules are ``bertpt.model.rules`` (BertConfig applies the same), the batch, ``on_nan`` and
``ckpt_path`` rules that the run applies again once the Trainer exists are
``bertpt.training.run_rules``.

The settings are the keys of the YAML files in ``conf/`` (for ``trainer``, also the arguments of
Lightning's ``Trainer``, read from its source without importing it); ``callbacks`` and ``logger``
entries are constructor arguments of what they instantiate and are not checked here.
"""

from __future__ import annotations

import difflib
import functools
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from bertpt import CONF_DIR
from bertpt.common.errors import UserError, exit_on_user_error

# Re-exported: the names this check accepts, which tests compare with bertpt.model.bert's.
from bertpt.model.rules import check_model, position_offset
from bertpt.training.lightning_compat import trainer_arguments
from bertpt.training.run_rules import checkpoint_path, per_device_batch_size, skip_in_one_process

CONF = CONF_DIR
# Groups whose keys bertpt reads itself; `trainer` adds Lightning's Trainer arguments.
OWN_GROUPS = ("model", "tokenizer", "data", "optim", "paths", "trainer")
# Groups of instantiated objects: their keys are constructor arguments, not checked here.
FREE_GROUPS = ("callbacks", "logger", "hydra")
# Patches applied at the top level (`+experiment=...`): their keys are settings too.
PATCH_GROUPS = ("experiment", "debug", "hparams_search")
# A value with one owner, and the keys that follow it: setting a follower is the mistake.
OWNERS = {
    "trainer.max_steps": "optim.max_steps",
    "model.vocab_size": "tokenizer.vocab_size",
}
# data.objective: those that train on sentence pairs with a next-sentence (or order) head, and
# RoBERTa's MLM-only packed sentences (bertpt.data.packing.CROSS_DOCUMENTS).
PAIR_OBJECTIVES = ("nsp", "sop")
MLM_OBJECTIVES = ("mlm", "doc-sentences")
# Lightning's precision flags, its short aliases included (compared as strings: 32 is 32), and
# bertpt's auto (bertpt.training.precision: bf16-mixed where bf16 is native, else 32-true).
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
PRECISIONS += ("32", "16", "bf16", "64", "transformer-engine", "transformer-engine-float16")


# --- the settings that exist --------------------------------------------------------------


def _yaml_keys(path: Path) -> set[str]:
    return set(OmegaConf.load(path)) - {"defaults"}


@functools.cache
def settings() -> dict[str, set[str]]:
    """Group -> the keys it may hold; "" holds the top-level keys."""
    known: dict[str, set[str]] = {g: set() for g in OWN_GROUPS}
    for group in OWN_GROUPS:
        for path in (CONF / group).glob("*.yaml"):
            known[group] |= _yaml_keys(path)
    known["trainer"] |= trainer_arguments()
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    top = _yaml_keys(CONF / "train.yaml") | groups
    for patch in PATCH_GROUPS:
        for path in (CONF / patch).glob("*.yaml"):
            top |= _yaml_keys(path) - groups
    known[""] = top
    return known


def _all_keys() -> list[str]:
    return sorted(
        f"{group}.{key}" if group else key for group, keys in settings().items() for key in keys
    )


def _suggest(key: str) -> str:
    """' — did you mean X or Y?' for the nearest real keys, their owners named."""
    leaf = key.rsplit(".", 1)[-1]
    names = _all_keys()
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.75)
    near += [n for n in names if difflib.get_close_matches(leaf, [n.rsplit(".", 1)[-1]], n=1)]
    near = [OWNERS.get(n, n) for n in near]
    near = list(dict.fromkeys(near))[:3]
    if not near:
        return " — see the settings in conf/ (python -m bertpt.train --cfg job prints them all)"
    return f" — did you mean {' or '.join(near)}?"


def _check_key(key: str) -> None:
    group, _, rest = key.partition(".")
    if group in FREE_GROUPS or "/" in key:
        return
    in_group = bool(rest) and group in OWN_GROUPS
    # a group's key; else a top-level key (or an item of one with a structured value: tags.0)
    name, keys = (rest.split(".")[0], settings()[group]) if in_group else (group, settings()[""])
    if name not in keys:
        raise UserError(f"{key} is not a setting{_suggest(key)}")


def _check_choice(group: str, value: str) -> None:
    if any(c in value for c in "$(["):
        return  # an interpolation or a sweeper expression
    for option in value.split(","):  # a multirun list
        if option and option != "null" and not (CONF / group / f"{option}.yaml").is_file():
            options = ", ".join(sorted(p.stem for p in (CONF / group).glob("*.yaml")))
            raise UserError(f"{group}={option} is not a {group} config — choose one of {options}")


def check_overrides(argv: list[str]) -> None:
    """Check the ``key=value`` overrides of a command line before Hydra composes them."""
    skip_next = False
    for arg in argv:
        if skip_next or arg.startswith("-"):
            # options of Hydra's command line; these take a value
            skip_next = arg in ("--cfg", "-c", "--config-name", "-cn", "--config-path", "-cp")
            continue
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if not eq or key.startswith("hydra"):
            continue
        if (CONF / key).is_dir():
            _check_choice(key, value)
        else:
            _check_key(key)


# --- the composed config ------------------------------------------------------------------


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _require(ok: bool, what: str, fix: str) -> None:
    if not ok:
        raise UserError(f"{what} — {fix}")


def _number(cfg: DictConfig, key: str) -> float:
    value = _get(cfg, key)
    _require(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{key}={value!r} is not a number",
        f"set {key} to a number",
    )
    return value


def _in_range(cfg: DictConfig, key: str, low: float, high: float, closed_high: bool) -> None:
    value = _number(cfg, key)
    ok = low <= value <= high if closed_high else low <= value < high
    bracket = "]" if closed_high else ")"
    _require(
        ok and math.isfinite(value),
        f"{key}={value} is out of range",
        f"use a value in [{low}, {high}{bracket}",
    )


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    value = _get(cfg, key)
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{key}={value!r} must be an integer >= {minimum}",
        f"set {key} to an integer of at least {minimum}",
    )
    return value


def _check_unknown_keys(cfg: DictConfig) -> None:
    for key in cfg:
        if key in FREE_GROUPS:
            continue
        if key in OWN_GROUPS and isinstance(cfg[key], DictConfig):
            for leaf in cfg[key]:
                _check_key(f"{key}.{leaf}")
        else:
            _check_key(str(key))


def _check_run_length(cfg: DictConfig) -> None:
    steps = _get(cfg, "optim.max_steps")
    _require(
        isinstance(steps, int) and steps > 0,
        f"optim.max_steps={steps} does not bound the run (the schedule decays to 0 there)",
        "set optim.max_steps to the number of optimizer steps to train",
    )
    for follower, owner in OWNERS.items():
        value = _get(cfg, follower)
        if value is not None and value != _get(cfg, owner):
            raise UserError(
                f"{follower}={value} differs from {owner}={_get(cfg, owner)}, which sets both — "
                f"set {owner}={value} instead"
            )
    epochs = _get(cfg, "trainer.max_epochs")
    _require(
        epochs in (None, -1),
        f"trainer.max_epochs={epochs} would stop the run before optim.max_steps, where the "
        "learning-rate schedule ends",
        "drop trainer.max_epochs and set optim.max_steps",
    )


def _check_optim(cfg: DictConfig) -> None:
    _require(_number(cfg, "optim.lr") > 0, f"optim.lr={_get(cfg, 'optim.lr')}", "use lr > 0")
    warmup = _get(cfg, "optim.warmup_steps")
    _require(
        isinstance(warmup, int) and warmup >= 0,
        f"optim.warmup_steps={warmup} is negative or not an integer",
        "use optim.warmup_steps >= 0",
    )
    _require(
        _number(cfg, "optim.weight_decay") >= 0,
        "optim.weight_decay is negative",
        "use 0 or more",
    )
    betas = _get(cfg, "optim.betas")
    numbers = isinstance(betas, ListConfig) and all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in betas
    )
    _require(
        numbers and len(betas) == 2 and all(0 <= b < 1 for b in betas),
        f"optim.betas={betas}",
        "give two values in [0, 1), e.g. optim.betas=[0.9,0.999]",
    )
    _require(_number(cfg, "optim.eps") > 0, f"optim.eps={_get(cfg, 'optim.eps')}", "use eps > 0")


def _check_model(cfg: DictConfig) -> None:
    """The model group, by the rules BertConfig applies to it (bertpt.model.rules)."""
    # model.vocab_size follows tokenizer.vocab_size: a bad size is named by its owner
    _positive_int(cfg, "tokenizer.vocab_size", minimum=64)
    model = _get(cfg, "model")
    fields = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else {}
    check_model(fields, named="model.{name}={value!r}")


def _check_model_fits_data(cfg: DictConfig) -> None:
    """What the data asks of the model: segment embeddings for pairs, positions for the
    sequence."""
    if _get(cfg, "data.objective") in PAIR_OBJECTIVES:
        _positive_int(cfg, "model.type_vocab_size", minimum=2)  # segments A and B
    positions = _positive_int(cfg, "model.max_position_embeddings")
    seq = _positive_int(cfg, "data.max_seq_length", minimum=8)
    pad = _positive_int(cfg, "model.pad_token_id", minimum=0)
    offset = position_offset(_get(cfg, "model.model_type"), pad)
    _require(
        seq + offset <= positions,
        f"data.max_seq_length={seq} exceeds model.max_position_embeddings={positions}"
        + (f" - {offset} (RoBERTa's positions start at pad_token_id + 1)" if offset else ""),
        "lower data.max_seq_length or raise model.max_position_embeddings",
    )
    _positive_int(cfg, "tokenizer.min_frequency")


def _check_data(cfg: DictConfig) -> None:
    batch = _positive_int(cfg, "data.global_batch_size")
    accumulate = _positive_int(cfg, "trainer.accumulate_grad_batches")
    devices, nodes = _get(cfg, "trainer.devices"), _get(cfg, "trainer.num_nodes")
    # Only where the device count is known before torch (a GPU count is only known after).
    if _get(cfg, "trainer.accelerator") == "cpu" and isinstance(devices, int) and devices > 0:
        per_device_batch_size(batch, devices * (nodes or 1), accumulate)
        if _get(cfg, "on_nan") == "skip":
            skip_in_one_process(devices * (nodes or 1))
    _in_range(cfg, "data.mlm_probability", 0.0, 1.0, closed_high=False)
    _require(_get(cfg, "data.mlm_probability") > 0, "data.mlm_probability=0", "use a value > 0")
    for key in ("nsp_probability", "short_seq_prob"):
        _in_range(cfg, f"data.{key}", 0.0, 1.0, closed_high=True)
    if _get(cfg, "data.val_corpus") is None:
        _in_range(cfg, "data.val_fraction", 0.0, 1.0, closed_high=False)
        _require(_get(cfg, "data.val_fraction") > 0, "data.val_fraction=0", "use a value > 0")
    _positive_int(cfg, "data.val_max_pairs")
    _positive_int(cfg, "data.val_min_pairs", minimum=0)
    _positive_int(cfg, "data.max_predictions_per_seq")
    _positive_int(cfg, "data.num_proc")
    choices = {
        "data.objective": PAIR_OBJECTIVES + MLM_OBJECTIVES,
        "data.mask_mode": ("independent", "exact"),
        "data.format": ("auto", "bert", "lines", "files", "datasets"),
        "on_nan": ("stop", "skip"),
        "trainer.precision": (None, *PRECISIONS),  # compared as strings below
        "trainer.gradient_clip_algorithm": (None, "norm", "value"),
    }
    for key, allowed in choices.items():
        value = _get(cfg, key)
        value = str(value) if key == "trainer.precision" and value is not None else value
        shown = ", ".join(str(a) for a in allowed if a is not None)
        _require(value in allowed, f"{key}={value!r} is not an option", f"use one of {shown}")
    _positive_int(cfg, "max_skipped_steps", minimum=0)


def _check_tokenizer(cfg: DictConfig) -> None:
    from bertpt.data.tokenizer import KINDS, ROLES, check_kind

    kind = _get(cfg, "tokenizer.kind")
    check_kind(kind, bool(_get(cfg, "tokenizer.lowercase")))
    if _get(cfg, "tokenizer.path") is None and _get(cfg, "model.init_from") is None:
        # the tokenizer this run trains: its <pad> is where the model puts padding
        pad = next(i for i, t in enumerate(KINDS[kind].special_tokens) if t in ROLES["pad"])
        model_pad = _get(cfg, "model.pad_token_id")
        _require(
            model_pad == pad,
            f"model.pad_token_id={model_pad} but a {KINDS[kind].name} tokenizer "
            f"(tokenizer.kind={kind}) pads with id {pad}",
            f"set model.pad_token_id={pad}",
        )


def _model_type(cfg: DictConfig) -> tuple[str, str]:
    """The model type the run trains and the setting it comes from: model.init_from's
    config.json where there is one (the run takes that model whole), else model.model_type."""
    init_from = _get(cfg, "model.init_from")
    if init_from is not None:
        import json

        try:
            config = json.loads((Path(init_from) / "config.json").read_text())
            return str(config.get("model_type", "bert")), f"model.init_from {init_from}"
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable config.json is reported when the model is loaded
    return _get(cfg, "model.model_type") or "bert", "model.model_type"


def _check_objective(cfg: DictConfig) -> None:
    """Pairs train a next-sentence head that only BERT has; RoBERTa's packed sentences train
    none, and a BERT's head would sit untrained (DDP refuses parameters without gradients)."""
    objective = _get(cfg, "data.objective")
    model_type, source = _model_type(cfg)
    if objective not in PAIR_OBJECTIVES + MLM_OBJECTIVES:
        return  # not an option: said by _check_data
    if objective in PAIR_OBJECTIVES:
        _require(
            model_type == "bert",
            f"data.objective={objective} trains a next-sentence head, which {source} "
            f"({model_type}) has none of",
            "use data.objective=mlm (or doc-sentences) for RoBERTa, or a BERT model",
        )
    else:
        _require(
            model_type == "roberta",
            f"data.objective={objective} trains the masked LM only, and {source} ({model_type}) "
            "has a next-sentence head that would not train",
            "use a RoBERTa model (+experiment=roberta_tiny, model=roberta_base) or "
            "data.objective=nsp",
        )


def _check_paths(cfg: DictConfig, run_dir: Path | None) -> None:
    from bertpt.data.corpus import check_corpus

    fmt, column = _get(cfg, "data.format"), _get(cfg, "data.text_column")
    for key in ("data.corpus", "data.val_corpus"):
        corpus = _get(cfg, key)
        if corpus is not None and fmt != "datasets":
            check_corpus(corpus, fmt, column)  # missing, empty, binary, a single document
    tokenizer = _get(cfg, "tokenizer.path")
    if tokenizer is not None:
        from bertpt.data.tokenizer import load_tokenizer

        load_tokenizer(tokenizer)  # missing, not a tokenizer folder, a broken tokenizer.json
    init_from = _get(cfg, "model.init_from")
    if init_from is not None:
        _require(
            (Path(init_from) / "config.json").is_file(),
            f"model.init_from={init_from} is not a Hugging Face model folder (no config.json)",
            "give the folder that from_pretrained would load",
        )
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is not None and (ckpt != "last" or run_dir is not None):
        checkpoint_path(ckpt, run_dir)


def check_config(cfg: DictConfig, run_dir: Path | None) -> None:
    """Raise UserError for the first mistake in a composed config; ``run_dir`` is the run's
    folder (None in a sweep's base config, where ``ckpt_path=last`` is not checked)."""
    _check_unknown_keys(cfg)
    _check_run_length(cfg)
    _check_optim(cfg)
    _check_model(cfg)
    _check_objective(cfg)
    _check_model_fits_data(cfg)
    _check_data(cfg)
    _check_tokenizer(cfg)
    _check_paths(cfg, run_dir)


class CheckConfig(Callback):
    """Hydra callback (conf/hydra/default.yaml): the check, before Hydra makes the run folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            check_config(config, Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            check_config(config, None)
