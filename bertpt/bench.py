"""Training-step throughput of bertpt against `transformers.BertForPreTraining` (a dev tool).

    python -m bertpt.bench --models tiny,mini,base --batch-size 32 --seq-len 128 [--bf16]
    python -m bertpt.bench --lightning      # GPU: BERT-base through the real command, seq/s, MFU

Both models get the same config, the same weights and the same realistic batches (~15% of real
tokens masked, NSP labels, padding at the end of some rows). A step is forward, backward, AdamW
step and zero_grad. Steps alternate between the two implementations after a warm-up, so a slow
drift of the machine (thermal, other processes) hits both alike. `transformers` is imported here
only: it is the reference, never a dependency of bertpt at run time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bertpt.flops import FORMULA, flops_per_sequence, mfu, peak_flops
from bertpt.model import BertConfig, BertForPreTraining
from bertpt.run_folder import METRICS

PRESETS = Path(__file__).resolve().parent.parent / "conf" / "model"
# Default (warm-up, timed) steps per preset: enough for a stable median, few enough for a run
# of minutes on a laptop CPU (a BERT-base step there takes ~10 s).
DEFAULT_STEPS = {"tiny": (3, 15), "mini": (3, 8), "small": (2, 5), "medium": (2, 4)}
BIG_MODEL_STEPS = (1, 3)


def load_preset(name: str, vocab_size: int = 30522) -> BertConfig:
    """A conf/model preset; its vocabulary is the tokenizer's in a run, BERT's here."""
    d = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    d.pop("init_from", None)
    return BertConfig.from_dict({**d, "vocab_size": vocab_size})


def make_batch(
    config: BertConfig, batch_size: int, seq_len: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A pretraining batch shaped like the collator's: [CLS] A [SEP] B [SEP] + padding."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch_size, seq_len
    # A quarter of the rows are shorter than T (end of document), padded to T.
    lengths = torch.full((B,), T)
    short = torch.rand(B, generator=g) < 0.25
    lengths[short] = torch.randint(T // 4, T, (int(short.sum()),), generator=g)
    pos = torch.arange(T)
    attention_mask = (pos < lengths[:, None]).long()  # (B, T)
    input_ids = torch.randint(5, config.vocab_size, (B, T), generator=g)
    input_ids[:, 0] = 2  # [CLS]
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = ((pos >= lengths[:, None] // 2) & (attention_mask == 1)).long()
    predict = (torch.rand(B, T, generator=g) < 0.15) & (attention_mask == 1) & (pos > 0)
    labels = torch.where(predict, input_ids, torch.full_like(input_ids, -100))
    input_ids = torch.where(predict, torch.full_like(input_ids, 4), input_ids)  # [MASK]
    next_sentence_label = torch.randint(0, 2, (B,), generator=g)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "next_sentence_label": next_sentence_label,
    }


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # The same optimizer implementation for both sides; fused where this torch build has it.
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)


class Runner:
    """One model + optimizer + precision; `step()` runs and times one training step."""

    def __init__(self, model: torch.nn.Module, batch: dict, bf16: bool) -> None:
        self.model, self.batch, self.bf16 = model.train(), batch, bf16
        self.optimizer = make_optimizer(model)
        self.seconds: list[float] = []

    def step(self, timed: bool = True) -> None:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        start = time.perf_counter()
        with autocast:
            loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.seconds.append(time.perf_counter() - start)

    def seqs_per_s(self, batch_size: int) -> float:
        # The median ignores steps slowed by other processes on a shared machine.
        return batch_size / statistics.median(self.seconds)


def bench_model(name: str, args: argparse.Namespace) -> list[tuple]:
    import transformers

    config = load_preset(name)
    torch.manual_seed(0)
    weights = BertForPreTraining(config).state_dict()
    hf_config = transformers.BertConfig(
        **{k: v for k, v in config.to_dict().items() if k != "gradient_checkpointing"},
        attn_implementation="sdpa",
    )
    batch = make_batch(config, args.batch_size, args.seq_len)
    warmup, steps = DEFAULT_STEPS.get(name, BIG_MODEL_STEPS)
    steps, warmup = args.steps or steps, warmup if args.warmup is None else args.warmup
    runners: dict[tuple[str, bool], Runner] = {}
    for bf16 in [False, True] if args.bf16 else [False]:
        for side, cls in (("bertpt", BertForPreTraining), ("hf", transformers.BertForPreTraining)):
            model = cls(hf_config if side == "hf" else config)
            model.load_state_dict(weights)
            runners[side, bf16] = Runner(model, batch, bf16)

    for _ in range(warmup):  # allocator, kernel selection, first touch of the weights
        for runner in runners.values():
            runner.step(timed=False)
    for _ in range(steps):  # alternate, so that drifts of the machine hit all alike
        for runner in runners.values():
            runner.step()

    rows = []
    for (side, bf16), runner in runners.items():
        if side == "hf":
            continue
        # bertpt fp32 against HF fp32; bertpt bf16 against HF at its best precision.
        hf = max(
            (r for (s, p), r in runners.items() if s == "hf" and p <= bf16),
            key=lambda r: r.seqs_per_s(1),
        )
        ours_sps, hf_sps = runner.seqs_per_s(args.batch_size), hf.seqs_per_s(args.batch_size)
        precision = ["fp32", "bf16"]
        rows.append((name, precision[bf16], ours_sps, precision[hf.bf16], hf_sps, steps))
    return rows


def run_throughput(run: Path, from_step: int) -> tuple[float, BertConfig, int, float]:
    """Of a finished ``python -m bertpt.train`` folder (``logger=csv``): the median training
    seq/s from ``from_step`` on, the model, the sequence length and the masked positions per
    sequence (from the data report)."""
    with open(run / METRICS) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/seq_per_s")]
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    report = hparams["data_report"]
    model = {k: v for k, v in hparams["model"].items() if k != "init_from"}
    model["vocab_size"] = hparams["tokenizer"]["vocab_size"]
    seq_per_s = statistics.median(
        float(r["train/seq_per_s"]) for r in rows if int(r["step"]) >= from_step
    )
    masked = report["masking_rate"] * report["mean_pair_length"]
    return seq_per_s, BertConfig.from_dict(model), report["max_seq_length"], masked


def lightning_run(steps: int, extra: list[str]) -> None:
    """BERT-base phase 1 (seq 128, bf16, ``trainer=gpu``) for ``steps`` steps of the real
    command, ``python -m bertpt.train``; prints its throughput and model-FLOPs utilisation."""
    if not torch.cuda.is_available():
        print("no CUDA device here: the Lightning run needs a GPU (skipped)")
        return
    from_step = min(50, steps // 4)  # after compilation, allocator and loader warm-up
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "+experiment=base", "trainer=gpu", f"optim.max_steps={steps}",
            "optim.warmup_steps=10", "tokenizer.vocab_size=8192",  # what the default corpus holds
            "logger=csv", "export_hf=false", f"hydra.run.dir={tmp}", *extra,
        ]  # fmt: skip
        print("python -m bertpt.train " + " ".join(args), flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bertpt.train", *args], check=True)
        wall = time.perf_counter() - start
        seq_per_s, config, seq_len, masked = run_throughput(Path(tmp), from_step)
    flops = flops_per_sequence(config, seq_len, masked)
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    util = mfu(seq_per_s, config, seq_len, masked, peak) if peak else None
    shown = f"{util:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "unknown peak"
    print(  # trainer=gpu trains on one GPU
        f"\nLightning, one {name}: {seq_per_s:.0f} seq/s "
        f"({seq_per_s * seq_len:.0f} tok/s, median step from step {from_step}), MFU {shown}; "
        f"{steps} steps in {wall:.0f} s with start-up\n"
        f"{FORMULA}: {flops / 1e9:.1f} GFLOP at seq {seq_len}, {masked:.1f} masked"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.bench",
        description="Time full training steps of bertpt and transformers.BertForPreTraining.",
    )
    parser.add_argument("--models", default="tiny,mini,base", help="presets from conf/model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side (default: by model size)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time bertpt under bf16 autocast against HF at its best of fp32 / bf16",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--lightning",
        type=int,
        nargs="?",
        const=200,
        metavar="STEPS",
        help="instead: BERT-base through python -m bertpt.train on the GPU (default 200 steps)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.lightning:
        lightning_run(args.lightning, extra)
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, batch {args.batch_size} x seq {args.seq_len}; "
        "tokens/s counts padded positions; median step time"
    )
    if args.bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("warning: this CPU has no native bf16 (AVX512-BF16/AMX): bf16 runs emulated, slowly")
    header = ("model", "bertpt", "seq/s", "tok/s", "HF", "seq/s", "tok/s", "ratio", "steps")
    print("{:<7} {:<6} {:>8} {:>9} {:<4} {:>8} {:>9} {:>6} {:>5}".format(*header))
    for name in args.models.split(","):
        for name_, prec, sps, hf_prec, hf_sps, steps in bench_model(name, args):
            T = args.seq_len
            print(
                f"{name_:<7} {prec:<6} {sps:>8.1f} {sps * T:>9.0f} {hf_prec:<4} {hf_sps:>8.1f} "
                f"{hf_sps * T:>9.0f} {sps / hf_sps:>5.2f}x {steps:>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
