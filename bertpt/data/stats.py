"""What the data pipeline makes of a corpus, measured before any training.

    python -m bertpt.data_report data/corpus.txt --tokenizer data/tokenizer --batch-size 32

prints documents, sentences, tokens, the [UNK] rate, pairs per epoch, the share of random-next
pairs, the truncation rate, the padding waste at the batch size, and the realised masking rate
with its 80/10/10 split; :func:`check_data` raises a ValueError naming what cannot work.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.data.collator import MaskingCollator
from bertpt.data.packing import CROSS_DOCUMENTS, PackedSentences
from bertpt.data.pairs import NSPPairDataset
from bertpt.data.store import DocumentStore
from bertpt.data.tokenizer import special_token_ids

UNK_LIMIT = 0.05  # the share of [UNK] tokens above which a tokenizer does not fit a corpus


def _unk_count(store: DocumentStore, unk_id: int) -> int:
    if store.doc_ids is None:  # whole table: one vectorised pass over every Arrow chunk
        return sum(int(np.count_nonzero(t == unk_id)) for t in store.iter_token_chunks())
    lo, hi = store.doc_token_ranges
    return sum(
        int(np.count_nonzero(store.tokens(a, b) == unk_id)) for a, b in zip(lo, hi, strict=True)
    )


def data_report(
    store: DocumentStore,
    pair_dataset: NSPPairDataset | PackedSentences,
    collator: MaskingCollator,
    batch_size: int,
    num_batches: int = 50,
    unk_id: int = 1,
    seed: int = 0,
) -> dict:
    """Corpus, pair (or packed sequence) and masking statistics; masking is measured on
    ``num_batches`` random batches of ``batch_size`` (as a shuffling sampler would draw them)."""
    tokens = store.num_tokens
    report = {
        "documents": len(store),
        "sentences": store.num_sentences,
        "tokens": tokens,
        "unk_rate": _unk_count(store, unk_id) / max(tokens, 1),
        "max_seq_length": pair_dataset.max_seq_length,
        "objective": pair_dataset.objective,
        **pair_dataset.stats(),
        "batch_size": batch_size,
    }
    if len(pair_dataset) == 0:
        return report
    rng = np.random.default_rng([seed, 0xDA7A])
    n = len(pair_dataset)
    real = padded = candidates = selected = masked = kept = 0
    for _ in range(num_batches):
        idx = rng.choice(n, min(batch_size, n), replace=False)
        items = [pair_dataset[int(i)] for i in idx]
        batch = collator(items)
        ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
        real += int(att.sum())
        padded += att.numel()
        orig = np.concatenate([x["input_ids"] for x in items])
        candidates += int((~collator.special_lut[orig]).sum())
        sel = labels != -100
        selected += int(sel.sum())
        masked += int((ids[sel] == collator.mask_id).sum())
        kept += int((ids[sel] == labels[sel]).sum())
    report.update(
        padding_waste=1 - real / max(padded, 1),
        masking_rate=selected / max(candidates, 1),
        mask_share=masked / max(selected, 1),
        # A random replacement that draws the original token counts as kept (1 in vocab_size).
        random_share=(selected - masked - kept) / max(selected, 1),
        keep_share=kept / max(selected, 1),
        batches_measured=num_batches,
    )
    return report


def check_store(store: DocumentStore, unk_id: int) -> None:
    """Raise a UserError for a tokenized corpus that cannot train a model: no tokens, or a
    tokenizer that does not fit it. Run while the data is prepared, before any logger starts."""
    tokens = store.num_tokens
    _check_tokens(len(store), tokens, _unk_count(store, unk_id) / max(tokens, 1))


def _check_tokens(documents: int, tokens: int, unk_rate: float) -> None:
    if documents == 0 or tokens == 0:
        raise UserError(
            "the corpus yields no tokens — give a corpus with text, not only whitespace"
        )
    if unk_rate > UNK_LIMIT:
        raise UserError(
            f"{unk_rate:.1%} of the tokens are [UNK], so the tokenizer does not fit this "
            "corpus — train one on it (drop tokenizer.path, or python -m bertpt.tokenizer)"
        )


def check_data(report: dict) -> None:
    """Raise a UserError naming the reason when the data cannot train a model."""
    if report["max_seq_length"] < 5:
        raise UserError(
            f"max_seq_length ({report['max_seq_length']}) cannot hold [CLS] A [SEP] B [SEP] "
            "— use >= 5"
        )
    _check_tokens(report["documents"], report["tokens"], report["unk_rate"])
    if report.get("pairs_per_epoch", report.get("sequences_per_epoch")) == 0:
        raise UserError(
            "no usable pair: every document holds fewer than two tokens — give longer documents"
        )
    if report["objective"] == "nsp" and report["documents"] < 2:
        raise UserError(
            f"next-sentence prediction needs >= 2 documents, the corpus has {report['documents']} "
            "— add documents"
        )


def format_report(report: dict) -> str:
    """The report as an aligned two-column table, rates as percentages."""
    pct = {"unk_rate", "random_pair_share", "truncation_rate", "padding_waste", "masking_rate"}
    pct |= {"mask_share", "random_share", "keep_share"}
    lines = []
    for key, value in report.items():
        if key in pct:
            lines.append(f"  {key:<20}{value:>14.2%}")
        elif isinstance(value, float):
            lines.append(f"  {key:<20}{value:>14.1f}")
        elif isinstance(value, int):
            lines.append(f"  {key:<20}{value:>14,}")
        else:
            lines.append(f"  {key:<20}{value!s:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bertpt.data_report", description=__doc__)
    parser.add_argument("corpus", nargs="+", help="text file(s), folder(s) or a datasets name")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.json")
    parser.add_argument("--cache-dir", default=os.environ.get("BERTPT_CACHE", "~/.cache/bertpt"))
    parser.add_argument("--format", default="auto")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-batches", type=int, default=50)
    parser.add_argument("--objective", default="nsp", choices=["nsp", "sop", *CROSS_DOCUMENTS])
    parser.add_argument("--nsp-probability", type=float, default=0.5)
    parser.add_argument("--short-seq-prob", type=float, default=0.1)
    parser.add_argument("--mlm-probability", type=float, default=0.15)
    parser.add_argument("--mask-mode", default="independent", choices=["independent", "exact"])
    parser.add_argument("--whole-word-mask", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        corpus = args.corpus if len(args.corpus) > 1 else args.corpus[0]
        read = dict(format=args.format, text_column=args.text_column, num_proc=args.num_proc)
        if args.objective in CROSS_DOCUMENTS:  # RoBERTa's packed sentences
            ds = PackedSentences.from_files(
                corpus, args.tokenizer, args.max_seq_length, args.cache_dir,
                objective=args.objective, **read,
            )  # fmt: skip
        else:
            ds = NSPPairDataset.from_files(
                corpus, args.tokenizer, args.max_seq_length, args.seed, args.cache_dir,
                short_seq_prob=args.short_seq_prob, nsp_probability=args.nsp_probability,
                objective=args.objective, **read,
            )  # fmt: skip
        collator = MaskingCollator(
            args.tokenizer,
            mlm_probability=args.mlm_probability,
            seed=args.seed,
            mask_mode=args.mask_mode,
            whole_word_mask=args.whole_word_mask,
        )
        unk = special_token_ids(args.tokenizer)["unk"]
        report = data_report(ds.store, ds, collator, args.batch_size, args.num_batches, unk)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_report(report))
        check_data(report)
