"""Faults a careful user runs into: every one is a one-line error (exit code 2, no traceback) that
names the problem, leaves the files that were there unchanged, and never runs code from a file."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from spikingmamba.cli.main import main
from training_helpers import make_teacher, pretrain_settings

CHECKPOINT_FILES = ("model.pt", "optimizer.pt", "rng.pt", "trainer.json")


class Payload:
    """Unpickling this writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`spikingmamba ARGV` in this process: (exit code, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_clean_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word.lower() in err.lower(), (word, err)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tokenizer) -> Path:
    """A pretrain run stopped at step 2 of 6, with a checkpoint to resume from (copy before changing)."""
    from spikingmamba.pretrain import pretrain

    out = tmp_path_factory.mktemp("stopped") / "run"
    pretrain(pretrain_settings(out, tokenizer, stop_at_step=2, save_every=0))
    return out


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


def test_the_payload_is_live(tmp_path):
    """The payload of the next test does run when unpickled without restriction."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_malicious_checkpoint_file_is_refused_without_running(run_copy, tmp_path, capsys, name, writer):
    marker = tmp_path / "marker"
    target = run_copy / "checkpoint" / name
    with target.open("wb") as f:
        (torch.save if writer == "torch.save" else pickle.dump)({"state": Payload(marker)}, f)
    before = snapshot(run_copy)
    code, err = run_cli(["pretrain", "--out", run_copy, "--resume"], capsys)
    assert_clean_error(code, err, str(target))
    assert "weights_only" not in err
    assert not marker.exists()
    assert snapshot(run_copy) == before


# --- the saved recipe -------------------------------------------------------------------------
def _recipe(out: Path) -> Path:
    return out / "train_config.yaml"


@pytest.mark.parametrize("damage, words", [
    (lambda t: t[: len(t) // 2], "incomplete"),                                 # cut in half
    (lambda t: t.rsplit("\n", 2)[0] + "\n", "incomplete"),                      # the checksum line lost
    (lambda t: t.replace("\nseed: 0\n", "\nseed: 1\n"), "checksum"),           # edited by hand
    (lambda t: "", "incomplete"),                                               # empty
])
def test_a_damaged_recipe_is_never_resumed_with_defaults(run_copy, capsys, damage, words):
    file = _recipe(run_copy)
    assert "\nseed: 0\n" in file.read_text()
    file.write_text(damage(file.read_text()))
    before = snapshot(run_copy)
    code, err = run_cli(["pretrain", "--out", run_copy, "--resume"], capsys)
    assert_clean_error(code, err, str(file), words)
    assert snapshot(run_copy) == before


def test_a_recipe_without_a_field_is_incomplete_even_with_a_good_checksum(run_copy, capsys):
    from spikingmamba.training.run import _CHECKSUM, _sha256

    body = "".join(line + "\n" for line in _recipe(run_copy).read_text().splitlines()[:-1]
                   if not line.startswith("max_steps:"))
    _recipe(run_copy).write_text(body + _CHECKSUM + _sha256(body) + "\n")
    code, err = run_cli(["pretrain", "--out", run_copy, "--resume"], capsys)
    assert_clean_error(code, err, str(_recipe(run_copy)), "lacks max_steps")


# --- kills at exact moments -------------------------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL at an exact moment (raised where the process would die)."""


def _kill_at_rename(monkeypatch, src_prefix: str, dst_name: str):
    """Make `os.replace(src, dst)` raise Killed when src's name starts with `src_prefix` and dst is named
    `dst_name`: the process dies just before that rename."""
    import os

    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(src_prefix) and Path(dst).name == dst_name:
            raise Killed
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_kill_between_the_two_renames_of_a_checkpoint_save(run_copy, tokenizer, tmp_path, monkeypatch):
    """The good checkpoint sits in .checkpoint.old: --resume puts it back (it is not told "nothing to
    resume"), cleans the temporaries, and finishes exactly like an uninterrupted run."""
    from spikingmamba.pretrain import pretrain
    from training_helpers import train_losses, weights

    with monkeypatch.context() as patch:
        _kill_at_rename(patch, ".checkpoint.", "checkpoint")   # after checkpoint -> .checkpoint.old
        with pytest.raises(Killed):
            pretrain(pretrain_settings(run_copy, tokenizer, resume=True, stop_at_step=4, save_every=0))
    assert not (run_copy / "checkpoint").exists() and (run_copy / ".checkpoint.old" / "trainer.json").is_file()
    (run_copy / ".checkpoint.k1ll3d.tmp").mkdir()      # what SIGKILL leaves besides (no cleanup ran)
    (run_copy / ".checkpoint.k1ll3d.tmp" / "model.pt").write_bytes(b"half")
    pretrain(pretrain_settings(run_copy, tokenizer, resume=True))
    pretrain(pretrain_settings(tmp_path / "clean", tokenizer))
    assert train_losses(run_copy) == train_losses(tmp_path / "clean")
    a, b = weights(tmp_path / "clean"), weights(run_copy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".")]


# --- one run per folder -----------------------------------------------------------------------
def test_a_second_run_on_the_same_out_is_refused(run_copy, tokenizer, capsys):
    """The lock is held by a separate process (flock locks are per open file, so this holds in one
    process too); the second run stops before touching anything."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
                               str(run_copy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        for extra in (["--resume"], ["--overwrite", "--tokenizer", tokenizer, "--data",
                                     pretrain_settings(run_copy, tokenizer)["data"]]):
            code, err = run_cli(["pretrain", "--out", run_copy, *extra], capsys)
            assert_clean_error(code, err, str(run_copy), "in use by another run")
        assert snapshot(run_copy) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run_cli(["pretrain", "--out", run_copy, "--resume", "--no-progress"], capsys)[0] == 0  # released: runs


def _lock_is_free(folder: Path) -> bool:
    import fcntl
    import os

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_lock_is_held_for_the_whole_run_and_released_after(run_copy, tokenizer, monkeypatch):
    import spikingmamba.training.loop as loop
    from spikingmamba.pretrain import pretrain

    free_during = []
    real_evaluate = loop.evaluate

    def evaluate(*args, **kwargs):
        free_during.append(_lock_is_free(run_copy))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    pretrain(pretrain_settings(run_copy, tokenizer, resume=True))
    assert free_during and not any(free_during)
    assert _lock_is_free(run_copy)
