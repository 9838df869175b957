"""Train and load tokenizers with Hugging Face ``tokenizers``: BERT's WordPiece (the default) or
RoBERTa's byte-level BPE (``kind="bpe"``, :mod:`bertpt.data.bpe`).

The folder written by :func:`train_tokenizer` holds ``tokenizer.json`` (the fast tokenizer, with
BERT's normalizer, pre-tokenizer, ``[CLS] A [SEP] B [SEP]`` template and WordPiece decoder),
``vocab.txt`` (one token a line, line number = id) and the two config files that make
``transformers.BertTokenizerFast.from_pretrained(dir)`` and ``AutoTokenizer`` load it with the
right special tokens and casing; a BPE folder holds ``vocab.json`` and ``merges.txt`` instead of
``vocab.txt`` and loads as a ``RobertaTokenizerFast``. ``bertpt_tokenizer.json`` records how it
was trained, so training again with the same corpus and settings reuses it and different ones are
refused.

The WordPiece vocabulary comes from :mod:`bertpt.data.wordpiece`, not the ``tokenizers`` trainer,
whose ties fall differently in every process: the same corpus, settings and package versions give
the same files, byte for byte, on any machine (the BPE trainer is deterministic as it is).

    python -m bertpt.tokenizer data/corpus.txt --out data/tokenizer --vocab-size 30522
    python -m bertpt.tokenizer data/corpus.txt --out data/bpe --vocab-size 50265 --kind bpe
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bertpt.common.atomic import publish_dir
from bertpt.common.errors import UserError, exit_on_user_error
from bertpt.data import bpe
from bertpt.data.corpus import Source, check_corpus, corpus_fingerprint, read_documents
from bertpt.data.wordpiece import count_words, train_vocab

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
# A special token's role and its names in BERT's and RoBERTa's vocabularies: a loaded tokenizer
# (bertpt's or a Hugging Face folder's) is read by these.
ROLES = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}
# Below this share of the asked vocabulary the corpus is too small for the tokenizer it asks for.
MIN_VOCAB_SHARE = 0.8
META_FILE = "bertpt_tokenizer.json"
# The files of a tokenizer folder that transformers reads (a WordPiece folder has vocab.txt, a
# byte-level BPE one vocab.json + merges.txt), copied into a run folder and into an export.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def build_tokenizer(lowercase: bool = True) -> Tokenizer:
    """An untrained WordPiece tokenizer with BERT's pipeline."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    # strip_accents=None follows lowercase, as in BERT: uncased strips accents, cased keeps them.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _set_vocab(tok: Tokenizer, vocab: list[str]) -> None:
    """Give ``tok`` the trained ``vocab`` (id = position), as the library's trainer would."""
    tok.model = models.WordPiece(
        {token: i for i, token in enumerate(vocab)},
        unk_token="[UNK]",
        continuing_subword_prefix="##",
    )
    tok.add_special_tokens(SPECIAL_TOKENS)


