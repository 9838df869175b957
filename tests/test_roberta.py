"""RoBERTa is bertpt's encoder with model_type="roberta": against transformers'
RobertaForMaskedLM (random init, imported, exported), fp32."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
import transformers  # the reference: a test dependency, missing is an error
from runs import losses_by_step, make_cfg, read_metrics, run_readme_example
from test_hf import randomize

from bertpt.data.tokenizer import copy_tokenizer
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.model.hf import config_from_hf_dict, from_hf, hf_config_dict, to_hf
from bertpt.train import train

KW = dict(vocab_size=90, hidden_size=24, num_hidden_layers=2, num_attention_heads=3)
KW |= dict(intermediate_size=40, max_position_embeddings=20, type_vocab_size=1, pad_token_id=1)
KW |= dict(layer_norm_eps=1e-5)
TOL = dict(atol=1e-5, rtol=1e-5)


def hf_roberta(cls=None):
    """A transformers RoBERTa with random weights everywhere (LayerNorms and biases too)."""
    config = transformers.RobertaConfig(**KW, attn_implementation="eager")
    return randomize((cls or transformers.RobertaForMaskedLM)(config))


@pytest.fixture
def batch():
    """Right-padded (pad id 1), no token types: what the collator gives for packed sentences."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, KW["vocab_size"], (3, 18), generator=g)  # 18 = 20 positions - 2
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[1, 11:] = mask[2, 5:] = 0
    ids[mask == 0] = 1
    labels = torch.where(torch.rand(3, 18, generator=g) < 0.3, ids, -100)
    labels[mask == 0] = -100
    labels[0, 3] = ids[0, 3]
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def test_imported_weights_give_the_same_logits_loss_and_gradients(tmp_path, batch):
    hf = hf_roberta()
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    assert ours.config.model_type == "roberta" and ours.config.position_offset == 2
    assert ours.bert.pooler is None and ours.cls.seq_relationship is None
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        seq, pooled = ours.bert(**inputs)
        full = ours(**inputs)
    # every position, padded ones included: positions follow HF's (pad+1+i, padding at pad)
    torch.testing.assert_close(seq, ref.hidden_states[-1], **TOL)
    torch.testing.assert_close(full.prediction_logits, ref.logits, **TOL)
    assert pooled is None and full.seq_relationship_logits is None

    labels = batch["labels"]
    out = ours(**batch)  # the masked-only decoder: logits of the labelled rows
    torch.testing.assert_close(out.prediction_logits, ref.logits[labels != -100], **TOL)
    hf_loss = hf(**batch).loss
    torch.testing.assert_close(out.loss, hf_loss, **TOL)
    assert out.nsp_loss is None and out.loss is out.mlm_loss
    hf_loss.backward()
    out.loss.backward()
    grads = {k: p.grad for k, p in hf.named_parameters()}
    ours_names = dict(ours.named_parameters())
    pairs = {  # bertpt name -> transformers name, through the renames of bertpt.model.hf
        "bert.embeddings.word_embeddings.weight": "roberta.embeddings.word_embeddings.weight",
        "bert.encoder.layer.1.attention.self.query.weight": (
            "roberta.encoder.layer.1.attention.self.query.weight"
        ),
        "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
        "cls.predictions.transform.LayerNorm.weight": "lm_head.layer_norm.weight",
        "cls.predictions.bias": "lm_head.bias",
    }
    for ours_name, hf_name in pairs.items():
        torch.testing.assert_close(ours_names[ours_name].grad, grads[hf_name], **TOL)


def test_the_unpadded_path_numbers_positions_as_roberta_does(tmp_path, batch):
    """model.unpad (the GPU path; on a CPU through torch's jagged fallback): the real tokens'
    logits, the loss and the gradients equal transformers' padded RoBERTa."""
    hf = hf_roberta()
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    ours.set_speed(unpad=True)
    real = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = hf(**inputs).logits
        torch.testing.assert_close(ours.eval()(**inputs).prediction_logits[real], ref[real], **TOL)
    hf_loss, loss = hf(**batch).loss, ours(**batch).loss
    torch.testing.assert_close(loss, hf_loss, **TOL)
    hf_loss.backward()
    loss.backward()
    torch.testing.assert_close(
        ours.bert.embeddings.position_embeddings.weight.grad,
        hf.roberta.embeddings.position_embeddings.weight.grad,
        **TOL,
    )


