"""README promises that only a real training run can keep, each run for a few steps: the
tensorboard logger and train.log, corpora given as a folder of files or a `datasets` folder,
`model.init_from` a transformers BertModel or BertForMaskedLM, BERT-base's phase 2 from its
phase 1, clipping by value, a tokenizer accepted with `tokenizer.allow_mismatch=true`, and an
[UNK]-ridden corpus through the command."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import transformers
from omegaconf import OmegaConf
from record_init import RecordInitialWeights
from runs import make_cfg, other_tokenizer, read_metrics, run_cli
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tokenizers import Tokenizer

from bertpt.data.tokenizer import tokenizer_hash, train_tokenizer
from bertpt.model.checkpoint import read_checkpoint
from bertpt.train import train

FAST = ["+experiment=tiny", "+debug=fast"]


class RecordClipping(pl.Callback):
    """Test-only: for each step, what value clipping at ``clip`` must make of the gradients
    Lightning hands to clipping (each element clamped to [-clip, clip]) against the gradients
    the optimizer stepped with; a line of JSON a step."""

    def __init__(self, path: str, clip: float) -> None:
        self.path, self.clip = Path(path), clip
        self.clamped: dict[str, torch.Tensor] = {}
        self.row: dict = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None}
        flat = torch.cat([g.flatten() for g in grads.values()])
        self.clamped = {n: g.clamp(-self.clip, self.clip) for n, g in grads.items()}
        self.row = {
            "max_before": float(flat.abs().max()),
            "norm_before": float(flat.double().norm()),
            "clipped_share": float((flat.abs() > self.clip).float().mean()),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = {n: p.grad for n, p in pl_module.named_parameters() if p.grad is not None}
        assert grads.keys() == self.clamped.keys()
        after = torch.cat([g.flatten() for g in grads.values()])
        off = max(float((grads[n] - c).abs().max()) for n, c in self.clamped.items())
        row = {"step": trainer.global_step - 1, **self.row, "max_after": float(after.abs().max())}
        row["norm_after"] = float(after.double().norm())
        with open(self.path, "a") as f:
            f.write(json.dumps(row | {"off_from_clamped": off}) + "\n")


def _callback(name: str, cls: type, **kwargs) -> list[str]:
    """Overrides that add the test-only callback ``cls`` (from a module under tests/) to a run."""
    args = [f"+callbacks.{name}._target_={cls.__module__}.{cls.__name__}"]
    return args + [f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items()]


def _started(out_dir: Path) -> dict[str, torch.Tensor]:
    """The model's weights as training started, as RecordInitialWeights wrote them."""
    state = torch.load(out_dir / "initial.pt")
    return {k.removeprefix("model."): v for k, v in state.items()}


# --- logger=tensorboard and train.log ------------------------------------------------------------

