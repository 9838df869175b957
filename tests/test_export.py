"""bertpt.export: state dicts, Lightning checkpoints and run folders become HF folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
import transformers  # the reference: a test dependency, missing is an error
from hf_tokenizers import assert_encodes_like
from safetensors.torch import save_file

from bertpt.common.errors import UserError
from bertpt.model.bert import BertConfig, BertForPreTraining
from bertpt.training.export import export, main

KW = dict(vocab_size=2000, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
KW |= dict(intermediate_size=32, max_position_embeddings=20)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = BertForPreTraining(BertConfig(**KW))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


@pytest.fixture
def tokenizer(tmp_path, tokenizer_dir):
    """A copy of the session's trained WordPiece tokenizer (2,000 tokens, the model's
    vocabulary), for a test to move into a run folder."""
    return shutil.copytree(tokenizer_dir, tmp_path / "tokenizer")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_model(out, model):
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    ids = torch.randint(0, KW["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).prediction_logits, model(ids).prediction_logits)


def write_ckpt(path, model, tokenizer_dir=None, tokenizer_hash=None):
    """What the LightningModule saves: the model under `model.`, its config as a plain dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["train_acc.total"] = torch.tensor(3.0)  # other module state is ignored
    hparams = {
        "model_config": model.config.to_dict() | {"init_from": None},
        "lr": 1e-4,
        "tokenizer_dir": None if tokenizer_dir is None else str(tokenizer_dir),
        "tokenizer_hash": tokenizer_hash,
    }
    ckpt = {"state_dict": state, "hyper_parameters": hparams, "epoch": 1, "global_step": 10}
    torch.save(ckpt, path)


def test_safetensors_state_dict_with_config_beside_it(tmp_path, model, tokenizer):
    sd = {k: v for k, v in model.state_dict().items() if "decoder" not in k}  # shared: saved once
    save_file(sd, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    out = export(tmp_path / "weights.safetensors", tmp_path / "hf", tokenizer_dir=tokenizer)
    assert_encodes_like(out, tokenizer)
    assert_same_model(out, model)


def test_pt_state_dict_with_config_flag_via_cli(tmp_path, model, capsys):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "my.json").write_text(json.dumps(model.config.to_dict()))
    main(
        [
            str(tmp_path / "model.pt"),
            str(tmp_path / "hf"),
            "--config",
            str(tmp_path / "cfg/my.json"),
            "--no-tokenizer",
        ]
    )
    assert "wrote" in capsys.readouterr().out
    assert not (tmp_path / "hf" / "vocab.txt").exists()
    assert_same_model(tmp_path / "hf", model)


def test_state_dict_without_config_is_a_clear_error(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"config\.json not found — pass the model's config\.json"):
        export(tmp_path / "model.pt", tmp_path / "hf")


def test_lightning_checkpoint_uses_its_tokenizer(tmp_path, model, tokenizer):
    write_ckpt(tmp_path / "step=10.ckpt", model, tokenizer_dir=tokenizer)
    out = export(tmp_path / "step=10.ckpt", tmp_path / "hf")
    assert_encodes_like(out, tokenizer)
    assert "gradient_checkpointing" not in json.loads((out / "config.json").read_text())
    assert_same_model(out, model)


def test_run_folder(tmp_path, model, tokenizer):
    run = tmp_path / "run"
    write_ckpt(run / "checkpoints" / "last.ckpt", model)
    tokenizer.rename(run / "tokenizer")
    out = export(run, tmp_path / "hf")
    assert_encodes_like(out, run / "tokenizer")
    assert_same_model(out, model)


def test_checkpoint_with_wrong_config_names_key_and_shape(tmp_path, model):
    write_ckpt(tmp_path / "last.ckpt", model)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["model_config"]["intermediate_size"] = 48
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight has shape \(32, 16\)"):
        export(tmp_path / "last.ckpt", tmp_path / "hf")


def test_folder_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"without checkpoints/last\.ckpt"):
        export(tmp_path, tmp_path / "hf")


