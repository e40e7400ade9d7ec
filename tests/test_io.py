"""Safe output folders: refusal to overwrite, atomic replacement, recovery after a crash mid-swap."""

import pytest

from spikingmamba.errors import UserError
from spikingmamba.utils.io import atomic_save_dir, prepare_output_dir, recover_dir


def write_file(text):
    def write(folder):
        (folder / "data.txt").write_text(text)
    return write


def test_prepare_output_dir_refuses_non_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_output_dir(tmp_path, overwrite=False)
    assert prepare_output_dir(tmp_path, overwrite=True) == tmp_path
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_atomic_save_dir_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "ckpt"
    atomic_save_dir(target, write_file("one"))
    atomic_save_dir(target, write_file("two"))
    assert (target / "data.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "ckpt"
    atomic_save_dir(target, write_file("good"))

    def crash(folder):
        (folder / "data.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save_dir(target, crash)
    assert (target / "data.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "ckpt"
    atomic_save_dir(target, write_file("good"))
    target.rename(tmp_path / ".ckpt.old")            # as if killed after the first rename
    assert recover_dir(target) == target
    assert (target / "data.txt").read_text() == "good"
    assert not (tmp_path / ".ckpt.old").exists()
