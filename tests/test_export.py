"""bertpt.export: state dicts, Lightning checkpoints and run folders become HF folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bertpt.export import export, main
from bertpt.model import BertConfig, BertForPreTraining

transformers = pytest.importorskip("transformers")

KW = dict(vocab_size=70, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
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
def tokenizer(tmp_path):
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tok


def assert_same_model(out, model):
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    ids = torch.randint(0, KW["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).prediction_logits, model(ids).prediction_logits)


def write_ckpt(path, model, tokenizer_dir=None):
    """What the LightningModule saves: the model under `model.`, its config as a plain dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["train_acc.total"] = torch.tensor(3.0)  # other module state is ignored
    hparams = {"model_config": model.config.to_dict() | {"init_from": None}, "lr": 1e-4}
    if tokenizer_dir is not None:
        hparams["tokenizer_dir"] = str(tokenizer_dir)
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 1}, path)


def test_safetensors_state_dict_with_config_beside_it(tmp_path, model, tokenizer):
    sd = {k: v for k, v in model.state_dict().items() if "decoder" not in k}  # shared: saved once
    save_file(sd, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    out = export(tmp_path / "weights.safetensors", tmp_path / "hf", tokenizer_dir=tokenizer)
    assert (out / "vocab.txt").is_file()
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
        ]
    )
    assert "wrote" in capsys.readouterr().out
    assert_same_model(tmp_path / "hf", model)


def test_state_dict_without_config_is_a_clear_error(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"config\.json not found: pass the model's config\.json"):
        export(tmp_path / "model.pt", tmp_path / "hf")


def test_lightning_checkpoint_uses_its_tokenizer(tmp_path, model, tokenizer):
    write_ckpt(tmp_path / "step=10.ckpt", model, tokenizer_dir=tokenizer)
    out = export(tmp_path / "step=10.ckpt", tmp_path / "hf")
    assert (out / "vocab.txt").read_text() == (tokenizer / "vocab.txt").read_text()
    assert "gradient_checkpointing" not in json.loads((out / "config.json").read_text())
    assert_same_model(out, model)


def test_run_folder(tmp_path, model, tokenizer):
    run = tmp_path / "run"
    write_ckpt(run / "checkpoints" / "last.ckpt", model)
    tokenizer.rename(run / "tokenizer")
    out = export(run, tmp_path / "hf")
    assert (out / "vocab.txt").is_file()
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
