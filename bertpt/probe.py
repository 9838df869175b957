"""Does the pretrained encoder know anything? Fine-tune it on a labelled task and compare.

    python -m bertpt.probe MODEL_DIR [--task docstrings] [--seeds 3] [--epochs 3]

MODEL_DIR is an exported folder (``RUN/hf``: config.json, model.safetensors, tokenizer.json) or a
run folder (its ``hf/``). The encoder gets a classification head (dropout and a linear layer on
the pooled ``[CLS]`` output, as Hugging Face's ``BertForSequenceClassification``) and every
weight is fine-tuned (AdamW, warmup and linear decay, batches of similar length) for a few
epochs; the accuracy on the task's test split is reported for each seed, with its mean and
standard deviation, next to the same model shape fine-tuned from random weights. Runs on a
CPU: bertpt's own model, the ``tokenizers`` library, no ``transformers``. Tasks:
``bertpt.probe_tasks`` (built in: ``docstrings``, no network).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from bertpt.errors import UserError, exit_on_user_error
from bertpt.hf import from_hf
from bertpt.model import BertForPreTraining, num_parameters
from bertpt.optim import param_groups, warmup_linear_decay
from bertpt.probe_tasks import BUILTIN, Columns, Example, Task, load_task

INITS = ("pretrained", "random init")
# Batches are drawn from windows of this many batches sorted by length: little padding, and
# still a different mix of examples in every batch of every epoch.
SORT_WINDOW = 50


@dataclass
class Settings:
    # Measured on the built-in task with make train's model (5 epochs, 1 seed): lr 5e-5 left
    # both inits near 20-25%, 2e-4 gave 48% / 71% and 5e-4 61% / 73% (pretrained / random).
    epochs: int = 4
    lr: float = 5e-4
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_share: float = 0.1


class BertForSequenceClassification(nn.Module):
    """An encoder with a classification head; the names (``bert``, ``classifier``) are those of
    Hugging Face's class."""

    def __init__(self, bert: nn.Module, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.bert = bert
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) ids -> (B, num_labels) logits."""
        sequence_output, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        # An encoder without a pooler (RoBERTa-style) classifies from the first token's state.
        features = pooled if pooled is not None else sequence_output[:, 0]  # (B, H)
        return self.classifier(self.dropout(features))


@dataclass
class Encoded:
    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: list[int]


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


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} not found — the probe needs the export's own tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer: Tokenizer, examples: list[Example]) -> Encoded:
    """Token ids with the tokenizer's own [CLS] ... [SEP] (and pair) template, truncated."""
    pairs = examples and examples[0].text_pair is not None
    inputs = [(e.text, e.text_pair) if pairs else e.text for e in examples]
    encodings = tokenizer.encode_batch(inputs)
    return Encoded(
        [e.ids for e in encodings], [e.type_ids for e in encodings], [e.label for e in examples]
    )


