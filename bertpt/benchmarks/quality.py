"""Learning against a peer: bertpt and a plain transformers pretraining loop at equal steps.

    python -m bertpt.bench_quality                       # mini, its recipe, evaluated 4 times
    python -m bertpt.bench_quality --experiment tiny --steps 300 --evals 3

Both sides get the same corpus (the offline default one; its documents split once into a
training and a held-out part), the same tokenizer (trained once by bertpt), the same model size,
masking rate, batch, optimizer (AdamW, no decay on biases and LayerNorm, the experiment's lr,
betas, eps and weight decay, gradient clipping at 1.0) and schedule (warmup, then linear decay),
and the same seed. Each is built from its own library's pieces only:

- bertpt: ``python -m bertpt.train +experiment=NAME`` itself, checkpoints at the evaluation steps;
- the peer: ``transformers.BertForPreTraining``, ``DataCollatorForLanguageModeling`` and
  ``get_linear_schedule_with_warmup`` in a plain PyTorch loop, on sentence pairs built as
  transformers' own ``TextDatasetForNextSentencePrediction`` built them (removed in v5: its
  logic is in ``peer_pairs``).

Both are judged by one evaluator on the same held-out pairs with fixed masks (transformers'
model runs both sets of weights: the checkpoint keys are the same) and the same probe
(``val/probe_acc``'s, on the built-in task). It prints validation MLM accuracy, NSP accuracy,
probe accuracy and training wall time side by side at each evaluation step. A benchmark, not a
test; ``transformers`` is a dev dependency and is imported here only.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bertpt import CONF_DIR
from bertpt.data.corpus import build_default_corpus, read_documents
from bertpt.data.tokenizer import train_tokenizer
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.checkpoint import read_checkpoint
from bertpt.probing.callback import MAX_LENGTH
from bertpt.probing.linear import linear_accuracy
from bertpt.probing.tasks import encode, load_task, load_tokenizer
from bertpt.runs.history import metric_series
from bertpt.training.console import quiet_dependencies
from bertpt.training.export import checkpoint_model

HELD_OUT_EVERY = 50  # every 50th document of the corpus is held out for evaluation
EVAL_PAIRS = 1024


def experiment_config(name: str, overrides: list[str]) -> OmegaConf:
    """The composed config of ``+experiment=NAME`` (what bertpt.train would run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"+experiment={name}", *overrides])


def split_corpus(corpus: Path, out: Path) -> tuple[Path, Path]:
    """The corpus's documents in two BERT-format files: training, and every 50th held out."""
    train, held = [], []
    for i, doc in enumerate(read_documents(corpus)):
        (held if i % HELD_OUT_EVERY == 0 else train).append("\n".join(doc))
    paths = out / "train.txt", out / "heldout.txt"
    for path, docs in zip(paths, (train, held), strict=True):
        path.write_text("\n\n".join(docs) + "\n")
    return paths


# --- the peer: transformers' pieces -------------------------------------------------------------


def peer_pairs(
    documents: list[list[list[int]]],
    tokenizer,
    max_seq_length: int,
    rng: random.Random,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
) -> list[dict]:
    """Sentence pairs as transformers' TextDatasetForNextSentencePrediction made them (v4): a
    target length (shorter with short_seq_prob), segments of whole sentences, B the true
    continuation or (nsp_probability) a span of another document, truncated from the longer
    side; ``[CLS] A [SEP] B [SEP]`` with token types 0 and 1 (v5 tokenizers no longer build a
    pair from ids)."""
    max_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    examples = []
    for d, document in enumerate(documents):
        target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
        chunk: list[list[int]] = []
        length, i = 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                if chunk:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = [t for s in chunk[:a_end] for t in s]
                    if len(chunk) == 1 or rng.random() < nsp_probability:
                        is_random = 1
                        other = documents[rng.choice([j for j in range(len(documents)) if j != d])]
                        start = rng.randint(0, len(other) - 1)
                        b = [t for s in other[start:] for t in s][: max(1, target - len(a))]
                        i -= len(chunk) - a_end  # give back the unused sentences
                    else:
                        is_random = 0
                        b = [t for s in chunk[a_end:] for t in s]
                    while len(a) + len(b) > max_tokens:  # truncate the longer side
                        longer = a if len(a) > len(b) else b
                        if rng.random() < 0.5:
                            del longer[0]
                        else:
                            longer.pop()
                    if a and b:
                        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
                        examples.append(
                            {
                                "input_ids": [cls, *a, sep, *b, sep],
                                "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                                "attention_mask": [1] * (len(a) + len(b) + 3),
                                "next_sentence_label": is_random,
                            }
                        )
                chunk, length = [], 0
            i += 1
    return examples


