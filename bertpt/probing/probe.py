"""Does the pretrained encoder know anything? Probe it on a labelled task, against baselines.

    python -m bertpt.probe MODEL_DIR [--task docstrings] [--mode both|finetune|linear] [--seeds 5]

MODEL_DIR is an exported folder (``RUN/hf``: config.json, model.safetensors, tokenizer.json) or a
run folder (its ``hf/``). Two probes, each run on the encoder and on the same shape from random
weights (one set of weights per seed):

- ``linear``: frozen features (the mean of the token states) and a logistic regression whose
  regularisation is chosen by cross-validation on the training split (``bertpt.probing.linear``).
- ``finetune``: every weight fine-tuned with a classification head on the mean of the token
  states, at the learning rate each init scores best with on a held-out part of the training
  split (``bertpt.probing.finetune``).

Every report also gives the bag-of-words floor (TF-IDF + logistic regression): how much of the
task its words alone tell. Accuracies are on the task's test split, as the median and range over
the seeds. Runs on a CPU: bertpt's own model, ``tokenizers`` and scikit-learn, no
``transformers``. Tasks: ``bertpt.probing.tasks`` (built in: ``docstrings``, no network).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.model.bert import BertForPreTraining, num_parameters
from bertpt.model.hf import from_hf
from bertpt.probing.finetune import Settings, choose_lr, fine_tune
from bertpt.probing.linear import POOLINGS, linear_accuracy, sklearn_modules, tfidf_accuracy
from bertpt.probing.tasks import (
    BUILTIN,
    Columns,
    Task,
    dev_split,
    encode,
    load_task,
    load_tokenizer,
)

PRETRAINED, RANDOM = "pretrained", "random init"
MODES = ("both", "finetune", "linear")


@dataclass
class ProbeResult:
    task: Task
    parameters: int
    tfidf: float
    # probe (linear / finetune) -> init -> one test accuracy per seed (pretrained linear: one)
    accuracies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)  # init -> the fine-tuning lr chosen
    seconds: float = 0.0


def model_dir(path: str | Path) -> Path:
    """The export folder of ``path``: itself, or a run folder's ``hf/``."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path} not found — give an exported model folder (RUN/hf) or a run folder"
        )
    if not (path / "config.json").is_file() and (path / "hf" / "config.json").is_file():
        return path / "hf"
    return path


def random_like(pretrained: BertForPreTraining, seed: int) -> BertForPreTraining:
    """The same config from random weights: the initialisation pretraining started from."""
    torch.manual_seed(seed)
    return BertForPreTraining(pretrained.config)


def run_probe(
    folder: str | Path,
    task: Task,
    seeds: list[int],
    settings: Settings | None = None,
    mode: str = "both",
    baseline: bool = True,
    linear_pooling: str = "mean",
    log: Callable[[str], None] = print,
) -> ProbeResult:
    """Probe the exported model (and, with ``baseline``, the same shape from random weights)."""
    settings = settings or Settings()
    sklearn_modules()  # the linear probe and the bag-of-words floor: say now if it is missing
    folder = model_dir(folder)
    tokenizer = load_tokenizer(folder, settings.max_length)
    pretrained = from_hf(folder)
    config = pretrained.config
    if settings.max_length > config.max_position_embeddings - config.position_offset:
        raise UserError(
            f"--max-length {settings.max_length} exceeds the model's positions "
            f"({config.max_position_embeddings}) — pass a smaller --max-length"
        )
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise UserError(
            f"{folder}/tokenizer.json has {tokenizer.get_vocab_size():,} tokens, the model "
            f"{config.vocab_size:,} — give the folder the model was exported into, with its own "
            "tokenizer"
        )
    start = time.perf_counter()
    train, test = encode(tokenizer, task.train), encode(tokenizer, task.test)
    labels = lambda split: [e.label for e in split]  # noqa: E731
    texts = lambda split: [e.text + " " + (e.text_pair or "") for e in split]  # noqa: E731
    tfidf = tfidf_accuracy(
        texts(task.train), labels(task.train), texts(task.test), labels(task.test)
    )
    log(f"  bag of words (TF-IDF + logistic regression): test accuracy {tfidf:.1%}")
    result = ProbeResult(task, num_parameters(pretrained), tfidf)
    inits: dict[str, Callable[[int], BertForPreTraining]] = {
        PRETRAINED: lambda seed: copy.deepcopy(pretrained)
    }
    if baseline:
        inits[RANDOM] = lambda seed: random_like(pretrained, seed)
    pad = config.pad_token_id

    if mode in ("both", "linear"):
        linear = result.accuracies.setdefault("linear", {})
        for init, build in inits.items():
            # frozen pretrained features are the same for every seed: one fit
            for seed in seeds[:1] if init == PRETRAINED else seeds:
                acc = linear_accuracy(build(seed).bert, train, test, pad, linear_pooling)
                linear.setdefault(init, []).append(acc)
                log(f"  linear, {init}, seed {seed}: test accuracy {acc:.1%}")

    if mode in ("both", "finetune"):
        fit_rows, dev_rows = dev_split(task.train)
        fit, dev = train.subset(fit_rows), train.subset(dev_rows)
        finetune = result.accuracies.setdefault("finetune", {})
        n = len(task.label_names)
        for init, build in inits.items():
            lr, _ = choose_lr(lambda b=build: b(seeds[0]), fit, dev, n, settings, init, log)
            result.lrs[init] = lr
            for seed in seeds:
                t = time.perf_counter()
                desc = f"{init}, seed {seed}, lr {lr:g}"
                acc = fine_tune(build(seed), train, test, n, seed, lr, settings, desc)
                finetune.setdefault(init, []).append(acc)
                seconds = time.perf_counter() - t
                log(f"  fine-tuned, {desc}: test accuracy {acc:.1%} ({seconds:.0f} s)")
    result.seconds = time.perf_counter() - start
    return result