LOG_RECORD = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([\w.]+)\]\[(\w+)\] - (.*)$")


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory, data_dir, tokenizer_dir):
    """The real command with logger=tensorboard: (run folder, its stdout). Without Lightning's
    model summary, a table it prints (not logs), so train.log does not hold it."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    run = tmp / "run"
    args = [*FAST, "logger=tensorboard", "export_hf=false", f"tokenizer.path={tokenizer_dir}",
            "trainer.enable_model_summary=false", f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run}"]  # fmt: skip
    return run, run_cli(args, cwd=tmp).stdout


def test_tensorboard_logger_writes_the_metrics_at_their_steps(tensorboard_run):
    """logger=tensorboard replaces W&B: event files under RUN/tensorboard hold the training
    metrics at every logged step and the validation metrics at each validation; the CSV beside
    them gives the run its plots and report."""
    run, _ = tensorboard_run
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((run / "wandb").glob("*run-*"))
    assert (run / "plots" / "overview.png").is_file() and "val/mlm_acc" in (
        run / "report.md"
    ).read_text()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    scalars = {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }
    # +debug=fast: 4 steps, each logged; validation after steps 2 and 4 (logged at 1 and 3)
    for name in ("train/loss", "train/mlm_loss", "train/nsp_loss", "train/grad_norm", "train/lr"):
        assert sorted(scalars.get(name, {})) == [0, 1, 2, 3], (name, sorted(scalars))
    for name in ("val/mlm_loss", "val/mlm_acc", "val/nsp_acc"):
        assert sorted(scalars.get(name, {})) == [1, 3], (name, scalars.get(name))
    for step, loss in scalars["train/loss"].items():
        parts = scalars["train/mlm_loss"][step] + scalars["train/nsp_loss"][step]
        assert loss == pytest.approx(parts, rel=1e-5), step
    # an untrained model's loss: ln(vocabulary) for the masked tokens plus ln 2 for NSP
    assert scalars["train/loss"][0] == pytest.approx(math.log(2000) + math.log(2), abs=0.5)
    hparams = OmegaConf.load(run / "tensorboard" / "hparams.yaml")
    assert hparams.run_name == "tiny" and hparams.data_report.documents > 0


def test_train_log_keeps_every_logged_line_with_its_time(tensorboard_run):
    """RUN/train.log holds each line the run logged to the console, every record stamped with
    its time, its logger's name and its level."""
    run, stdout = tensorboard_run
    records, lines = [], (run / "train.log").read_text().splitlines()
    for line in lines:
        m = LOG_RECORD.match(line)
        if m:
            records.append([m[1], m[2], m[3], [m[4]]])
        else:  # a message of several lines (the data report)
            assert records, f"train.log starts with a line without a time: {line!r}"
            records[-1][3].append(line)
    logged = set()
    for _, _, level, message in records:
        prefix = "" if level == "INFO" else f"{level.lower()}: "
        logged |= {prefix + message[0], *message[1:]}
    # The console's lines, the end-of-run summary included, without the progress bar.
    console = stdout.replace("\r", "\n").splitlines()
    console = [ln for ln in console if ln.strip() and not ln.startswith("train:")]
    assert any(ln.startswith("precision: ") for ln in console)
    assert any(ln.startswith("bertpt: checkpoint:") for ln in console)
    assert any("documents" in ln for ln in console)  # the data report's table
    missing = [ln for ln in console if ln not in logged]
    assert not missing, f"on the console, not in train.log: {missing}"
    times = [r[0] for r in records]
    assert times == sorted(times)
    assert {"bertpt.training.fit", "bertpt.training.module"} <= {r[1] for r in records}


# --- data.format=files and data.format=datasets ----------------------------------------------

WORDS = ["zorblax", "quintaph", "velodrim", "kastrov", "plumex", "drazzik", "morvane", "tulgeth",
         "snarbok", "wiffle", "grendal", "yopsik", "fennrow", "huskarl", "blimvar", "ostrekk",
         "jintaro", "crevvik", "lumbago", "zephrin"]  # fmt: skip
DECOYS = ["decoy", "ignored", "never", "read", "these", "words"]
NUM_DOCS, VOCAB = 60, 100
# the validation split: 2 documents (bertpt.data.store: at least two where there are four)
TRAIN_DOCS = NUM_DOCS - 2


@pytest.fixture(scope="module")
def made_up_corpus(tmp_path_factory):
    """Documents of made-up words, each the same 20 words shuffled into 4 sentences (so every
    document has the same number of tokens), and the tokenizer trained on them in BERT format:
    (documents as lists of sentences, that tokenizer's folder)."""
    rng = random.Random(0)
    docs = []
    for _ in range(NUM_DOCS):
        words = rng.sample(WORDS, len(WORDS))
        docs.append([" ".join(words[i : i + 5]).capitalize() + "." for i in range(0, 20, 5)])
    root = tmp_path_factory.mktemp("made_up")
    bert = root / "corpus.txt"
    bert.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    return docs, train_tokenizer(bert, root / "reference", vocab_size=VOCAB, show_progress=False)


