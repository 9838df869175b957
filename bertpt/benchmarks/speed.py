"""Training-step throughput of bertpt against `transformers.BertForPreTraining` (a dev tool).

    python -m bertpt.bench                   # CPU: tiny, mini, base at 128, bertpt vs HF, fp32
                                             # and (where the CPU has it natively) bf16
    python -m bertpt.bench --device cuda     # GPU: base and large at 128 and 512, bf16, every
                                             # variant, then BERT-base through the real command
    python -m bertpt.bench --lightning 200   # GPU: only the real command, seq/s and MFU
    python -m bertpt.bench --device cuda --max-batch   # the largest batch that fits in 80 GB

Every variant gets the same config, the same weights and the same realistic batches (~15% of
real tokens masked, NSP labels, padding at the end of some rows). A step is forward, backward,
AdamW step and zero_grad. Steps alternate between the variants after a warm-up, so a slow drift
of the machine (thermal, other processes) hits all alike. On a GPU a timed block is several
steps between two synchronisations, as in training. `transformers` is imported here only: it
is the reference, never a dependency of bertpt at run time.
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import yaml

from bertpt import CONF_DIR
from bertpt.model.bert import SPEED_FIELDS, BertConfig, BertForPreTraining
from bertpt.model.flops import FORMULA, flops_per_sequence, mfu, peak_flops
from bertpt.model.kernels import Unpadding
from bertpt.runs.folder import METRICS
from bertpt.training import precision
from bertpt.training.console import quiet_dependencies

PRESETS = CONF_DIR / "model"
# Default (warm-up, timed) steps per preset: enough for a stable median, few enough for a run
# of minutes on a laptop CPU (a BERT-base step there takes ~10 s).
DEFAULT_STEPS = {"tiny": (3, 25), "mini": (3, 12), "small": (2, 5), "medium": (2, 4)}
BIG_MODEL_STEPS = (1, 3)
GPU_STEPS = (3, 10)  # (warm-up, timed) blocks on a GPU
GPU_BLOCK = 5  # steps per timed block on a GPU
# Variant -> (implementation, unpadded, compiled). Compiled bertpt compiles each layer, as
# trainer.compile does; compiled transformers compiles the whole model.
VARIANTS = {
    "bertpt": ("bertpt", False, False),
    "bertpt-compiled": ("bertpt", False, True),
    "bertpt-unpadded": ("bertpt", True, False),
    "bertpt-unpadded-compiled": ("bertpt", True, True),
    "hf": ("hf", False, False),
    "hf-compiled": ("hf", False, True),
}
VARIANTS_GPU = "bertpt-unpadded-compiled"  # what trainer=gpu runs
# What `python -m bertpt.bench` measures by default on each kind of device.
DEFAULTS = {
    "cpu": dict(models="tiny,mini,base", seq_lens="128", variants="bertpt,hf"),
    "cuda": dict(models="base,large", seq_lens="128,512", variants=",".join(VARIANTS)),
}
GPU_BATCH = {128: 256, 512: 32}  # BERT's phase 1 and phase 2 batches per GPU
# Share of rows shorter than the sequence length, as the NSP builder gives them: 6-19% of the
# tokens are padding at 128 and 20-61% at 512.
SHORT_ROWS = {128: 0.25, 512: 0.6}


def load_preset(name: str, vocab_size: int = 30522) -> BertConfig:
    """A conf/model preset; its vocabulary is the tokenizer's in a run, BERT's here."""
    d = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    d.pop("init_from", None)
    return BertConfig.from_dict({**d, "vocab_size": vocab_size})


def make_batch(
    config: BertConfig, batch_size: int, seq_len: int, seed: int = 0, short_rows: float = 0.25
) -> dict[str, torch.Tensor]:
    """A pretraining batch shaped like the collator's: [CLS] A [SEP] B [SEP] + padding; the
    share `short_rows` of the rows is shorter than `seq_len` (end of document), padded."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch_size, seq_len
    lengths = torch.full((B,), T)
    short = torch.rand(B, generator=g) < short_rows
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
    """One model + optimizer + precision; `step()` runs and times training steps."""

    def __init__(self, model: torch.nn.Module, batch: dict, bf16: bool, block: int = 1) -> None:
        self.model, self.batch, self.bf16, self.block = model.train(), batch, bf16, block
        self.device = batch["input_ids"].device
        self.optimizer = make_optimizer(model)
        self.seconds: list[float] = []  # per step

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, timed: bool = True) -> float:
        """Run `block` steps; returns their mean time in seconds."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        self._sync()
        start = time.perf_counter()
        for _ in range(self.block):
            with autocast:
                loss = self.model(**self.batch).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        seconds = (time.perf_counter() - start) / self.block
        if timed:
            self.seconds.append(seconds)
        return seconds

    def seqs_per_s(self, batch_size: int) -> float:
        # The median ignores steps slowed by other processes on a shared machine.
        return batch_size / statistics.median(self.seconds)


def build_variant(
    name: str, config: BertConfig, weights: dict, batch: dict, bf16: bool, block: int
) -> Runner:
    """The runner of one VARIANTS entry, with `weights` and the batch on its device."""
    import transformers

    side, unpadded, compiled = VARIANTS[name]
    device = batch["input_ids"].device
    if side == "hf":
        hf_config = transformers.BertConfig(
            **{k: v for k, v in config.to_dict().items() if k not in SPEED_FIELDS},
            attn_implementation="sdpa",
        )
        model = transformers.BertForPreTraining(hf_config)
        model.load_state_dict(weights)
        model.to(device)
        if compiled:
            model = torch.compile(model)
    else:
        model = BertForPreTraining(replace(config, unpad=unpadded))
        model.load_state_dict(weights)
        model.to(device)
        if unpadded:  # built on the host and copied, as the training loop does
            unpadding = Unpadding.of(batch["attention_mask"].cpu(), batch["labels"].cpu())
            batch = {**batch, "unpadding": unpadding.to(device)}
        if compiled:
            for layer in model.bert.encoder.layer:
                layer.compile()
    return Runner(model, batch, bf16, block)


@dataclass
class Row:
    model: str
    seq_len: int
    batch_size: int
    variant: str
    precision: str
    seq_per_s: float
    mfu: float | None
    first_step_s: float  # warm-up included compilation: reported once
    seconds: list[float]  # per timed round; the rounds of all variants alternate

    def speedup(self, other: Row) -> float:
        """How many times faster than `other`: the median of the per-round ratios, so that a
        round slowed by other work on the machine weighs on both sides alike."""
        return statistics.median(o / s for s, o in zip(self.seconds, other.seconds, strict=True))


def bench_case(
    name: str, seq_len: int, batch_size: int, variants: list[str], args: argparse.Namespace
) -> list[Row]:
    """Every variant on one model preset and sequence length, steps alternating."""
    # Compiled variants share BertLayer.forward: past dynamo's limit of cached graphs per
    # function (8), it would run the later cases eagerly. Each case compiles afresh.
    torch._dynamo.reset()
    device = torch.device(args.device)
    config = load_preset(name)
    torch.manual_seed(0)
    weights = BertForPreTraining(config).state_dict()
    short = SHORT_ROWS.get(seq_len, 0.25)
    batch = make_batch(config, batch_size, seq_len, short_rows=short)
    batch = {k: v.to(device) for k, v in batch.items()}
    masked = float((batch["labels"] != -100).sum()) / batch_size
    on_gpu = device.type == "cuda"
    warmup, steps = GPU_STEPS if on_gpu else DEFAULT_STEPS.get(name, BIG_MODEL_STEPS)
    steps, warmup = args.steps or steps, warmup if args.warmup is None else args.warmup
    precisions = [True] if on_gpu else ([False, True] if args.bf16 else [False])
    runners: dict[tuple[str, bool], Runner] = {}
    first: dict[tuple[str, bool], float] = {}
    for bf16 in precisions:
        for variant in variants:
            try:
                runner = build_variant(
                    variant, config, weights, batch, bf16, GPU_BLOCK if on_gpu else 1
                )
                first[variant, bf16] = runner.step(timed=False)  # compiles, where compiled
            except Exception as e:  # a variant that cannot run here is reported, not fatal
                print(f"{name} {seq_len} {variant}: did not run ({type(e).__name__}: {e})")
                continue
            runners[variant, bf16] = runner
    for _ in range(max(warmup - 1, 0)):  # allocator, kernel selection, first touch of weights
        for runner in runners.values():
            runner.step(timed=False)
    for _ in range(steps):  # alternate, so that drifts of the machine hit all alike
        for runner in runners.values():
            runner.step()
    peak = peak_flops(torch.cuda.get_device_name(device)) if on_gpu else None
    rows = []
    for (variant, bf16), runner in runners.items():
        sps = runner.seqs_per_s(batch_size)
        util = mfu(sps, config, seq_len, masked, peak) if peak else None
        precision = "bf16" if bf16 else "fp32"
        first_s = first[variant, bf16]
        rows.append(
            Row(name, seq_len, batch_size, variant, precision, sps, util, first_s, runner.seconds)
        )
    return rows


def print_rows(rows: list[Row], steps_note: str, auto: str | None = None) -> None:
    """One line per variant; the ratio is to transformers eager at the same precision (on a
    CPU, bertpt under bf16 against HF at its best of fp32 and bf16), per round (Row.speedup).
    The precision ``auto`` ("fp32" or "bf16": what trainer.precision=auto trains in) is starred."""
    header = ("model", "seq", "batch", "variant", "prec", "seq/s", "tok/s", "MFU", "vs HF", "1st s")
    print("{:<6} {:>4} {:>5} {:<25} {:<5}{:>8} {:>9} {:>6} {:>6} {:>6}".format(*header))
    for r in rows:
        hf = [
            h
            for h in rows
            if h.variant == "hf" and (h.model, h.seq_len) == (r.model, r.seq_len)
            and (h.precision == r.precision or r.precision == "bf16")
        ]  # fmt: skip
        ratio = f"{r.speedup(max(hf, key=lambda h: h.seq_per_s)):.2f}x" if hf else "-"
        util = f"{r.mfu:.1%}" if r.mfu is not None else "-"
        prec = r.precision + ("*" if r.precision == auto else "")
        print(
            f"{r.model:<6} {r.seq_len:>4} {r.batch_size:>5} {r.variant:<25} {prec:<5}"
            f"{r.seq_per_s:>8.1f} {r.seq_per_s * r.seq_len:>9.0f} {util:>6} {ratio:>6} "
            f"{r.first_step_s:>6.1f}",
            flush=True,
        )
    print(steps_note)


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch size up to `limit` for which `fits` holds (0: none), assuming that
    every batch smaller than one that fits fits too: doubling from `start`, then bisection."""
    low, size = 0, start
    while size <= limit and fits(size):
        low, size = size, size * 2
    high = min(size, limit + 1)  # does not fit, or is past the limit
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def _fits(config: BertConfig, weights: dict, seq_len: int, batch_size: int) -> bool:
    """Whether two training steps of the trainer=gpu variant run at this batch size."""
    torch._dynamo.reset()  # as in bench_case
    batch = make_batch(config, batch_size, seq_len, short_rows=0.0)  # no padding: the worst
    batch = {k: v.to("cuda") for k, v in batch.items()}
    try:
        runner = build_variant(VARIANTS_GPU, config, weights, batch, True, 1)
        runner.step(timed=False)
        runner.step(timed=False)  # the optimizer's state exists from the first step on
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        runner = batch = None
        torch.cuda.empty_cache()