def tokenized_documents(path: Path, tokenizer) -> list[list[list[int]]]:
    docs = [doc for doc in read_documents(path) if doc]
    flat = [s for doc in docs for s in doc]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
    out, k = [], 0
    for doc in docs:
        out.append(ids[k : k + len(doc)])
        k += len(doc)
    return [d for d in out if len(d) >= 1]


def train_peer(cfg, tokenizer_dir: Path, train_file: Path, eval_steps: list[int], seed: int):
    """The transformers loop: {step: (state_dict, seconds of training so far)} at each
    evaluation step."""
    import transformers
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    transformers.set_seed(seed)
    tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    documents = tokenized_documents(train_file, tokenizer)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    config = transformers.BertConfig(
        **{k: model_cfg[k] for k in BertConfig.__dataclass_fields__ if k in model_cfg},
    )
    config.vocab_size = tokenizer.vocab_size
    model = transformers.BertForPreTraining(config)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.data.mlm_probability)
    o = cfg.optim
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": o.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, o.warmup_steps, o.max_steps)
    batch_size, rng = cfg.data.global_batch_size, random.Random(seed)
    snapshots, wall, step = {}, 0.0, 0
    model.train()
    while step < max(eval_steps):
        examples = peer_pairs(documents, tokenizer, cfg.data.max_seq_length, rng)
        rng.shuffle(examples)
        for start in range(0, len(examples) - batch_size + 1, batch_size):
            t = time.perf_counter()
            batch = collator(examples[start : start + batch_size])
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            wall += time.perf_counter() - t
            step += 1
            if step in eval_steps:
                snapshots[step] = ({k: v.clone() for k, v in model.state_dict().items()}, wall)
                print(f"transformers: step {step}, {wall:.0f} s of training", flush=True)
            if step >= max(eval_steps):
                break
    return snapshots


# --- one evaluator for both ---------------------------------------------------------------------


def eval_batches(
    tokenizer_dir: Path, heldout: Path, cfg, seed: int, n_pairs: int = EVAL_PAIRS
) -> list[dict]:
    """Held-out pairs with fixed masks (made once, by the peer's pieces, scored for both)."""
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    rng = random.Random(seed + 1)
    documents = tokenized_documents(heldout, tokenizer)
    examples: list[dict] = []
    while len(examples) < n_pairs:  # more passes (other pairs) until there are enough
        examples += peer_pairs(documents, tokenizer, 128, rng)
    examples = examples[:n_pairs]
    torch.manual_seed(seed + 1)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.data.mlm_probability)
    return [collator(examples[i : i + 64]) for i in range(0, len(examples), 64)]


