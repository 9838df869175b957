"""``trainer.precision: auto``: bf16-mixed where the hardware runs bf16 matrix products natively,
32-true elsewhere.

A GPU (every one bertpt targets) runs bf16 natively. A CPU does where it has AMX (Intel Sapphire
Rapids and later) or AVX512-BF16 (Cooper Lake, AMD Zen 4 and later): there bf16-mixed trains
~2x faster than fp32 (README, "CPU performance"). Without them torch emulates bf16 and it is
slower than fp32, so auto keeps fp32. ``native_bf16_unit`` is the one place that reads the CPU's
capability (tests stand in for it, as they stand in for a GPU).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
# The oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which bf16 products are not native any more.
_ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE")
_ONEDNN_WITHOUT_AMX = (*_ONEDNN_WITHOUT_BF16, "AVX512_CORE_VNNI", "AVX512_CORE_BF16")
_ONEDNN_WITHOUT_AMX += ("AVX512_CORE_FP16", "AVX10_1_512")


def native_bf16_unit() -> str | None:
    """The unit that runs this CPU's bf16 matrix products ("AMX" or "AVX512-BF16"), or None
    where torch would emulate them. Read from torch, which asks the CPU (cpuinfo); a
    ``ONEDNN_MAX_CPU_ISA`` that forbids the unit is honoured, as oneDNN honours it."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if amx and limit not in _ONEDNN_WITHOUT_AMX:
        return "AMX"
    if (amx or avx512_bf16) and limit not in _ONEDNN_WITHOUT_BF16:
        return "AVX512-BF16"
    return None


def on_gpu(accelerator: str | None) -> bool:
    """Whether a Trainer with this accelerator setting runs on a GPU here."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator in (None, "auto") and torch.cuda.is_available()


def resolve(precision: object, accelerator: str | None) -> tuple[str | None, str]:
    """The precision a run uses and why: ``auto`` becomes bf16-mixed on a GPU or a CPU with
    native bf16, 32-true on any other CPU; any other value is kept (the user asked for it), and
    None stays None (a precision plugin in ``trainer.plugins`` sets it)."""
    if precision is None:
        return None, "set by trainer.plugins"
    if str(precision) != AUTO:
        return str(precision), "as configured"
    if on_gpu(accelerator):
        return "bf16-mixed", "auto: a GPU runs bf16 natively"
    unit = native_bf16_unit()
    if unit:
        return "bf16-mixed", f"auto: this CPU has {unit}"
    capability = torch.backends.cpu.get_cpu_capability()
    return "32-true", f"auto: this CPU ({capability}) has no native bf16, which would be emulated"