def max_batch_report(args: argparse.Namespace, memory_gb: float = 80.0) -> None:
    """The largest batch of the trainer=gpu step (unpadded, compiled, bf16, fused AdamW) that
    fits in `memory_gb` of this GPU, for base at 128 and 512 and large at 512, with and
    without activation checkpointing."""
    device = torch.device(args.device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * 1e9 / total), device)
    print(f"largest batch in {memory_gb:.0f} GB of one {torch.cuda.get_device_name(device)}")
    for name, seq_len in (("base", 128), ("base", 512), ("large", 512)):
        for checkpointing in (False, True):
            config = replace(load_preset(name), gradient_checkpointing=checkpointing)
            fits = partial(_fits, config, BertForPreTraining(config).state_dict(), seq_len)
            best = largest_batch(fits, start=GPU_BATCH[seq_len], limit=1 << 14)
            note = "with" if checkpointing else "without"
            print(f"  {name:<5} seq {seq_len}: {best} sequences ({note} gradient_checkpointing)")


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


def lightning_run(steps: int, extra: list[str]) -> float | None:
    """BERT-base phase 1 (seq 128, bf16, ``trainer=gpu``) for ``steps`` steps of the real
    command, ``python -m bertpt.train``; prints its throughput and model-FLOPs utilisation and
    returns its seq/s (None without a GPU)."""
    if not torch.cuda.is_available():
        print("no CUDA device here: the Lightning run needs a GPU (skipped)")
        return None
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
        f"({seq_per_s * seq_len:.0f} tok/s, median of the logged windows from step {from_step}), "
        f"MFU {shown}; {steps} steps in {wall:.0f} s with start-up\n"
        f"{FORMULA}: {flops / 1e9:.1f} GFLOP at seq {seq_len}, {masked:.1f} masked"
    )
    return seq_per_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.bench",
        description="Time full training steps of bertpt and transformers.BertForPreTraining.",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--models", default=None, help="presets from conf/model")
    parser.add_argument("--seq-lens", default=None, help="comma-separated sequence lengths")
    parser.add_argument("--variants", default=None, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU 32; GPU 256 / 32")
    parser.add_argument("--seq-len", type=int, default=None, help="one sequence length")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side (default: by model size)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU: also time under bf16 autocast (default: where the CPU has native bf16; "
        "--no-bf16: fp32 only). A GPU always runs bf16",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--lightning",
        type=int,
        nargs="?",
        const=200,
        metavar="STEPS",
        help="only BERT-base through python -m bertpt.train on the GPU (default 200 steps)",
    )
    parser.add_argument(
        "--max-batch", action="store_true", help="GPU: the largest batch that fits in 80 GB"
    )
    args, extra = parser.parse_known_args(argv)
    quiet_dependencies()
    if args.lightning:
        lightning_run(args.lightning, extra)
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    kind = torch.device(args.device).type
    if kind not in DEFAULTS:
        parser.error(f"--device {args.device}: use cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.max_batch:
        max_batch_report(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = DEFAULTS[kind]
    models = (args.models or defaults["models"]).split(",")
    seq_lens = [args.seq_len] if args.seq_len else [
        int(x) for x in (args.seq_lens or defaults["seq_lens"]).split(",")
    ]  # fmt: skip
    variants = (args.variants or defaults["variants"]).split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")

    where = (
        torch.cuda.get_device_name(args.device)
        if kind == "cuda"
        else f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"torch {torch.__version__}, {where}; tokens/s counts padded positions; median step "
        "time; vs HF: median of the per-round ratios; MFU on a GPU (FLOPs formula below)"
    )
    auto = "bf16"  # what trainer.precision=auto trains in here (a GPU: bf16-mixed)
    if kind == "cpu":
        unit = precision.native_bf16_unit()
        auto = "bf16" if unit else "fp32"
        if args.bf16 is None:
            args.bf16 = unit is not None
        print(
            f"native bf16: {unit or 'none (bf16 is emulated, slowly)'}; trainer.precision=auto "
            f"trains in {'bf16-mixed' if unit else '32-true'} here (* below)"
            + ("" if args.bf16 else "; --bf16 times the emulated bf16 too")
        )
    rows = []
    for seq_len in seq_lens:
        batch_size = args.batch_size or (GPU_BATCH.get(seq_len, 32) if kind == "cuda" else 32)
        for name in models:
            rows += bench_case(name, seq_len, batch_size, variants, args)
    padding = ", ".join(f"{SHORT_ROWS.get(t, 0.25):.0%} of rows short at {t}" for t in seq_lens)
    print_rows(rows, f"{FORMULA}; batches: {padding}", auto)
    if kind == "cuda":
        lightning = lightning_run(200, [])
        raw = [r for r in rows if (r.model, r.seq_len, r.variant) == ("base", 128, VARIANTS_GPU)]
        if lightning and raw:
            print(
                f"Lightning end to end / raw model step ({VARIANTS_GPU}, batch "
                f"{raw[0].batch_size}): {lightning / raw[0].seq_per_s:.2f}"
            )