def _check_trained_on(run: Path, docs: list[list[str]], reference: Path) -> None:
    """The run's tokenizer is the one the documents give, and its data report counts exactly
    the training split of those documents."""
    ours, theirs = ((d / "vocab.txt").read_text().split() for d in (run / "tokenizer", reference))
    assert ours == theirs, f"tokens not from the documents: {sorted(set(ours) - set(theirs))}"
    assert tokenizer_hash(run / "tokenizer") == tokenizer_hash(reference)
    tok = Tokenizer.from_file(str(reference / "tokenizer.json"))
    per_doc = {sum(len(tok.encode(s, add_special_tokens=False).ids) for s in d) for d in docs}
    assert len(per_doc) == 1
    report = OmegaConf.load(run / "csv" / "hparams.yaml").data_report
    assert (report.documents, report.sentences, report.unk_rate) == (TRAIN_DOCS, 4 * TRAIN_DOCS, 0)
    assert report.tokens == TRAIN_DOCS * per_doc.pop()
    assert len(read_metrics(run)) > 0


def test_a_folder_of_files_trains_one_document_per_file(tmp_path, made_up_corpus):
    """data.format=files: each .txt file is a document, split into sentences; other files in
    the folder are not read."""
    docs, reference = made_up_corpus
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, doc in enumerate(docs):  # two sentences a line: a file, not a line, is a document
        (folder / f"doc{i:02d}.txt").write_text(f"{doc[0]} {doc[1]}\n{doc[2]} {doc[3]}\n")
    (folder / "notes.md").write_text(" ".join(DECOYS * 50) + "\n")
    run = tmp_path / "run"
    train(make_cfg(run, tmp_path / "data", *FAST, "logger=csv", "export_hf=false",
                   f"data.corpus={folder}", "data.format=files",
                   f"tokenizer.vocab_size={VOCAB}"))  # fmt: skip
    _check_trained_on(run, docs, reference)


def test_a_saved_dataset_trains_on_its_text_column(tmp_path, made_up_corpus):
    """data.format=datasets data.text_column=body: a `save_to_disk` folder, one document a
    row of the named column (another column is not read)."""
    import datasets

    docs, reference = made_up_corpus
    rows = {"body": [" ".join(d) for d in docs], "text": [" ".join(DECOYS)] * len(docs)}
    saved = tmp_path / "saved_dataset"
    datasets.Dataset.from_dict(rows).save_to_disk(str(saved))
    run = tmp_path / "run"
    train(make_cfg(run, tmp_path / "data", *FAST, "logger=csv", "export_hf=false",
                   f"data.corpus={saved}", "data.format=datasets", "data.text_column=body",
                   f"tokenizer.vocab_size={VOCAB}"))  # fmt: skip
    _check_trained_on(run, docs, reference)


# --- model.init_from a transformers folder -----------------------------------------------------