def test_export_loads_in_transformers_without_missing_or_unexpected_keys(tmp_path, batch):
    ours = randomize(BertForPreTraining(BertConfig(**KW, model_type="roberta")))
    out = to_hf(ours, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "roberta"
    assert config["architectures"] == ["RobertaForMaskedLM"]
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (20, 1)
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = ours(**inputs).prediction_logits
    for cls in (transformers.RobertaForMaskedLM, transformers.AutoModelForMaskedLM):
        hf, info = cls.from_pretrained(out, output_loading_info=True)
        assert type(hf).__name__ == "RobertaForMaskedLM"
        assert not any(info.values()), info  # missing, unexpected, mismatched, errors
        with torch.no_grad():
            torch.testing.assert_close(hf.eval()(**inputs).logits, ref, **TOL)
        assert hf.lm_head.decoder.weight.data_ptr() == (
            hf.roberta.embeddings.word_embeddings.weight.data_ptr()
        )
    # and back: the same weights
    again = from_hf(out)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_the_lm_head_takes_the_exact_gelu_as_transformers_does(tmp_path, batch, act):
    """HF's RobertaLMHead applies the exact GELU whatever hidden_act says: an export of a model
    with another activation gives the same logits there."""
    ours = randomize(BertForPreTraining(BertConfig(**KW, model_type="roberta", hidden_act=act)))
    hf = transformers.RobertaForMaskedLM.from_pretrained(to_hf(ours, tmp_path / "hf")).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(hf(**inputs).logits, ours(**inputs).prediction_logits, **TOL)


def test_a_roberta_model_folder_gets_a_fresh_lm_head(tmp_path, caplog):
    """RobertaModel saves a pooler, which RoBERTa's MLM has no use for, and no lm_head."""
    hf = hf_roberta(transformers.RobertaModel)
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="bertpt.model.hf"):
        ours = from_hf(tmp_path)
    assert "no weights for cls.predictions: freshly initialised" in caplog.text
    assert "heads this model has none of are not used" in caplog.text
    sd = ours.state_dict()
    for k, v in hf.state_dict().items():
        if not k.startswith("pooler."):
            torch.testing.assert_close(sd[f"bert.{k}"], v, rtol=0, atol=0, msg=k)
    assert torch.count_nonzero(ours.cls.predictions.bias) == 0


