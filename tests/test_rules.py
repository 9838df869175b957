"""The model's rules (bertpt.model.rules) and the run's (bertpt.training.run_rules) each live in one
place: BertConfig and the config check refuse the same models with the same fix, and neither module
needs torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runs import make_cfg

from bertpt.common.errors import UserError
from bertpt.model import bert as model
from bertpt.model import rules as model_rules
from bertpt.model.bert import BertConfig
from bertpt.training.config_check import check_config
from bertpt.training.run_rules import per_device_batch_size, skip_in_one_process

TINY = dict(vocab_size=8192, hidden_size=128, num_attention_heads=2, intermediate_size=512)

# (BertConfig's arguments over TINY, the overrides of +experiment=tiny that set the same)
BAD_MODELS = {
    "heads": (dict(num_attention_heads=5), ["model.num_attention_heads=5"]),
    "layers": (dict(num_hidden_layers=0), ["model.num_hidden_layers=0"]),
    "activation": (dict(hidden_act="tanh"), ["model.hidden_act=tanh"]),
    "dropout": (dict(hidden_dropout_prob=1.0), ["model.hidden_dropout_prob=1.0"]),
    "layer norm": (dict(layer_norm_eps=0), ["model.layer_norm_eps=0"]),
    "unpad": (dict(unpad="sometimes"), ["model.unpad=sometimes"]),
    "padding id": (dict(pad_token_id=-1), ["model.pad_token_id=-1"]),
    "type": (
        dict(model_type="albert", pad_token_id=1),
        ["model=roberta_tiny", "model.model_type=albert"],
    ),
}


@pytest.mark.parametrize(("kw", "overrides"), BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_model_and_config_check_refuse_alike(tmp_path, kw, overrides):
    field = next(iter(kw))
    with pytest.raises(UserError) as built:
        BertConfig(**(TINY | kw))
    cfg = make_cfg(tmp_path, tmp_path, "+experiment=tiny", *overrides)
    with pytest.raises(UserError) as checked:
        check_config(cfg, None)
    # each names the value as its user spells it, and gives the same fix
    assert f"{field} ({kw[field]!r})" in str(built.value)
    assert f"model.{field}=" in str(checked.value)
    assert str(built.value).split(" — ")[1] == str(checked.value).split(" — ")[1]


def test_config_check_message_as_the_readme_shows_it(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path, "+experiment=tiny", "model.num_attention_heads=5")
    with pytest.raises(UserError) as e:
        check_config(cfg, None)
    assert str(e.value) == (
        "model.hidden_size=128 is not divisible by model.num_attention_heads=5 — pick a head "
        "count that divides 128 (e.g. 2) or another size"
    )


def test_check_model_reads_the_fields_it_is_given():
    model_rules.check_model({"init_from": None})  # not a BertConfig field
    with pytest.raises(UserError, match=r"^hidden_size \(True\) must be a positive integer"):
        model_rules.check_model({"hidden_size": True})


def test_model_rules_name_what_the_model_implements():
    assert set(model_rules.ACTIVATIONS) == set(model.ACTIVATIONS)
    assert BertConfig(model_type="roberta", pad_token_id=1).position_offset == 2


def test_run_rules():
    assert per_device_batch_size(8192, 8, 32) == 32
    with pytest.raises(UserError, match=r"global_batch_size=12 .* \(8 x 1 = 8\) — .* e\.g\. 16"):
        per_device_batch_size(12, 8, 1)
    skip_in_one_process(1)
    with pytest.raises(UserError, match="on_nan=skip works in one process only"):
        skip_in_one_process(2)


def test_rules_import_neither_torch_nor_lightning():
    code = (
        "import sys, bertpt.model.rules, bertpt.training.run_rules\n"
        "print(sorted({'torch', 'lightning'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.stdout.strip() == "[]", out.stderr