HF_SHAPE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=128, initializer_range=0.05)  # fmt: skip
# What each class saves none of (bertpt's BertForPreTraining names), and so is freshly initialised.
LACKS = {"BertModel": ["cls.predictions", "cls.seq_relationship"],
         "BertForMaskedLM": ["bert.pooler", "cls.seq_relationship"]}  # fmt: skip


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, tokenizer_dir):
    """A transformers BertModel and BertForMaskedLM folder (save_pretrained) with the
    tokenizer's vocabulary and tokenizer.json; every saved weight drawn at random (LayerNorms
    included, std 0.1), so each differs from what a fresh init would give."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.BertConfig(vocab_size=2000, **HF_SHAPE)
    folders = {}
    for seed, name in enumerate(LACKS):
        model = getattr(transformers, name)(config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (p == 1).float())
        model.save_pretrained(root / name)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, root / name / f.name)
        folders[name] = root / name
    return folders


def _saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A transformers folder's weights under BertForPreTraining's names (a BertModel saves
    them without the ``bert.`` prefix)."""
    sd = load_file(folder / "model.safetensors")
    if not any(k.startswith("bert.") for k in sd):
        sd = {f"bert.{k}": v for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("kind", list(LACKS))
def test_init_from_a_transformers_folder_starts_from_its_weights(
    tmp_path, data_dir, hf_folders, kind, caplog
):
    """model.init_from=DIR of a BertModel or BertForMaskedLM: training starts from every weight
    the folder holds, with its tokenizer; the heads it lacks are freshly initialised (BERT's
    init at the folder's initializer_range) and named in the log, and trained with the rest."""
    folder, run = hf_folders[kind], tmp_path / "run"
    start = tmp_path / "start"
    with caplog.at_level(logging.WARNING, logger="bertpt.model.hf"):
        train(make_cfg(run, data_dir, *FAST, "logger=csv", f"model.init_from={folder}",
                       *_callback("start", RecordInitialWeights, out_dir=start)))  # fmt: skip
    saved, started = _saved_weights(folder), _started(start)
    assert saved.keys() <= started.keys(), sorted(saved.keys() - started.keys())
    differ = [k for k, v in saved.items() if not torch.equal(v, started[k])]
    assert not differ, f"training did not start from the folder's {differ}"
    assert (run / "tokenizer" / "tokenizer.json").read_bytes() == (
        folder / "tokenizer.json"
    ).read_bytes()

    named = [r.getMessage() for r in caplog.records if "freshly initialised" in r.getMessage()]
    lacks = f"{', '.join(LACKS[kind])}: freshly initialised"
    assert len(named) == 1 and named[0].endswith(lacks), f"{lacks!r} not logged once: {named}"
    fresh = {
        k: v for k, v in started.items() if k.startswith(tuple(LACKS[kind])) and k not in saved
    }
    assert fresh and not any(k.startswith(tuple(LACKS[kind])) for k in saved)
    for k, v in fresh.items():
        if k.endswith("dense.weight") or k == "cls.seq_relationship.weight":
            assert 0.035 < float(v.std()) < 0.065, (k, float(v.std()))  # initializer_range 0.05
        elif k.endswith("LayerNorm.weight"):
            assert torch.equal(v, torch.ones_like(v)), k
        elif k.endswith("bias"):
            assert torch.equal(v, torch.zeros_like(v)), k

    # the export is a whole BertForPreTraining whose every weight, fresh heads included, trained
    exported, info = transformers.BertForPreTraining.from_pretrained(
        run / "hf", output_loading_info=True
    )
    assert not info["missing_keys"], info["missing_keys"]
    after = exported.state_dict()
    trained = ["bert.embeddings.word_embeddings.weight", *(k for k in fresh if k in after)]
    assert len(trained) > 4
    untrained = [k for k in trained if torch.equal(after[k], started[k])]
    assert not untrained, untrained


# --- +experiment=base_phase2 from a phase-1 run --------------------------------------------------

# BERT-base's two phases at tiny size on one CPU: the model, the run's length and batch shrink,
# the sequence lengths (128, then 512) and the masking stay the experiments' own.
SHRUNK = ["model=tiny", "trainer=cpu", "data.num_proc=1", "logger=csv"]


@pytest.fixture(scope="module")
def phase1(tmp_path_factory, data_dir, tokenizer_dir):
    run = tmp_path_factory.mktemp("phase1") / "run"
    train(make_cfg(run, data_dir, "+experiment=base", "+debug=fast", *SHRUNK,
                   f"tokenizer.path={tokenizer_dir}"))  # fmt: skip
    return run


@pytest.mark.slow
def test_base_phase2_continues_from_phase_1s_export(tmp_path, data_dir, phase1):
    """+experiment=base_phase2 model.init_from=PHASE1/hf: phase 2 starts from the weights
    phase 1 ended with and trains its own schedule (steps from 0) at sequence length 512."""
    run, start = tmp_path / "run", tmp_path / "start"
    train(make_cfg(run, data_dir, "+experiment=base_phase2", "+debug=fast", *SHRUNK,
                   f"model.init_from={phase1 / 'hf'}",
                   *_callback("start", RecordInitialWeights, out_dir=start)))  # fmt: skip
    ended = read_checkpoint(phase1 / "checkpoints" / "last.ckpt")
    assert ended.step == 4
    started = _started(start)
    assert started.keys() == ended.state_dict.keys()
    differ = [k for k, v in ended.state_dict.items() if not torch.equal(v, started[k])]
    assert not differ, f"phase 2 did not start from phase 1's {differ}"

    steps = sorted({int(r["step"]) for r in read_metrics(run) if r["train/loss"]})
    assert steps == [0, 1, 2, 3]
    assert json.loads((run / "hf" / "bertpt_export.json").read_text())["global_step"] == 4
    reports = [OmegaConf.load(r / "csv" / "hparams.yaml") for r in (phase1, run)]
    assert [h.data_report.max_seq_length for h in reports] == [128, 512]
    assert [h.data.max_predictions_per_seq for h in reports] == [20, 80]
    assert reports[1].data_report.mean_pair_length > reports[0].data_report.mean_pair_length
    assert (run / "tokenizer" / "tokenizer.json").read_bytes() == (
        phase1 / "tokenizer" / "tokenizer.json"
    ).read_bytes()


# --- trainer.gradient_clip_algorithm=value -------------------------------------------------------

CLIP = 0.01


@pytest.fixture(scope="module")
def clipped_run(tmp_path_factory, data_dir, tokenizer_dir):
    """A tiny run that clips gradients by value at CLIP, recording what clipping did:
    (run folder, the record's rows). Its checkpoints are also the resume test's source."""
    tmp = tmp_path_factory.mktemp("clipped")
    run, record = tmp / "run", tmp / "clipping.jsonl"
    train(make_cfg(run, data_dir, *FAST, "logger=csv", "export_hf=false",
                   f"tokenizer.path={tokenizer_dir}", "trainer.gradient_clip_algorithm=value",
                   f"trainer.gradient_clip_val={CLIP}",
                   *_callback("clipping", RecordClipping, path=record, clip=CLIP)))  # fmt: skip
    return run, [json.loads(line) for line in record.read_text().splitlines()]


def test_gradient_clip_algorithm_value_clamps_each_gradient(clipped_run):
    """trainer.gradient_clip_algorithm=value: the optimizer steps with every gradient element
    clamped to [-clip, clip], the others untouched (not scaled as norm clipping would), and
    train/grad_norm is the norm before clipping."""
    run, rows = clipped_run
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r["max_before"] > CLIP and 0 < r["clipped_share"] < 1, r  # clipping had work
        assert r["max_after"] == pytest.approx(CLIP, rel=1e-6), r
        assert r["off_from_clamped"] == 0, r
    logged = {
        int(m["step"]): float(m["train/grad_norm"])
        for m in read_metrics(run)
        if m["train/grad_norm"]
    }
    # float32's norm of ~750k numbers, against float64's; clipping took more than 10% off
    assert logged == pytest.approx({r["step"]: r["norm_before"] for r in rows}, rel=1e-4)
    assert all(r["norm_after"] < 0.9 * r["norm_before"] for r in rows), rows


# --- tokenizer.allow_mismatch=true ---------------------------------------------------------------


def test_allow_mismatch_starts_init_from_with_another_tokenizer(
    tmp_path, data_dir, hf_folders, tokenizer_dir, caplog
):
    """model.init_from with a tokenizer.path of another vocabulary, refused by default, runs
    with tokenizer.allow_mismatch=true: a warning names both, and the run trains the folder's
    weights on the given tokenizer, which its folder and export keep."""
    folder = hf_folders["BertForMaskedLM"]
    other = other_tokenizer(tokenizer_dir, tmp_path / "other")
    run, start = tmp_path / "run", tmp_path / "start"
    with caplog.at_level(logging.WARNING, logger="bertpt.training.preflight"):
        train(make_cfg(run, data_dir, *FAST, "logger=csv", f"model.init_from={folder}",
                       f"tokenizer.path={other}", "tokenizer.allow_mismatch=true",
                       *_callback("start", RecordInitialWeights, out_dir=start)))  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "(allowed)" in r.getMessage()]
    assert warned == [f"tokenizer {other} differs from {folder}'s (allowed)"], warned
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(_started(start)[embeddings], _saved_weights(folder)[embeddings])
    for copy in (run / "tokenizer", run / "hf"):
        assert tokenizer_hash(copy) == tokenizer_hash(other), f"{copy} is not {other}"
    assert tokenizer_hash(other) != tokenizer_hash(folder)


