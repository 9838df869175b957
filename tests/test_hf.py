"""bertpt.model.hf: folders written by bertpt load in transformers, and HF folders load in
bertpt."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
import transformers  # the reference: a test dependency, missing is an error
from faults import run_with_file_size_limit
from hf_tokenizers import PAIR, TEXTS, assert_encodes_like

from bertpt.common.errors import UserError
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.hf import config_from_hf_dict, from_hf, to_hf

KW = dict(vocab_size=90, hidden_size=24, num_hidden_layers=2, num_attention_heads=3)
KW |= dict(intermediate_size=40, max_position_embeddings=24, hidden_act="gelu_new")


def hf_config(**over) -> transformers.BertConfig:
    return transformers.BertConfig(**(KW | over))


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (zero biases would hide a dropped or swapped tensor)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, KW["vocab_size"], (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    types = (torch.arange(10) >= 5).long().expand(3, -1)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask)


def assert_clean_load(cls, path, allowed_unexpected=()):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    # A MaskedLM / base model has no pooler or NSP head: those keys are the only leftovers.
    assert all(k.startswith(allowed_unexpected) for k in info["unexpected_keys"]), info
    return model.eval()


def test_to_hf_loads_in_transformers_with_the_same_outputs(tmp_path, tokenizer_dir):
    """The export of a model and its trained tokenizer: transformers' tokenizer encodes a batch
    (pairs, padded) on which its three BERT classes give bertpt's outputs."""
    kw = KW | {"vocab_size": 2000}  # the tokenizer's
    ours = randomize(BertForPreTraining(BertConfig(**kw, gradient_checkpointing=True)))
    out = to_hf(ours, tmp_path / "export", tokenizer_dir=tokenizer_dir)

    files = ["bertpt_export.json", "config.json", "model.safetensors", "special_tokens_map.json"]
    files += ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert sorted(p.name for p in out.iterdir()) == files
    digest = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert json.loads((out / "bertpt_export.json").read_text()) == {"tokenizer_hash": digest}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"] and config["model_type"] == "bert"
    assert "gradient_checkpointing" not in config and config["hidden_act"] == "gelu_new"

    hf_tok = assert_encodes_like(out, tokenizer_dir)
    firsts, seconds = [PAIR[0], *TEXTS[:2]], [PAIR[1], *TEXTS[2:]]
    length = KW["max_position_embeddings"]
    batch = hf_tok(firsts, seconds, padding=True, truncation=True, max_length=length)
    batch = dict(batch.convert_to_tensors("pt"))
    assert batch["attention_mask"].min() == 0  # padded: the mask matters
    with torch.no_grad():
        ref = ours(**batch)
        seq, _ = ours.bert(**batch)
        pre = assert_clean_load(transformers.BertForPreTraining, out)
        got = pre(**batch)
        torch.testing.assert_close(got.prediction_logits, ref.prediction_logits)
        torch.testing.assert_close(got.seq_relationship_logits, ref.seq_relationship_logits)
        mlm = assert_clean_load(transformers.AutoModelForMaskedLM, out, ("bert.pooler", "cls.seq"))
        torch.testing.assert_close(mlm(**batch).logits, ref.prediction_logits)
        base = assert_clean_load(transformers.AutoModel, out, ("cls.",))
        torch.testing.assert_close(base(**batch).last_hidden_state, seq)
    # HF re-tied the decoder to the embeddings it read.
    assert pre.cls.predictions.decoder.weight.data_ptr() == (
        pre.bert.embeddings.word_embeddings.weight.data_ptr()
    )


def test_from_hf_pretraining_folder_round_trips(tmp_path, batch):
    hf = randomize(transformers.BertForPreTraining(hf_config()))
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).prediction_logits, hf(**batch).prediction_logits)