@torch.no_grad()
def evaluate(state_dict: dict, config: dict, batches: list[dict], probe_data) -> dict[str, float]:
    """Masked-token accuracy and NSP accuracy on the fixed batches, and the probe accuracy."""
    import transformers

    hf = transformers.BertForPreTraining(transformers.BertConfig(**config))
    hf.load_state_dict(state_dict, strict=False)  # position_ids buffers differ by version
    hf.eval()
    mlm = [0, 0]
    nsp = [0, 0]
    for batch in batches:
        out = hf(**{k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")})
        labels = batch["labels"]
        masked = labels != -100
        mlm[0] += int((out.prediction_logits.argmax(-1)[masked] == labels[masked]).sum())
        mlm[1] += int(masked.sum())
        nsp[0] += int(
            (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        )
        nsp[1] += len(labels)
    ours = BertForPreTraining(BertConfig.from_dict(config))
    ours.load_state_dict({k: v for k, v in state_dict.items() if k in ours.state_dict()})
    train, test = probe_data
    probe = linear_accuracy(ours.bert, train, test, ours.config.pad_token_id, classifier="ridge")
    return {"mlm_acc": mlm[0] / mlm[1], "nsp_acc": nsp[0] / nsp[1], "probe_acc": probe}


def training_seconds(run: Path, batch_size: int) -> float:
    """A bertpt run's time in training steps (data wait included, validation not), from its
    logged throughput: each logged window's sequences over its sequences per second."""
    series = metric_series(run)
    rates = series["train/seq_per_s"]
    total, previous = 0.0, -1
    for step, rate in rates:
        total += (step - previous) * batch_size / float(rate)
        previous = step
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.bench_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--experiment", default="mini", help="a CPU experiment (conf/experiment)")
    parser.add_argument("--steps", type=int, help="training steps (default: the experiment's)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations, evenly spaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-pairs", type=int, default=EVAL_PAIRS, help="held-out pairs scored")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    quiet_dependencies()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = experiment_config(args.experiment, [])
    steps = args.steps or cfg.optim.max_steps
    eval_steps = sorted({round(steps * (i + 1) / args.evals) for i in range(args.evals)})
    cfg = experiment_config(args.experiment, [f"optim.max_steps={steps}"])

    corpus = build_default_corpus(work / "corpus.txt")
    train_file, heldout = split_corpus(corpus, work)
    tokenizer_dir = train_tokenizer(
        train_file, work / "tokenizer", vocab_size=cfg.tokenizer.vocab_size, show_progress=False
    )

    # bertpt: the real command, checkpoints at the evaluation steps
    run = work / "bertpt"
    gap = eval_steps[0] if len(eval_steps) == 1 else min(np.diff([0, *eval_steps]))
    command = [
        sys.executable, "-m", "bertpt.train", f"+experiment={args.experiment}",
        f"optim.max_steps={steps}", f"seed={args.seed}", f"data.corpus={train_file}",
        f"data.val_corpus={heldout}", f"tokenizer.path={tokenizer_dir}", "logger=csv",
        "callbacks=default", f"callbacks.model_checkpoint.every_n_train_steps={gap}",
        f"trainer.val_check_interval={steps}", f"paths.data_dir={work}", f"hydra.run.dir={run}",
    ]  # fmt: skip
    print("bertpt:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    bertpt_wall = training_seconds(run, cfg.data.global_batch_size)

    peer = train_peer(cfg, tokenizer_dir, train_file, eval_steps, args.seed)

    task = load_task("docstrings")
    tokenizer = load_tokenizer(tokenizer_dir, MAX_LENGTH)  # as val/probe_acc encodes it
    probe_data = (encode(tokenizer, task.train), encode(tokenizer, task.test))
    batches = eval_batches(tokenizer_dir, heldout, cfg, args.seed, args.eval_pairs)
    print(
        f"\nbench_quality {args.experiment}: {steps} steps of {cfg.data.global_batch_size} "
        f"sequences, lr {cfg.optim.lr:g}, warmup {cfg.optim.warmup_steps}, masking "
        f"{cfg.data.mlm_probability:g}, seed {args.seed}; evaluated on {args.eval_pairs:,} "
        "held-out pairs (fixed masks) and the built-in probe task"
    )
    print(f"  {'step':>6}  {'':<13} {'val MLM acc':>11} {'NSP acc':>8} {'probe acc':>9}")
    for step in eval_steps:
        model = checkpoint_model(read_checkpoint(run / "checkpoints" / f"step{step:07d}.ckpt"))
        config = model.config.to_dict()
        peer_state, _ = peer[step]
        rows = {
            "bertpt": evaluate(model.state_dict(), config, batches, probe_data),
            "transformers": evaluate(peer_state, config, batches, probe_data),
        }
        for name, row in rows.items():
            print(
                f"  {step:>6}  {name:<13} {row['mlm_acc']:>11.4f} {row['nsp_acc']:>8.3f} "
                f"{row['probe_acc']:>9.1%}"
            )
    peer_wall = peer[eval_steps[-1]][1]
    print(
        f"  training time for {steps} steps (batches and steps, no validation): bertpt "
        f"{bertpt_wall:.0f} s, transformers {peer_wall:.0f} s ({peer_wall / bertpt_wall:.2f}x)"
    )
    print(f"  files: {work}")
