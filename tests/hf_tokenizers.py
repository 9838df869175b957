"""Does a tokenizer folder that bertpt wrote load in transformers and encode like the
``tokenizers`` tokenizer it came from?"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import tokenizers
import transformers

from bertpt.data.tokenizer import special_token_ids

# Cased words, accents, underscores, an emoji and CJK (an unknown token, single characters),
# digits and punctuation, runs of spaces.
TEXTS = [
    "Return the value of x, or raise ValueError if it is negative.",
    "CamelCaseNames, snake_case_names and ÜNÏCÖDÉ façades cost 3.50 €.",
    "An emoji 🙂 and 漢字 in one line.",
    "   spaces   around   ",
]
PAIR = ("How is a file opened?", "With open(path) in a with statement.")


def assert_encodes_like(folder: str | Path, original_dir: str | Path):
    """``transformers.AutoTokenizer`` from ``folder`` gives the ids, token types and attention
    masks that the ``tokenizers`` tokenizer of ``original_dir`` gives, for single texts, a pair
    and a text with the mask token; so does the tokenizer transformers builds without
    ``tokenizer.json``, from the vocabulary files and the configs alone. Returns the first."""
    original = tokenizers.Tokenizer.from_file(str(Path(original_dir) / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf.is_fast, type(hf)
    with tempfile.TemporaryDirectory() as tmp:
        for f in Path(folder).iterdir():
            if f.name != "tokenizer.json":
                shutil.copy(f, tmp)
        from_vocab = transformers.AutoTokenizer.from_pretrained(tmp)
    texts = [*TEXTS, f"The {hf.mask_token} is a special token."]
    roles = special_token_ids(original)
    # (This module's asserts are not rewritten by pytest: each says what differs.)
    for how, tok in (("from tokenizer.json", hf), ("from the vocabulary files", from_vocab)):
        ids = {role: getattr(tok, f"{role}_token_id") for role in roles}
        assert ids == roles, f"{type(tok).__name__} {how}: special ids {ids}, not {roles}"
        for args in [(t,) for t in texts] + [PAIR]:
            want, got = original.encode(*args), tok(*args)
            for key, expected in (("input_ids", want.ids), ("attention_mask", want.attention_mask),
                                  ("token_type_ids", want.type_ids)):  # fmt: skip
                if key in got or key == "input_ids":
                    assert got[key] == expected, (
                        f"{type(tok).__name__} {how} encodes {args} to {key} {got[key]} "
                        f"({got.tokens()}), the original to {expected} ({want.tokens})"
                    )
    return hf