@pytest.mark.parametrize(
    ("cls", "fresh"),
    [
        ("BertForMaskedLM", "bert.pooler, cls.seq_relationship"),
        ("BertModel", "cls.predictions, cls.seq_relationship"),
    ],
)
def test_from_hf_partial_folders_initialise_missing_heads(tmp_path, caplog, cls, fresh):
    hf = randomize(getattr(transformers, cls)(hf_config()))
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bertpt.model.hf"):
        ours = from_hf(tmp_path)
    assert f"no weights for {fresh}: freshly initialised" in caplog.text
    ours_sd = ours.state_dict()
    prefix = "bert." if cls == "BertModel" else ""
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(ours_sd[prefix + k], v, rtol=0, atol=0, msg=k)
    # A fresh head has BERT's init, not the (absent) checkpoint values.
    assert torch.count_nonzero(ours.cls.seq_relationship.bias) == 0


def test_from_hf_reads_old_pytorch_model_bin(tmp_path, batch):
    """transformers 4.x / TF-converted naming: gamma/beta, a position_ids buffer, no decoder.*"""
    hf = randomize(transformers.BertForPreTraining(hf_config()))
    old = {}
    for k, v in hf.state_dict().items():
        if k.startswith("cls.predictions.decoder."):
            continue
        old[
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
        ] = v
    old["bert.embeddings.position_ids"] = torch.arange(24)[None]
    torch.save(old, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = from_hf(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).prediction_logits, hf(**batch).prediction_logits)


@pytest.fixture
def hf_folder(tmp_path):
    transformers.BertForPreTraining(hf_config()).save_pretrained(tmp_path)
    return tmp_path


def test_corrupt_weights_are_a_clear_error(hf_folder):
    (hf_folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"model\.safetensors cannot be read as weights"):
        from_hf(hf_folder)


def test_config_disagreeing_with_weights_names_key_and_shape(hf_folder):
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps(config | {"vocab_size": 91}))
    shapes = r"word_embeddings\.weight has shape \(90, 24\) but the config expects \(91, 24\)"
    with pytest.raises(ValueError, match=shapes):
        from_hf(hf_folder)
    (hf_folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(
        ValueError, match=r"encoder keys missing, e\.g\. \['bert\.encoder\.layer\.2"
    ):
        from_hf(hf_folder)


def test_unexpected_keys_are_an_error_unless_allowed(tmp_path):
    sd = transformers.BertForPreTraining(hf_config()).state_dict()
    sd = {k: v.clone() for k, v in sd.items() if "decoder" not in k}
    sd["classifier.weight"] = torch.zeros(2, 24)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf_config().to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"1 unexpected keys, e\.g\. \['classifier\.weight'\]"):
        from_hf(tmp_path)
    assert isinstance(from_hf(tmp_path, allow_unexpected=True), BertForPreTraining)


def test_config_from_hf_dict():
    d = hf_config().to_dict()
    config = config_from_hf_dict(d)
    assert config == BertConfig(**KW)
    with pytest.raises(ValueError, match="model_type is 'distilbert'"):
        config_from_hf_dict(d | {"model_type": "distilbert"})
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        config_from_hf_dict(d | {"position_embedding_type": "relative_key"})


def test_missing_tokenizer_files_are_an_error(tmp_path):
    model = BertForPreTraining(BertConfig(**KW))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds none of the tokenizer files"):
        to_hf(model, tmp_path / "out", tokenizer_dir=tmp_path / "empty")


def test_tokenizer_hash_is_recorded_beside_a_clean_config(tmp_path, tokenizer_dir):
    out = to_hf(
        BertForPreTraining(BertConfig(**KW)), tmp_path / "hf", tokenizer_dir, info={"step": 7}
    )
    digest = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert json.loads((out / "bertpt_export.json").read_text()) == {
        "step": 7,
        "tokenizer_hash": digest,
    }
    assert digest not in (out / "config.json").read_text()