def one_line_user_error(excinfo, path):
    msg = str(excinfo.value)
    assert excinfo.type is UserError and "\n" not in msg and str(path) in msg and " — " in msg
    return msg


class Payload:
    """Unpickling it would create a marker file: the code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, model, tokenizer, capsys):
    write_ckpt(tmp_path / "evil.ckpt", model, tokenizer_dir=tokenizer)
    ckpt = torch.load(tmp_path / "evil.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["lr"] = Payload(tmp_path / "PWNED")
    torch.save(ckpt, tmp_path / "evil.ckpt")

    with pytest.raises(UserError) as e:
        export(tmp_path / "evil.ckpt", tmp_path / "hf")
    msg = one_line_user_error(e, tmp_path / "evil.ckpt")
    assert "os.makedirs" in msg and "never runs code" in msg
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "evil.ckpt"), str(tmp_path / "hf")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "hf").exists()


def _truncated(path, good):
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _text(path, good):
    path.write_text("step,loss\n1,9.7\n")


def _list(path, good):
    torch.save([torch.ones(2)], path)


def _foreign_dict(path, good):
    torch.save({"model": {"w": torch.ones(2)}}, path)


def _other_prefix(path, good):
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"] = {k.replace("model.", "net."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)


def _no_tokenizer_record(path, good):
    ckpt = torch.load(good, weights_only=True)
    del ckpt["hyper_parameters"]["tokenizer_hash"]
    torch.save(ckpt, path)


def _newer_config(path, good):
    ckpt = torch.load(good, weights_only=True)
    ckpt["hyper_parameters"]["model_config"]["rotary_base"] = 10_000
    torch.save(ckpt, path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_truncated, "cannot be read .* it is truncated"),
        (_text, "truncated or not a torch checkpoint"),
        (_list, "holds a list, not a checkpoint dict"),
        (_foreign_dict, "not a bertpt Lightning checkpoint"),
        (_no_tokenizer_record, r"lacks hyper_parameters\['tokenizer_hash'\]\) — .*earlier bertpt"),
        (_other_prefix, "no key in state_dict starts with 'model.'"),
        (_newer_config, r"model_config'\] does not fit .*rotary_base"),
    ],
)
def test_unreadable_or_foreign_checkpoint_is_a_one_line_user_error(tmp_path, model, make, match):
    write_ckpt(tmp_path / "good.ckpt", model)
    make(tmp_path / "bad.ckpt", tmp_path / "good.ckpt")
    with pytest.raises(UserError, match=match) as e:
        export(tmp_path / "bad.ckpt", tmp_path / "hf", no_tokenizer=True)
    one_line_user_error(e, tmp_path / "bad.ckpt")


def test_mismatched_weights_name_the_file(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict() | {"vocab_size": 2001}))
    with pytest.raises(UserError, match=r"word_embeddings\.weight has shape \(2000, 16\)") as e:
        export(tmp_path / "model.pt", tmp_path / "hf", no_tokenizer=True)
    one_line_user_error(e, tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="cannot be read") as e:
        export(tmp_path / "model.pt", tmp_path / "hf", no_tokenizer=True)
    one_line_user_error(e, tmp_path / "model.pt")


def test_real_lightning_checkpoint_of_a_run(tmp_path, tokenizer):
    """A checkpoint that a real Trainer wrote (optimizer, loops, rng states) loads as data only."""
    import lightning.pytorch as pl

    from bertpt.training.module import BertPretrainModule

    optim = dict(lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-6)
    module = BertPretrainModule(
        KW | {"hidden_act": "gelu"}, optim | dict(warmup_steps=1, max_steps=2)
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, KW["vocab_size"], (4, 12), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    batch = dict(
        input_ids=ids,
        token_type_ids=(torch.arange(12) >= 6).long().expand(4, -1),
        attention_mask=torch.ones_like(ids),
        labels=labels,
        next_sentence_label=torch.tensor([0, 1, 0, 1]),
    )
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    run = tmp_path / "run"
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    tokenizer.rename(run / "tokenizer")

    out = export(run, tmp_path / "hf")
    assert_same_model(out, module.model.eval())
    assert_encodes_like(out, run / "tokenizer")
    record = json.loads((out / "bertpt_export.json").read_text())
    assert record == {
        "source": str((run / "checkpoints" / "last.ckpt").resolve()),
        "global_step": 2,
        "tokenizer_hash": sha256(run / "tokenizer" / "tokenizer.json"),
    }
    assert "tokenizer_hash" not in json.loads((out / "config.json").read_text())


def test_tokenizer_from_the_run_folder_whatever_the_working_directory(
    tmp_path, model, tokenizer, monkeypatch
):
    run = tmp_path / "run"
    # A recorded path that names no folder from here: the run's own copy is used.
    write_ckpt(run / "checkpoints" / "step=10.ckpt", model, tokenizer_dir="data/tokenizers/t")
    tokenizer.rename(run / "tokenizer")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = export(run / "checkpoints" / "step=10.ckpt", tmp_path / "hf")
    assert (out / "tokenizer.json").read_text() == (run / "tokenizer/tokenizer.json").read_text()


def test_no_tokenizer_found_is_an_error_unless_no_tokenizer(tmp_path, model, capsys):
    write_ckpt(tmp_path / "step=10.ckpt", model, tokenizer_dir="data/tokenizers/gone")
    with pytest.raises(
        UserError, match=r"no tokenizer found .*\(not in data/tokenizers/gone\)"
    ) as e:
        export(tmp_path / "step=10.ckpt", tmp_path / "hf")
    assert "--no-tokenizer" in one_line_user_error(e, tmp_path / "step=10.ckpt")
    assert not (tmp_path / "hf").exists()
    main([str(tmp_path / "step=10.ckpt"), str(tmp_path / "hf"), "--no-tokenizer"])
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "bertpt_export.json",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "hf/bertpt_export.json").read_text())["tokenizer_hash"] is None


def test_tokenizer_with_another_hash_is_refused(tmp_path, model, tokenizer, bpe_tokenizer_dir):
    """The run folder holds another real tokenizer (the BPE one) than the checkpoint recorded."""
    run = tmp_path / "run"
    write_ckpt(
        run / "checkpoints" / "last.ckpt",
        model,
        tokenizer_hash=sha256(tokenizer / "tokenizer.json"),
    )
    shutil.copytree(bpe_tokenizer_dir, run / "tokenizer")
    with pytest.raises(UserError) as e:
        export(run, tmp_path / "hf")
    msg = one_line_user_error(e, run / "tokenizer")
    assert sha256(tokenizer / "tokenizer.json") in msg
    assert sha256(run / "tokenizer" / "tokenizer.json") in msg
    assert "--tokenizer" in msg and "--allow-tokenizer-mismatch" in msg
    assert not (tmp_path / "hf").exists()

    out = export(run, tmp_path / "hf", tokenizer_dir=tokenizer)
    assert_encodes_like(out, tokenizer)
    out = export(run, tmp_path / "hf", allow_tokenizer_mismatch=True)
    assert_encodes_like(out, bpe_tokenizer_dir)
    record = json.loads((out / "bertpt_export.json").read_text())
    assert record["tokenizer_hash"] == sha256(bpe_tokenizer_dir / "tokenizer.json")


def test_export_never_deletes_what_is_not_an_export(tmp_path, model, tokenizer):
    write_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", model, tokenizer_dir=tokenizer)
    with pytest.raises(UserError, match="which the export would delete") as e:
        export(tmp_path / "run", tmp_path / "run", overwrite=True)
    one_line_user_error(e, tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    (tmp_path / "big.ckpt").write_bytes(b"not even read")  # checked before the long work
    with pytest.raises(UserError, match="not an export"):
        export(tmp_path / "big.ckpt", tmp_path / "mine")
    main([str(tmp_path / "run"), str(tmp_path / "mine"), "--overwrite"])
    assert not (tmp_path / "mine" / "thesis.tex").exists()
    assert_same_model(tmp_path / "mine", model)
