import multiprocessing as mp
import os
from pathlib import Path

import pytest

from bertpt.common.atomic import publish, publish_dir, temp_beside


def test_a_built_folder_is_published_and_no_temporary_is_left(tmp_path):
    out = tmp_path / "out"
    with publish_dir(out) as pub:
        assert pub.tmp.parent == tmp_path and pub.tmp.name.startswith(".out.")
        (pub.tmp / "a.txt").write_text("ours")
        assert not out.exists()  # nothing at the target until the block ends
    assert pub.published
    assert (out / "a.txt").read_text() == "ours"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_exception_in_the_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="half way"), publish_dir(tmp_path / "out") as pub:
        (pub.tmp / "a.txt").write_text("half")
        raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []


def test_an_exception_leaves_the_folder_already_there_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), publish_dir(out, replace=True) as pub:
        (pub.tmp / "b.txt").write_text("new")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["a.txt"]


def test_a_folder_published_meanwhile_is_kept_and_ours_discarded(tmp_path):
    out = tmp_path / "out"
    with publish_dir(out) as pub:
        (pub.tmp / "a.txt").write_text("ours")
        out.mkdir()  # another process finishes first
        (out / "a.txt").write_text("theirs")
    assert not pub.published
    assert (out / "a.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_folder_at_the_target_counts_as_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with publish_dir(out) as pub:
        (pub.tmp / "a.txt").write_text("ours")
    assert pub.published and (out / "a.txt").read_text() == "ours"


def test_replace_puts_ours_in_place_of_the_whole_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with publish_dir(out, replace=True) as pub:
        (pub.tmp / "a.txt").write_text("ours")
    assert pub.published
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_file_in_the_way_of_a_folder_is_an_error(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(NotADirectoryError), publish_dir(out) as pub:
        (pub.tmp / "a.txt").write_text("ours")
    assert out.read_text() == "a file"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("replace", [False, True])
def test_a_file_is_published_first_in_wins_unless_replace(tmp_path, replace):
    out = tmp_path / "out.txt"
    for text, expected in (("first", True), ("second", replace)):
        with temp_beside(out) as (fd, tmp):
            with os.fdopen(fd, "w") as f:
                f.write(text)
            assert publish(tmp, out, replace=replace) == expected
    assert out.read_text() == ("second" if replace else "first")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _build_and_publish(out: str, barrier, results) -> None:
    """Write a folder of several files that name this process, wait until the other process
    has built its own, then publish: neither publishes before both have built, however the two
    are scheduled."""
    with publish_dir(Path(out)) as pub:
        for name in ("a", "b", "c"):
            (pub.tmp / name).write_text(str(os.getpid()))
        barrier.wait(timeout=120)
    results.put((os.getpid(), pub.published))


def test_two_processes_racing_leave_one_complete_folder(tmp_path):
    out = tmp_path / "out"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_build_and_publish, args=(str(out), barrier, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    winners = [pid for pid, published in outcomes.items() if published]
    assert len(winners) == 1, f"published by {len(winners)} of 2 processes: {outcomes}"
    winner = winners[0]
    assert {(out / n).read_text() for n in ("a", "b", "c")} == {str(winner)}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the loser's folder is gone