def length_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list:
    """Index batches of similar length, in random order."""
    order = rng.permutation(len(lengths))
    window = batch_size * SORT_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(data: Encoded, batch: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(data.ids[i]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    types = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        n = len(data.ids[i])
        ids[row, :n] = torch.tensor(data.ids[i])
        types[row, :n] = torch.tensor(data.type_ids[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@torch.no_grad()
def accuracy(model: nn.Module, data: Encoded, pad_id: int, batch_size: int = 64) -> float:
    model.eval()
    order = sorted(range(len(data.ids)), key=lambda i: len(data.ids[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        predicted = model(**collate(data, batch, pad_id)).argmax(-1)
        correct += int((predicted == torch.tensor([data.labels[i] for i in batch])).sum())
    return correct / len(order)


def fine_tune(
    encoder: BertForPreTraining,
    train: Encoded,
    test: Encoded,
    num_labels: int,
    seed: int,
    settings: Settings,
    desc: str,
) -> float:
    """Fine-tune ``encoder`` with a fresh head; the test accuracy."""
    config = encoder.config
    torch.manual_seed(seed)
    model = BertForSequenceClassification(
        encoder.bert, config.hidden_size, num_labels, config.hidden_dropout_prob
    )
    rng = np.random.default_rng(seed)
    lengths = [len(ids) for ids in train.ids]
    steps = settings.epochs * -(-len(lengths) // settings.batch_size)
    optimizer = torch.optim.AdamW(
        param_groups(model.named_parameters(), settings.weight_decay), lr=settings.lr
    )
    warmup = int(settings.warmup_share * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, steps))
    with tqdm(total=steps, desc=desc, unit="step", leave=False, mininterval=1.0) as bar:
        for _ in range(settings.epochs):
            model.train()
            for batch in length_batches(lengths, settings.batch_size, rng):
                logits = model(**collate(train, batch, config.pad_token_id))
                loss = F.cross_entropy(logits, torch.tensor([train.labels[i] for i in batch]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                bar.update()
    return accuracy(model, test, config.pad_token_id)


@dataclass
class ProbeResult:
    task: Task
    accuracies: dict[str, list[float]]  # init -> one test accuracy per seed
    parameters: int
    seconds: float


def run_probe(
    folder: str | Path,
    task: Task,
    seeds: list[int],
    settings: Settings | None = None,
    baseline: bool = True,
    log: Callable[[str], None] = print,
) -> ProbeResult:
    """Fine-tune the exported model (and, with ``baseline``, the same shape from random
    weights) once per seed; the test accuracies."""
    settings = settings or Settings()
    folder = model_dir(folder)
    tokenizer = load_tokenizer(folder, settings.max_length)
    pretrained = from_hf(folder)
    config = pretrained.config
    if settings.max_length > config.max_position_embeddings:
        raise UserError(
            f"--max-length {settings.max_length} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}) — pass a smaller --max-length"
        )
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise UserError(
            f"{folder}/tokenizer.json has {tokenizer.get_vocab_size():,} tokens, the model "
            f"{config.vocab_size:,} — give the folder the model was exported into, with its own "
            "tokenizer"
        )
    train, test = encode(tokenizer, task.train), encode(tokenizer, task.test)
    builders: dict[str, Callable[[], BertForPreTraining]] = {
        "pretrained": lambda: copy.deepcopy(pretrained)
    }
    if baseline:
        builders["random init"] = lambda: BertForPreTraining(config)
    start, accuracies = time.perf_counter(), {}
    for init, build in builders.items():
        accuracies[init] = []
        for seed in seeds:
            torch.manual_seed(seed)  # the random-init weights
            t = time.perf_counter()
            desc = f"{init}, seed {seed}"
            acc = fine_tune(build(), train, test, len(task.label_names), seed, settings, desc)
            accuracies[init].append(acc)
            log(f"  {desc}: test accuracy {acc:.1%} ({time.perf_counter() - t:.0f} s)")
    return ProbeResult(task, accuracies, num_parameters(pretrained), time.perf_counter() - start)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_result(result: ProbeResult, folder: Path, settings: Settings) -> str:
    task = result.task
    majority = max(np.bincount([e.label for e in task.test])) / len(task.test)
    lines = [
        f"probe {task.name}: {len(task.label_names)} classes, {len(task.train):,} train / "
        f"{len(task.test):,} test examples, majority class {majority:.1%} of the test split",
        f"model {folder} ({result.parameters / 1e6:.1f} M parameters): {settings.epochs} epochs, "
        f"lr {settings.lr:g}, batch {settings.batch_size}, {result.seconds:.0f} s",
        f"  {'init':<12}  {'test accuracy':>15}  per seed",
    ]
    for init, accs in result.accuracies.items():
        mean, std = mean_std(accs)
        per_seed = "  ".join(f"{a:.1%}" for a in accs)
        lines.append(f"  {init:<12}  {f'{mean:.1%} ± {std:.1%}':>15}  {per_seed}")
    return "\n".join(lines)


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
    parser.add_argument(
        "--seeds", type=int, default=3, help="fine-tuning runs per init (0, 1, ...)"
    )
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--max-length", type=int, default=Settings.max_length)
    parser.add_argument("--max-train-examples", type=int, help="fine-tune on the first N only")
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
        settings = Settings(args.epochs, args.lr, args.batch_size, args.max_length)
        folder = model_dir(args.model)
        task = load_task(args.task, Columns(args.text_column, args.pair_column, args.label_column))
        if args.max_train_examples:  # a fixed random subset (the task lists them by class)
            keep = np.random.default_rng(0).permutation(len(task.train))[: args.max_train_examples]
            task.train = [task.train[i] for i in sorted(keep)]
        print(
            f"probe {task.name}: fine-tuning {folder} on {len(task.train):,} examples", flush=True
        )
        result = run_probe(folder, task, list(range(args.seeds)), settings, not args.no_baseline)
        print(format_result(result, folder, settings), flush=True)


if __name__ == "__main__":
    main()