def test_a_roberta_export_carries_its_bpe_tokenizer(tmp_path, bpe_tokenizer_dir):
    """A RoBERTa model exported with its byte-level BPE tokenizer: transformers loads a
    RoBERTa tokenizer that encodes like it, and RobertaForMaskedLM gives bertpt's logits on a
    padded batch of its encodings (RoBERTa's positions count from the padding id)."""
    # The tokenizer's vocabulary; RoBERTa's activation (transformers' RoBERTa MLM head applies
    # exact gelu whatever hidden_act says).
    kw = KW | {"vocab_size": 1000, "model_type": "roberta", "hidden_act": "gelu"}
    ours = randomize(BertForPreTraining(BertConfig(**kw)))
    out = to_hf(ours, tmp_path / "hf", tokenizer_dir=bpe_tokenizer_dir)
    hf_tok = assert_encodes_like(out, bpe_tokenizer_dir)
    assert type(hf_tok).__name__ in ("RobertaTokenizerFast", "RobertaTokenizer")  # one in v5
    length = KW["max_position_embeddings"] - 2  # RoBERTa's positions start after the padding id
    batch = hf_tok([TEXTS[3], *PAIR], padding=True, truncation=True, max_length=length)
    batch = dict(batch.convert_to_tensors("pt"))
    assert batch["attention_mask"].min() == 0
    hf = assert_clean_load(transformers.AutoModelForMaskedLM, out)
    assert type(hf).__name__ == "RobertaForMaskedLM"
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits, ours(**batch).prediction_logits)


def test_a_new_export_replaces_the_old_folder_whole(tmp_path):
    out = to_hf(BertForPreTraining(BertConfig(**KW)), tmp_path / "hf")
    (out / "pytorch_model.bin").write_bytes(b"weights of an older export")
    to_hf(BertForPreTraining(BertConfig(**KW)), out)
    assert not (out / "pytorch_model.bin").exists()  # transformers would have preferred it
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left


# Exports a model of the shape sys.argv[2] (JSON) and the tokenizer sys.argv[3] to sys.argv[1].
EXPORT = """
model = BertForPreTraining(BertConfig(**json.loads(sys.argv[2])))
try:
    to_hf(model, sys.argv[1], tokenizer_dir=sys.argv[3])
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(3)
"""


def test_a_failed_export_leaves_the_old_folder_intact(tmp_path, tokenizer_dir, batch):
    """A new export that the disk refuses (a real file-size limit below its weights file, as a
    full disk would) leaves the old export as it was, loading with the old outputs, and no
    temporary folder beside it."""
    old = randomize(BertForPreTraining(BertConfig(**KW)))
    out = to_hf(old, tmp_path / "hf", tokenizer_dir)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before["model.safetensors"]) > 32 << 10  # as the new one: over the limit below

    imports = (
        "import json, sys\nfrom bertpt.model.bert import BertConfig, BertForPreTraining\n"
        "from bertpt.model.hf import to_hf"
    )
    args = (str(out), json.dumps(KW), str(tokenizer_dir))
    proc = run_with_file_size_limit(32 << 10, EXPORT, *args, imports=imports)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout == (
        f"UserError: cannot write the export {out}: the disk refused the write (File too large) "
        f"— an export already there is intact: free space in {tmp_path} and export again\n"
    )

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
    hf = assert_clean_load(transformers.BertForPreTraining, out)
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).prediction_logits, old(**batch).prediction_logits)
    assert_encodes_like(out, tokenizer_dir)


def test_a_folder_that_is_not_an_export_is_not_replaced(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("precious")
    (tmp_path / "data" / "config.json").write_text("{}")  # not enough to look like an export
    model = BertForPreTraining(BertConfig(**KW))
    with pytest.raises(UserError, match=r"not an export .* --overwrite") as e:
        to_hf(model, tmp_path / "data")
    assert "\n" not in str(e.value) and str(tmp_path / "data") in str(e.value)
    assert (tmp_path / "data" / "corpus.txt").read_text() == "precious"
    to_hf(model, tmp_path / "data", overwrite=True)
    assert not (tmp_path / "data" / "corpus.txt").exists()
    (tmp_path / "empty").mkdir()
    to_hf(model, tmp_path / "empty")  # an empty folder holds nothing to lose
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        to_hf(model, tmp_path / "file", overwrite=True)
