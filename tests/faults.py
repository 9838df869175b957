"""Test-only faults injected into real runs: callbacks for a run, and real write limits for a
subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]


class NanAtSteps(pl.Callback):
    """The loss of the given steps is NaN: a weight is NaN during that step's forward only."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self.saved: torch.Tensor | None = None

    def _weight(self, pl_module) -> torch.Tensor:
        return pl_module.model.cls.seq_relationship.weight

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            w = self._weight(pl_module)
            self.saved = w.detach().clone()
            with torch.no_grad():
                w.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.saved is not None:
            with torch.no_grad():
                self._weight(pl_module).copy_(self.saved)
            self.saved = None


def with_file_size_limit(
    limit: int, code: str, *, imports: str = "", kill: bool = False
) -> list[str]:
    """The command line of a Python that runs ``imports``, then ``code`` under a real write
    limit: no file it writes grows past ``limit`` bytes (``RLIMIT_FSIZE``).

    The write that would cross the limit fills the file up to it, then the next one fails with
    EFBIG ("File too large"), as a write to a full disk fails with ENOSPC. With ``kill`` the
    kernel kills the process in that write instead (SIGXFSZ's default action, no core dump):
    a death that lands, for certain, when the file holds exactly ``limit`` bytes. Arguments
    after the command line are ``sys.argv[1:]``.
    """
    handler = "SIG_DFL" if kill else "SIG_IGN"
    limit_writes = (
        "import ctypes, resource, signal\n"
        "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n"  # PR_SET_DUMPABLE 0: a kill dumps no core
        f"signal.signal(signal.SIGXFSZ, signal.{handler})\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    )
    return [sys.executable, "-c", f"{imports}\n{limit_writes}{code}"]


def run_with_file_size_limit(
    limit: int,
    code: str,
    *args: str,
    imports: str = "",
    kill: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run :func:`with_file_size_limit`'s command with ``args`` in ``cwd``, this checkout's
    bertpt first on the path and no bytecode written (a stale ``.pyc`` would be a file under
    the limit too); stdout and stderr are captured as text."""
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [*with_file_size_limit(limit, code, imports=imports, kill=kill), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
