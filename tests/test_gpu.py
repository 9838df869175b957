"""The configurations people run on GPUs, for real: `pytest -m gpu` (skipped without CUDA).

BERT-base phase 1 (`+experiment=base`: bf16, DDP on every visible GPU, clipping at 1.0) for 20
steps and a resume; FSDP save, resume and export; fp16 with a fused AdamW and clipping;
the shipped `trainer=gpu` (compiled, unpadded) with no recompiles and no sync between log
steps; FlashAttention on the unpadded path. The default corpus holds about 9,000 word pieces,
hence a vocabulary of 8,192 instead of BERT's 30,522; everything else is the experiment as
users run it.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from runs import ROOT, losses_by_step, read_metrics, run_cli, train_without_recompiling

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BASE = [
    "+experiment=base",
    "tokenizer.vocab_size=8192",
    "logger=csv",
    "optim.warmup_steps=5",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=10",
    "data.val_max_pairs=512",
]


def gpu_run(tmp_path, data_dir, run_dir, *overrides: str):
    return run_cli(
        [f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *overrides],
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "4"},
        timeout=1200,
    )


def finite_losses(run_dir, steps):
    losses = losses_by_step(run_dir)
    assert sorted(losses) == list(steps), sorted(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    return losses


def test_base_bf16_ddp_clips_resumes_and_exports(tmp_path, data_dir):
    """The headline command: every visible GPU trains (disjoint data), gradients are clipped,
    `ckpt_path=last` continues at step 20, and the export gives bertpt's logits in
    transformers."""
    run, seen = tmp_path / "base", tmp_path / "seen"
    record = [
        "+callbacks.record._target_=record_batches.RecordBatches",
        f"+callbacks.record.out_dir={seen}",
    ]
    gpu_run(tmp_path, data_dir, run, *BASE, "optim.max_steps=20", *record)
    finite_losses(run, range(20))
    norms = [float(r["train/grad_norm"]) for r in read_metrics(run) if r.get("train/grad_norm")]
    assert len(norms) == 20 and all(math.isfinite(n) and n > 0 for n in norms)
    ranks = sorted(p.name for p in seen.glob("seen_rank*.txt"))
    assert ranks == [f"seen_rank{i}.txt" for i in range(torch.cuda.device_count())]
    hashes = [set((seen / r).read_text().split()) for r in ranks]
    assert all(not a & b for i, a in enumerate(hashes) for b in hashes[i + 1 :])

    gpu_run(tmp_path, data_dir, run, *BASE, "optim.max_steps=30", "ckpt_path=last")
    finite_losses(run, range(30))

    from transformers import BertForPreTraining as HFBertForPreTraining

    from bertpt.model.hf import from_hf

    ours, theirs = from_hf(run / "hf").eval(), HFBertForPreTraining.from_pretrained(run / "hf")
    ids = torch.randint(5, 8192, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).prediction_logits, theirs.eval()(ids).prediction_logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_fsdp_saves_resumes_and_exports(tmp_path, data_dir):
    """trainer=fsdp (full state dicts): resuming from the step-10 checkpoint gives the
    uninterrupted run's losses within bf16 tolerance, and the checkpoint exports the weights
    the run ended with."""
    args = [*BASE, "trainer=fsdp", "optim.max_steps=20"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    gpu_run(tmp_path, data_dir, full, *args)
    ckpt = full / "checkpoints" / "step0000010.ckpt"
    gpu_run(tmp_path, data_dir, resumed, *args, f"ckpt_path={ckpt}", "export_hf=false")
    a, b = finite_losses(full, range(20)), finite_losses(resumed, range(10, 20))
    for step in range(10, 20):
        assert b[step] == pytest.approx(a[step], rel=2e-2), (step, a[step], b[step])

    from bertpt.model.hf import from_hf
    from bertpt.training.export import export

    export(full / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt")
    at_end, from_ckpt = from_hf(full / "hf").eval(), from_hf(tmp_path / "from_ckpt").eval()
    ids = torch.randint(5, 8192, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(at_end(ids).prediction_logits, from_ckpt(ids).prediction_logits)


def test_fp16_fused_adamw_clips_unscaled_gradients(tmp_path, data_dir):
    """16-mixed with the fused AdamW and clipping at 0.05: the optimizer steps with clipped,
    unscaled gradients (GradScaler), the logged norm is the unscaled one."""
    run, grads = tmp_path / "fp16", tmp_path / "grads"
    gpu_run(
        tmp_path, data_dir, run, *BASE, "trainer=gpu", "trainer.precision=16-mixed",
        "trainer.fused_optimizer=true", "trainer.gradient_clip_val=0.05", "optim.max_steps=20",
        "export_hf=false", "+callbacks.grads._target_=record_grads.RecordGrads",
        f"+callbacks.grads.out_dir={grads}",
    )  # fmt: skip
    import json

    logged = {
        int(r["step"]): float(r["train/grad_norm"])
        for r in read_metrics(run)
        if r.get("train/grad_norm")
    }
    rows = [json.loads(line) for line in (grads / "grads_rank0.jsonl").read_text().splitlines()]
    finite = [r for r in rows if math.isfinite(logged[r["step"]])]
    assert len(finite) >= 10, logged
    for r in finite:
        assert 0.05 < logged[r["step"]] < 1e3, r  # unscaled: a scaled norm is ~65536x larger
        assert r["after"] <= 0.05 * (1 + 1e-3), r


def test_gpu_trainer_compiles_once_and_never_syncs_between_log_steps(tmp_path, data_dir):
    """trainer=gpu as shipped (compiled layers, unpadded attention): the layers compile once
    (TORCH_LOGS=recompiles prints nothing however the batch shapes vary), the compile time is
    reported once, and only log steps (every 5th here) wait for the GPU. The first step compiles
    each distinct layer call (the last layer keeps only the predicted rows); a recompilation
    after it raises in the run (RecordSyncs sets torch.compiler's fail_on_recompile stance)."""
    run, syncs = tmp_path / "gpu", tmp_path / "syncs"
    result = run_cli(
        [f"paths.data_dir={data_dir}", f"hydra.run.dir={run}", *BASE, "trainer=gpu",
         "optim.max_steps=20", "trainer.log_every_n_steps=5",
         "callbacks.model_checkpoint.every_n_train_steps=100", "trainer.val_check_interval=100",
         "+callbacks.syncs._target_=record_syncs.RecordSyncs", f"+callbacks.syncs.out_dir={syncs}"],
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(ROOT / "tests"), "TORCH_LOGS": "recompiles"},
        timeout=1200,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Detected recompile" not in output, output[-3000:]
    assert output.count("compiled the encoder layers") == 1, output[-3000:]
    import json

    rows = [json.loads(x) for x in (syncs / "syncs_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(20))
    log_steps = {4, 9, 14, 19}  # each read in its step, and logged by Lightning in the next
    for r in rows:
        if r["step"] > 0 and not {r["step"], r["step"] - 1} & log_steps:  # step 0 compiles
            assert not r["syncs"], r
    from bertpt.model.hf import from_hf

    assert from_hf(run / "hf").config.num_hidden_layers == 12


def test_unpadded_attention_is_flash_attention_and_matches_the_padded_path():
    """On a GPU the unpadded path's SDPA call reaches FlashAttention's variable-length kernel
    (forced here: it raises when the kernel cannot take the inputs), dropout and gradients
    included; without dropout it agrees with the padded path within bf16 tolerance."""
    import dataclasses

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bertpt.benchmarks.speed import load_preset, make_batch
    from bertpt.model.bert import BertForPreTraining

    config = dataclasses.replace(
        load_preset("base"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    torch.manual_seed(0)
    padded = BertForPreTraining(dataclasses.replace(config, unpad=False)).cuda().train()
    unpadded = BertForPreTraining(config).cuda().train()  # unpad=auto: on a GPU, unpadded
    unpadded.load_state_dict(padded.state_dict())
    batch = {k: v.cuda() for k, v in make_batch(config, 32, 128, short_rows=0.6).items()}
    losses = {}
    for name, model in (("padded", padded), ("unpadded", unpadded)):
        kernel = (
            sdpa_kernel(SDPBackend.FLASH_ATTENTION)
            if name == "unpadded"
            else contextlib.nullcontext()  # torch's choice
        )
        with kernel, torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch)
        out.loss.backward()
        losses[name] = out.loss.item()
    assert losses["unpadded"] == pytest.approx(losses["padded"], rel=2e-2), losses
    for (name, p), q in zip(padded.named_parameters(), unpadded.parameters(), strict=True):
        if name.endswith("key.bias"):  # softmax ignores it: its gradient is 0 up to rounding
            continue
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.99, (name, cos.item())
    dropout = BertForPreTraining(load_preset("base")).cuda().train()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        dropout(**batch).loss.backward()  # attention dropout 0.1 in the kernel


def test_compiled_unpadded_layers_do_not_recompile():
    """The inductor-compiled layers on the unpadded path over batches whose token counts,
    lengths and masked rows all differ: one compilation."""
    from bertpt.benchmarks.speed import make_batch
    from bertpt.model.bert import BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=1024)  # fmt: skip
    model = BertForPreTraining(config).cuda().train()
    for layer in model.bert.encoder.layer:
        layer.compile()
    shapes = [(16, 128), (16, 120), (16, 128), (16, 64), (16, 512)]
    batches = [
        {k: v.cuda() for k, v in make_batch(config, B, T, seed=i).items()}
        for i, (B, T) in enumerate(shapes)
    ]
    train_without_recompiling(model, batches, autocast="cuda")