def test_allow_mismatch_resumes_with_another_tokenizer(tmp_path, data_dir, clipped_run, caplog):
    """A resume with a tokenizer.path of another vocabulary than the checkpoint's, refused by
    default, continues with tokenizer.allow_mismatch=true: a warning names both hashes, the
    run goes on from the checkpoint's step, and its checkpoints record the new tokenizer."""
    source, _ = clipped_run
    ckpt = source / "checkpoints" / "step0000002.ckpt"
    other = other_tokenizer(source / "tokenizer", tmp_path / "other")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="bertpt.data.tokenizer"):
        train(make_cfg(run, data_dir, *FAST, "logger=csv", "export_hf=false",
                       f"ckpt_path={ckpt}", f"tokenizer.path={other}",
                       "tokenizer.allow_mismatch=true"))  # fmt: skip
    old, new = tokenizer_hash(source / "tokenizer"), tokenizer_hash(other)
    warned = [r.getMessage() for r in caplog.records if "(allowed)" in r.getMessage()]
    assert len(warned) == 1, f"one '(allowed)' warning expected: {warned}"
    assert warned[0].startswith(
        f"tokenizer {other} has sha256 {new} but the checkpoint was trained with {old}"
    ), warned
    steps = sorted({int(r["step"]) for r in read_metrics(run) if r["train/loss"]})
    assert steps == [2, 3]
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last.step, last.tokenizer_hash, tokenizer_hash(run / "tokenizer")) == (4, new, new)