def test_config_round_trip_and_positions():
    config = BertConfig(**KW, model_type="roberta")
    assert config_from_hf_dict(hf_config_dict(config)) == config
    assert config_from_hf_dict(transformers.RobertaConfig(**KW).to_dict()) == config
    with pytest.raises(ValueError, match="model_type is 'gpt2'"):
        config_from_hf_dict({**hf_config_dict(config), "model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"model_type \('albert'\) must be one of"):
        BertConfig(model_type="albert")
    model = BertForPreTraining(config)
    assert "bert.pooler.dense.weight" not in model.state_dict()
    with pytest.raises(ValueError, match=r"exceeds max_position_embeddings \(20, numbered from 2"):
        model(torch.ones(1, 19, dtype=torch.long))
    with pytest.raises(ValueError, match="no NSP head"):
        model(torch.ones(1, 4, dtype=torch.long), next_sentence_label=torch.tensor([0]))
    # the NSP-less decoder computes the predicted rows only, as BERT's does
    labels = torch.full((2, 8), -100)
    labels[0, 3] = labels[1, 5] = 7
    out = model(torch.randint(3, 90, (2, 8)), labels=labels)
    assert out.prediction_logits.shape == (2, 90)
    torch.testing.assert_close(
        out.mlm_loss, F.cross_entropy(out.prediction_logits, labels[labels != -100])
    )


def test_the_config_check_names_what_the_code_implements():
    """bertpt.training.config_check (no torch) names the MLM-only objectives the code implements."""
    from bertpt.data import packing
    from bertpt.training import config_check

    assert set(config_check.MLM_OBJECTIVES) == set(packing.CROSS_DOCUMENTS)


# --- the recipe, run for real: python -m bertpt.train +experiment=roberta_tiny ------------------

NSP_KEYS = ("train/nsp_loss", "train/nsp_acc", "val/nsp_loss", "val/nsp_acc")


def _logged(run_dir) -> set[str]:
    return {k for row in read_metrics(run_dir) for k, v in row.items() if v}


def test_roberta_tiny_trains_mlm_only_and_exports_for_fill_mask(tmp_path, data_dir):
    run = tmp_path / "run"
    metrics = train(
        make_cfg(run, data_dir, "+experiment=roberta_tiny", "+debug=fast", "logger=csv")
    )
    assert {"train/mlm_acc", "val/mlm_acc", "val/mlm_loss"} <= set(metrics)
    assert not set(NSP_KEYS) & (set(metrics) | _logged(run))
    assert "-bpe-v8192-cased-" in str(next((data_dir / "tokenizers").glob("*-bpe-*")))
    seen = run_readme_example(
        'pipeline("fill-mask"', {"outputs/train/runs/DATE_TIME/hf": run / "hf"}
    )
    assert type(seen["fill"].tokenizer).__name__ in ("RobertaTokenizerFast", "RobertaTokenizer")
    predictions = seen["_"]  # the README's fill("... <mask> ...")
    assert len(predictions) == 5 and all("<mask>" not in p["sequence"] for p in predictions)


@pytest.mark.slow
def test_roberta_tiny_resume_is_exact(tmp_path, data_dir):
    """Resuming the step-4 checkpoint of a 6-step run (a loader worker, validation between)
    gives the uninterrupted run's losses at steps 4 and 5, to the last digit."""
    common = ["+experiment=roberta_tiny", "+debug=fast", "logger=csv", "optim.max_steps=6"]
    common += ["trainer.num_workers=1", "trainer.val_check_interval=3", "export_hf=false"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(make_cfg(full, data_dir, *common))
    ckpt = full / "checkpoints" / "step0000004.ckpt"
    train(make_cfg(resumed, data_dir, *common, f"ckpt_path={ckpt}"))
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(a) == list(range(6)) and sorted(b) == [4, 5]
    assert all(a[s] == b[s] for s in (4, 5)), (a, b)


def test_continued_pretraining_from_a_roberta_folder(tmp_path, data_dir, bpe_tokenizer_dir):
    """model.init_from=DIR: a transformers RobertaForMaskedLM and its tokenizer, trained on."""
    folder = tmp_path / "roberta"
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = transformers.RobertaConfig(
        vocab_size=1000, max_position_embeddings=130, type_vocab_size=1, **shape
    )
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    copy_tokenizer(bpe_tokenizer_dir, folder)
    run = tmp_path / "run"
    overrides = [
        "+experiment=roberta_tiny",
        "+debug=fast",
        "logger=csv",
        f"model.init_from={folder}",
    ]
    train(make_cfg(run, data_dir, *overrides))
    assert (run / "tokenizer" / "vocab.json").read_bytes() == (folder / "vocab.json").read_bytes()
    exported = json.loads((run / "hf" / "config.json").read_text())
    assert exported["hidden_size"] == 32 and exported["max_position_embeddings"] == 130
    before = transformers.RobertaForMaskedLM.from_pretrained(folder).state_dict()
    after = transformers.RobertaForMaskedLM.from_pretrained(run / "hf").state_dict()
    assert before.keys() == after.keys()
    assert not torch.equal(before["lm_head.dense.weight"], after["lm_head.dense.weight"])
