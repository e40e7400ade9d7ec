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