# --- an [UNK]-ridden corpus through the command --------------------------------------------------


@pytest.fixture(scope="module")
def unk_ridden_run(tmp_path_factory, data_dir, tokenizer_dir):
    """The real command on a corpus the tokenizer does not fit (Cherokee words for a tokenizer
    of English docstrings), with its default loggers: (process, run folder, the [UNK] rate)."""
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    unknown = ["ᏣᎳᎩ", "ᎦᏬᏂᎯᏍᏗ", "ᏐᏉ", "ᏔᎵ", "ᏦᎢ", "ᏅᎩ", "ᎯᏍᎩ"]
    sentence = " ".join(unknown) + " is the value."  # every sentence of every document
    ids = tok.encode(sentence, add_special_tokens=False).ids
    assert ids.count(tok.token_to_id("[UNK]")) == len(unknown)
    tmp = tmp_path_factory.mktemp("unk")
    corpus, run = tmp / "unk.txt", tmp / "run"
    corpus.write_text("\n\n".join(f"{sentence}\n{sentence}" for _ in range(40)) + "\n")
    proc = run_cli(
        [*FAST, f"data.corpus={corpus}", f"tokenizer.path={tokenizer_dir}",
         f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"],
        cwd=tmp, check=False, env_extra={"WANDB_SILENT": "false"},
    )  # fmt: skip
    return proc, run, len(unknown) / len(ids)


def test_unk_ridden_corpus_is_one_line_naming_the_rate(unk_ridden_run):
    """Data that cannot work stops the real command with exit status 2 and one error line,
    here naming the corpus's [UNK] rate, and leaves no run folder behind."""
    proc, run, rate = unk_ridden_run
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [proc.stderr.strip().splitlines()[-1]], errors
    assert errors[0].startswith(f"error: {rate:.1%} of the tokens are [UNK]"), errors[0]
    assert "Traceback" not in proc.stderr
    assert not run.exists(), sorted(p.name for p in run.iterdir())


def test_unk_ridden_corpus_is_refused_before_the_loggers_start(unk_ridden_run):
    """Found 'while the data is prepared, still before the loggers start' (README): W&B never
    starts and the Trainer is never built."""
    proc, _, _ = unk_ridden_run
    assert "wandb:" not in proc.stderr, proc.stderr[-3000:]
    assert "GPU available" not in proc.stdout, proc.stdout[-3000:]  # the Trainer was built
