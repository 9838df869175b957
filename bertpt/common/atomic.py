"""Files and folders that appear whole or not at all: written beside their target, then renamed.

A temporary in the target's own folder is on the same file system, so ``os.replace`` /
``os.link`` put it in place in one step; a crash before that leaves the target as it was.

Several processes may build the same target at once (rank 0 of every node on shared storage).
:func:`publish` settles it the same way everywhere: the first one in wins and stays, the others
discard their copy and learn that they lost; with ``replace`` the last one in wins instead.
:func:`publish_dir` builds a folder and publishes it in one ``with`` block.

Temporaries are named ``.<target>.<host>-<pid>.<random>.tmp``. A process that is killed cannot
remove its own, so the next writer beside the same target removes those whose process no longer
runs on this host; those of a live process, or of another host (whose processes cannot be seen
from here), are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def _prefix(target: Path) -> str:
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def _default_mode(mode: int) -> int:
    """``mode`` less the umask: what ``open()`` / ``mkdir()`` would give (``mkstemp`` /
    ``mkdtemp`` make their result private, and a shared folder is read by other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _left_by_dead_process(tmp: Path) -> bool:
    """Whether ``tmp`` (named by :func:`_prefix`) belongs to a process of this host that is gone."""
    owner = tmp.name.removesuffix(".tmp").rpartition(".")[0]  # drop the random part
    where, _, pid = owner.rpartition("-")
    if not pid.isdigit() or not where.endswith(f".{socket.gethostname()}"):
        return False
    return not _running(int(pid))


def remove_stale_temps(folder: Path, target_glob: str) -> list[Path]:
    """Remove the temporaries in ``folder``, beside targets matching ``target_glob``, that
    processes of this host left when they were killed; returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{target_glob}.*.tmp"):
        if not _left_by_dead_process(tmp):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("removed %s, left by a process that no longer runs", tmp)
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def temp_beside(target: Path) -> Iterator[tuple[int, Path]]:
    """An open descriptor and path of a new hidden file beside ``target``, with the
    permissions ``open()`` would give it; removed on exit unless it was renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, glob.escape(target.name))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_prefix(target), suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode(0o666))
        yield fd, Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def temp_dir_beside(target: Path) -> Iterator[Path]:
    """A new hidden folder beside ``target``, with the permissions ``mkdir()`` would give it;
    removed with its contents on exit unless it was renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, glob.escape(target.name))
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_prefix(target), suffix=".tmp"))
    try:
        tmp.chmod(_default_mode(0o777))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, target: Path, *, replace: bool = False) -> bool:
    """Put the file or folder ``tmp`` at ``target`` (same file system) by renaming; return
    whether ``tmp`` went in.

    Without ``replace`` a ``target`` already there (another process published it first) is
    kept, never swapped under a reader: ``tmp`` stays where it is, for :func:`temp_beside` /
    :func:`temp_dir_beside` to remove, and the answer is False. An empty folder at the target
    of a folder counts as nothing there. With ``replace`` ``tmp`` takes the place of what is
    there: a file in one rename, a folder in two (:func:`_replace_dir`).
    """
    if tmp.is_dir():
        try:
            os.replace(tmp, target)  # a folder moves onto nothing or onto an empty folder only
            return True
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not replace:
            return False
        _replace_dir(tmp, target)
        return True
    if replace:
        os.replace(tmp, target)
        return True
    try:
        os.link(tmp, target)  # unlike a rename, fails when target exists
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: the last one in wins
        os.replace(tmp, target)
    return True


@dataclass
class Publishing:
    """What :func:`publish_dir` yields: the folder to fill and, after the block, the outcome."""

    tmp: Path
    published: bool = False  # False: another process's folder was there first and is kept


@contextlib.contextmanager
def publish_dir(target: Path, *, replace: bool = False) -> Iterator[Publishing]:
    """A :class:`Publishing` whose ``tmp``, a new folder beside ``target``, the block fills;
    when the block ends it is published at ``target`` (:func:`publish`) and ``published`` says
    whether it went in. An exception in the block leaves ``target`` as it was and removes ``tmp``.

        with publish_dir(out) as pub:
            (pub.tmp / "data.json").write_text(text)
        if not pub.published:
            ...  # another process got there first: check what it left at ``out``
    """
    with temp_dir_beside(target) as tmp:
        pub = Publishing(tmp)
        yield pub
        pub.published = publish(tmp, target, replace=replace)


def _replace_dir(src: Path, target: Path) -> None:
    """Put the folder ``src`` at the folder ``target`` (same file system), replacing it.

    Two renames: the old folder moves into an empty temporary beside it (a folder may be
    renamed onto an empty one), ``src`` takes its place, then the old one is deleted. Only a
    crash between the two renames, a matter of microseconds, leaves no folder at ``target``.
    """
    with temp_dir_beside(target) as old:
        os.replace(target, old)
        os.replace(src, target)