def summary(values: list[float]) -> str:
    """``median (min-max)`` over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.median(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def format_result(
    result: ProbeResult, folder: Path, settings: Settings, linear_pooling: str = "mean"
) -> str:
    task = result.task
    majority = max(np.bincount([e.label for e in task.test])) / len(task.test)
    lines = [
        f"probe {task.name}: {len(task.label_names)} classes, {len(task.train):,} train / "
        f"{len(task.test):,} test examples, majority class {majority:.1%} of the test split",
        f"model {folder} ({result.parameters / 1e6:.1f} M parameters), {result.seconds:.0f} s",
        f"  {'probe':<11} {'init':<12} {'test accuracy, median (range)':>30}  per seed",
    ]
    described = {
        "linear": f"frozen {linear_pooling}-pooled features, logistic regression (C by 5-fold CV "
        "on train)",
        "finetune": f"{settings.epochs} epochs, {settings.pooling} pooling"
        + (", pooler re-initialised" if settings.reinit_pooler else "")
        + f", lr per init from {', '.join(f'{lr:g}' for lr in settings.lrs)} on held-out train",
    }
    for probe, by_init in result.accuracies.items():
        for init, accs in by_init.items():
            name = "fine-tuned" if probe == "finetune" else probe
            lr = f"  (lr {result.lrs[init]:g})" if probe == "finetune" else ""
            per_seed = "  ".join(f"{a:.1%}" for a in accs) if len(accs) > 1 else "(deterministic)"
            lines.append(f"  {name:<11} {init:<12} {summary(accs):>30}  {per_seed}{lr}")
    lines.append(f"  {'words':<11} {'TF-IDF':<12} {f'{result.tfidf:.1%}':>30}  (no encoder)")
    lines += [
        f"  {probe}: {text}" for probe, text in described.items() if probe in result.accuracies
    ]
    return "\n".join(lines)


def parse_lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        lrs = ()
    if not lrs or min(lrs) <= 0:
        raise UserError(
            f"--lrs {text!r} is not a list of positive rates — e.g. --lrs 1e-4,3e-4,1e-3"
        )
    return lrs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "model", type=Path, help="an exported model folder (RUN/hf) or a run folder"
    )
    parser.add_argument(
        "--task",
        default=BUILTIN,
        help=f"{BUILTIN} (built in), a .csv/.jsonl file, a datasets folder or a Hub NAME[:CONFIG]",
    )
    parser.add_argument("--mode", choices=MODES, default="both", help="which probes to run")
    parser.add_argument("--seeds", type=int, default=5, help="runs per init (seeds 0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument(
        "--lrs",
        default=",".join(f"{lr:g}" for lr in Settings.lrs),
        help="fine-tuning learning rates to choose from, per init, on held-out training data",
    )
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--max-length", type=int, default=Settings.max_length)
    parser.add_argument(
        "--pooling", choices=POOLINGS, default=Settings.pooling, help="fine-tuning's text vector"
    )
    parser.add_argument(
        "--linear-pooling", choices=POOLINGS, default="mean", help="the linear probe's vector"
    )
    parser.add_argument(
        "--reinit-pooler",
        action="store_true",
        help="fine-tune from a fresh pooler (it was trained on next-sentence prediction only)",
    )
    parser.add_argument("--max-train-examples", type=int, help="train on a fixed random N only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    parser.add_argument("--text-column", default=Columns.text)
    parser.add_argument("--pair-column", default=Columns.text_pair)
    parser.add_argument("--label-column", default=Columns.label)
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if min(args.seeds, args.epochs, args.batch_size, args.max_length) < 1:
            raise UserError(
                "--seeds, --epochs, --batch-size and --max-length must be >= 1 — fix the value"
            )
        settings = Settings(
            epochs=args.epochs,
            lrs=parse_lrs(args.lrs),
            batch_size=args.batch_size,
            max_length=args.max_length,
            pooling=args.pooling,
            reinit_pooler=args.reinit_pooler,
        )
        folder = model_dir(args.model)
        task = load_task(args.task, Columns(args.text_column, args.pair_column, args.label_column))
        if args.max_train_examples:  # a fixed random subset (the task lists them by class)
            keep = np.random.default_rng(0).permutation(len(task.train))[: args.max_train_examples]
            task.train = [task.train[i] for i in sorted(keep)]
        print(f"probe {task.name}: {folder} on {len(task.train):,} examples", flush=True)
        result = run_probe(
            folder,
            task,
            list(range(args.seeds)),
            settings,
            args.mode,
            not args.no_baseline,
            args.linear_pooling,
        )
        print(format_result(result, folder, settings, args.linear_pooling), flush=True)