def _add_template(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def resolve_tokenizer(tokenizer) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a folder, a tokenizer.json path, a fast ``transformers``
    tokenizer or a ``tokenizers.Tokenizer`` itself."""
    if isinstance(tokenizer, str | os.PathLike):
        return load_tokenizer(tokenizer)
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids of the roles in :data:`ROLES` (``pad``, ``unk``, ``cls``, ``sep``, ``mask``) in a
    BERT or RoBERTa tokenizer (any form :func:`resolve_tokenizer` takes); a UserError naming the
    first role it lacks."""
    tok = resolve_tokenizer(tokenizer)
    ids = {}
    for role, names in ROLES.items():
        found = [i for i in map(tok.token_to_id, names) if i is not None]
        if not found:
            raise UserError(
                f"the tokenizer has no {role} token ({' or '.join(names)}) — use a BERT "
                "(WordPiece) or RoBERTa (byte-level BPE) tokenizer"
            )
        ids[role] = found[0]
    return ids


def _hf_configs(lowercase: bool, model_max_length: int) -> dict[str, dict]:
    special = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def _wordpiece_files(tok: Tokenizer, lowercase: bool, model_max_length: int) -> dict[str, str]:
    """vocab.txt and the transformers config files of a WordPiece tokenizer."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    files = {"vocab.txt": "".join(t + "\n" for t, _ in vocab)}
    for name, content in _hf_configs(lowercase, model_max_length).items():
        files[name] = json.dumps(content, indent=2) + "\n"
    return files


def _train_wordpiece(
    sentences: Iterable[str],
    vocab_size: int,
    lowercase: bool,
    min_frequency: int,
    limit_alphabet: int,
    show_progress: bool,
) -> Tokenizer:
    tok = build_tokenizer(lowercase)
    words = count_words(sentences, tok.normalizer, tok.pre_tokenizer, show_progress)
    vocab = train_vocab(
        words, vocab_size, min_frequency, limit_alphabet, SPECIAL_TOKENS, "##", show_progress
    )
    _set_vocab(tok, vocab)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    _add_template(tok)
    return tok


def _train_bpe(sentences, vocab_size, lowercase, min_frequency, limit_alphabet, show_progress):
    return bpe.train_bpe(sentences, vocab_size, min_frequency, show_progress)  # always cased


@dataclass(frozen=True)
class Kind:
    """What differs between the tokenizer kinds: names, special tokens, training, files."""

    name: str
    special_tokens: list[str]  # in id order (a BPE tokenizer's <mask> is its last token)
    # (sentences, vocab_size, lowercase, min_frequency, limit_alphabet, show_progress)
    train: Callable[..., Tokenizer]
    files: Callable[[Tokenizer, bool, int], dict[str, str]]  # (tok, lowercase, max length)


KINDS = {
    "wordpiece": Kind("WordPiece", SPECIAL_TOKENS, _train_wordpiece, _wordpiece_files),
    "bpe": Kind(
        "byte-level BPE",
        bpe.SPECIAL_TOKENS,
        _train_bpe,
        lambda tok, lowercase, model_max_length: bpe.bpe_files(tok, model_max_length),
    ),
}


def save_tokenizer(
    tok: Tokenizer, out_dir: Path, lowercase: bool, model_max_length: int = 512, kind="wordpiece"
) -> None:
    """Write tokenizer.json and the files transformers reads beside it into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    for name, content in KINDS[kind].files(tok, lowercase, model_max_length).items():
        (out_dir / name).write_text(content, encoding="utf-8")


def corpus_sentences(
    source: Source, format: str = "auto", text_column: str = "text"
) -> Iterator[str]:
    """The sentences of a corpus in order, what the tokenizer is trained on."""
    for doc in read_documents(source, format, text_column):
        yield from doc


def _saved_meta(folder: Path) -> dict | None:
    """The settings a tokenizer folder was trained with, or None."""
    meta_path = folder / META_FILE
    return json.loads(meta_path.read_text()) if meta_path.exists() else None


def train_tokenizer(
    files: Source,
    out_dir: str | os.PathLike,
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    format: str = "auto",
    text_column: str = "text",
    overwrite: bool = False,
    show_progress: bool = True,
    kind: str = "wordpiece",
) -> Path:
    """Train a tokenizer of ``kind`` (``wordpiece`` or ``bpe``) on a corpus and save it in
    ``out_dir``; return ``out_dir``.

    The corpus is streamed (any format of :mod:`bertpt.data.corpus`). A folder that already holds
    the tokenizer of the same corpus and settings is reused; one holding another tokenizer is an
    error unless ``overwrite``. A vocabulary far smaller than ``vocab_size`` (a tiny corpus) is an
    error.
    """
    out = Path(out_dir)
    check_kind(kind, lowercase)
    specials = KINDS[kind].special_tokens
    if vocab_size <= len(specials):
        raise UserError(
            f"vocab_size ({vocab_size}) does not exceed the {len(specials)} special tokens "
            "— ask for more"
        )
    check_corpus(files, format, text_column)
    meta = {
        "corpus": corpus_fingerprint(files, format, text_column),
        "vocab_size": vocab_size,
        "lowercase": lowercase,
        "min_frequency": min_frequency,
        "limit_alphabet": limit_alphabet,
        "kind": kind,
    }
    if (out / "tokenizer.json").exists() and not overwrite:
        old = _saved_meta(out)
        if old == meta:
            log.info("tokenizer in %s already trained with these settings: reusing it", out)
            return out
        raise UserError(
            f"{out} already holds a different tokenizer (trained with {old or 'unknown settings'})"
            " — train it again with overwrite=True (--overwrite), or choose another folder"
        )

    sentences = corpus_sentences(files, format, text_column)
    tok = KINDS[kind].train(
        sentences, vocab_size, lowercase, min_frequency, limit_alphabet, show_progress
    )
    got = tok.get_vocab_size()
    if got < MIN_VOCAB_SHARE * vocab_size:
        raise UserError(
            f"the corpus yields a vocabulary of only {got} tokens, far fewer than vocab_size "
            f"({vocab_size}) — use a larger corpus or ask for vocab_size <= {got}"
        )

    # Written beside the target and renamed into place: a crash never leaves half a tokenizer.
    with publish_dir(out, replace=overwrite) as pub:
        save_tokenizer(tok, pub.tmp, lowercase, kind=kind)
        (pub.tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if not pub.published:  # another process (a second node on shared storage) finished first
        if _saved_meta(out) != meta:
            raise UserError(
                f"{out} is not empty and holds no tokenizer of these settings — choose a new or "
                "empty folder, or pass overwrite=True (--overwrite)"
            ) from None
        log.info("tokenizer in %s was trained by another process meanwhile: reusing it", out)
        return out
    log.info("trained a %d-token %s tokenizer in %s", got, KINDS[kind].name, out)
    return out


def check_kind(kind: str, lowercase: bool) -> None:
    """A UserError for a tokenizer kind bertpt cannot train, or a lowercased BPE."""
    if kind not in KINDS:
        raise UserError(
            f"tokenizer.kind={kind!r} is not a tokenizer kind — use one of {', '.join(KINDS)}"
        )
    if kind == "bpe" and lowercase:
        raise UserError(
            "tokenizer.lowercase=true with tokenizer.kind=bpe: byte-level BPE keeps case, as "
            "RoBERTa's does (transformers' RobertaTokenizer has no lowercasing step) — set "
            "tokenizer.lowercase=false"
        )


def tokenizer_json(path: str | os.PathLike) -> Path:
    """The ``tokenizer.json`` of a tokenizer folder, or ``path`` itself when it is a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"no tokenizer at {p}: the path does not exist — give a folder written by "
            "python -m bertpt.tokenizer (or its tokenizer.json), or train one: "
            f"python -m bertpt.tokenizer CORPUS --out {p}"
        )
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(
            f"{p} is not a tokenizer folder: it holds no tokenizer.json — give a folder written "
            "by python -m bertpt.tokenizer (or its tokenizer.json)"
        )
    return file


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load ``tokenizer.json`` from a folder (or the file itself); a UserError naming the file
    when there is none or it does not parse."""
    file = tokenizer_json(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception with serde's one-line reason
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{file} is not a valid tokenizer.json ({reason}) — restore it, or train the "
            f"tokenizer again: python -m bertpt.tokenizer CORPUS --out {file.parent} --overwrite"
        ) from e


def tokenizer_hash(path: str | os.PathLike) -> str:
    """The hex sha256 of a tokenizer folder's ``tokenizer.json`` bytes (or of the file itself).

    Checkpoints and exports store it to detect a mismatched tokenizer; training is
    deterministic, so retraining on the same corpus and settings gives the same hash."""
    return hashlib.sha256(tokenizer_json(path).read_bytes()).hexdigest()


def copy_tokenizer(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Copy whichever of :data:`TOKENIZER_FILES` exist into ``out_dir``; at least one must."""
    tokenizer_dir = Path(tokenizer_dir)
    found = [f for f in TOKENIZER_FILES if (tokenizer_dir / f).is_file()]
    if not found:
        raise UserError(
            f"{tokenizer_dir} holds none of the tokenizer files {list(TOKENIZER_FILES)} — "
            "pass the tokenizer folder the model was trained with"
        )
    for f in found:
        shutil.copyfile(tokenizer_dir / f, Path(out_dir) / f)
    return found


def check_tokenizer_hash(folder: str | os.PathLike, expected: str, fix: str, allow: bool) -> None:
    """Refuse (UserError, ``fix`` as its fix) a tokenizer whose hash is not ``expected``, the
    one a checkpoint recorded; with ``allow``, only warn."""
    file = Path(folder) / "tokenizer.json"
    found = tokenizer_hash(file) if file.is_file() else "none (no tokenizer.json)"
    if found == expected:
        return
    msg = (
        f"tokenizer {folder} has sha256 {found} but the checkpoint was trained with {expected} "
        f"— {fix}"
    )
    if not allow:
        raise UserError(msg)
    log.warning("%s (allowed)", msg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertpt.tokenizer",
        description="Train a BERT WordPiece or RoBERTa byte-level BPE tokenizer on a corpus (any "
        "bertpt corpus format).",
    )
    parser.add_argument("corpus", nargs="+", help="text file(s), folder(s) or a datasets name")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--kind", default="wordpiece", choices=list(KINDS), help="wordpiece (BERT) or bpe (RoBERTa)"
    )
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument(
        "--cased", action="store_true", help="keep case and accents (WordPiece; BPE always does)"
    )
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--limit-alphabet", type=int, default=1000, help="WordPiece only")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "bert", "lines", "files", "datasets"]
    )
    parser.add_argument("--text-column", default="text", help="column of a datasets corpus")
    parser.add_argument("--overwrite", action="store_true", help="replace a different tokenizer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        out = train_tokenizer(
            args.corpus if len(args.corpus) > 1 else args.corpus[0],
            args.out,
            vocab_size=args.vocab_size,
            lowercase=not args.cased and args.kind == "wordpiece",
            min_frequency=args.min_frequency,
            limit_alphabet=args.limit_alphabet,
            format=args.format,
            text_column=args.text_column,
            overwrite=args.overwrite,
            kind=args.kind,
        )
    print(f"tokenizer: {out} ({load_tokenizer(out).get_vocab_size()} tokens)")
