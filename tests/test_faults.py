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
    """Exit code 2, no traceback, one error line (argparse adds its usage lines before it)."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert "Traceback" not in err and len(lines) == 1 and ": error: " in lines[0], err
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


@pytest.mark.parametrize("moment", ["while writing the model", "before the model folder's rename"])
def test_kill_during_the_final_save(run_copy, tokenizer, tmp_path, monkeypatch, moment):
    """No half-written model is ever in model/; the resumed run saves it whole and its result.json
    has the evaluations (not nulls), exactly those of an uninterrupted run."""
    import json

    from spikingmamba.pretrain import pretrain
    from spikingmamba.pretrain.trainer import PretrainTask
    from training_helpers import weights

    with monkeypatch.context() as patch:
        if moment == "while writing the model":
            real = PretrainTask.save_model

            def save_half(self, folder, full_state=None):
                real(self, folder, full_state)
                (Path(folder) / "model.safetensors").write_bytes(b"half")
                raise Killed

            patch.setattr(PretrainTask, "save_model", save_half)
        else:
            _kill_at_rename(patch, ".model.", "model")
        with pytest.raises(Killed):
            pretrain(pretrain_settings(run_copy, tokenizer, resume=True))
    assert not (run_copy / "model").exists() and not (run_copy / "result.json").exists()
    resumed = pretrain(pretrain_settings(run_copy, tokenizer, resume=True))
    clean = pretrain(pretrain_settings(tmp_path / "clean", tokenizer))
    saved = json.loads((run_copy / "result.json").read_text())
    assert saved["final_eval"] is not None and saved["final_eval"] == clean["final_eval"] == resumed["final_eval"]
    a, b = weights(tmp_path / "clean"), weights(run_copy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".")]


def test_a_resumed_distillation_keeps_its_first_evaluation(tmp_path, tokenizer):
    import json

    from spikingmamba.distill import distill
    from training_helpers import distill_settings

    out = tmp_path / "d"
    distill(distill_settings(out, tokenizer, max_steps=4, stop_at_step=2, save_every=0, eval_every=0))
    distill(distill_settings(out, tokenizer, max_steps=4, resume=True, eval_every=0))
    clean = distill(distill_settings(tmp_path / "clean", tokenizer, max_steps=4, eval_every=0))
    saved = json.loads((out / "result.json").read_text())
    assert saved["first_eval"] is not None and saved["first_eval"] == json.loads(json.dumps(clean["first_eval"]))
    assert saved["final_eval"] == json.loads(json.dumps(clean["final_eval"]))


# --- the battery: one case per fault, each exit code 2 + one named line + nothing changed ---------
NOT_UTF8 = b"caf\xe9 \xff\xfe not utf-8\n"
IS_ROOT = hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0


def damage(path: Path, how: str) -> Path:
    """Damage `path` in place the way a user finds it: truncated, empty, garbled, or a folder."""
    data = path.read_bytes() if path.is_file() else b""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if how == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("a folder where a file belongs")
    else:
        path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                          "garbled": bytes((7 * i + 13) % 256 for i in range(max(64, len(data))))}[how])
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "t")


@pytest.fixture(scope="module")
def student(tmp_path_factory, teacher) -> Path:
    import spikingmamba
    from spikingmamba.utils.io import save_model

    folder = tmp_path_factory.mktemp("student") / "s"
    save_model(spikingmamba.to_spiking(spikingmamba.from_pretrained(teacher), levels=2), folder, source=str(teacher))
    return folder


def _model_copy(teacher: Path, tmp: Path, weights: str = "safetensors") -> Path:
    """A copy of the tiny teacher; weights as model.safetensors, pytorch_model.bin, or 1 shard + index."""
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp / "m"
    shutil.copytree(teacher, folder)
    state = load_file(str(folder / "model.safetensors"))
    if weights == "bin":
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    elif weights == "sharded":
        (folder / "model.safetensors").unlink()
        save_file(state, str(folder / "model-00001-of-00001.safetensors"))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}))
    return folder


def _generate(folder: Path) -> list:
    return ["generate", folder, "--prompt", "To be", "--max-new-tokens", "1", "--device", "cpu", "--num-threads", "1"]


def model_file_case(file: str, how: str, weights: str = "safetensors", words: tuple = ()):
    def make(env):
        folder = _model_copy(env["teacher"], env["tmp"], weights)
        target = damage(folder / file, how)
        return _generate(folder), (str(target), *words)
    return make


def shard_index_case(weight_map_file: str, words: tuple):
    def make(env):
        import json

        folder = _model_copy(env["teacher"], env["tmp"], "sharded")
        index = folder / "model.safetensors.index.json"
        keys = json.loads(index.read_text())["weight_map"]
        index.write_text(json.dumps({"weight_map": {k: weight_map_file for k in keys}}))
        (env["tmp"] / "outside.safetensors").write_bytes((folder / "model-00001-of-00001.safetensors").read_bytes())
        return _generate(folder), (str(index) if "outside" in weight_map_file else weight_map_file, *words)
    return make


def checkpoint_case(file: str, how: str, words: tuple = ()):
    def make(env):
        target = env["run"] / "checkpoint" / file
        if how == "{}":
            target.write_text("{}")
        else:
            damage(target, how)
        return ["pretrain", "--out", env["run"], "--resume"], (str(target), *words)
    return make


def not_utf8_case(verb: str):
    def make(env):
        bad = env["tmp"] / ("bad.jsonl" if verb == "data" else "bad.yaml" if verb == "config" else "bad.txt")
        bad.write_bytes(NOT_UTF8 if verb != "data" else b'{"text": "' + NOT_UTF8.strip() + b'"}\n')
        t, s, out = env["teacher"], env["student"], env["tmp"] / "out"
        argv = {"data": ["pretrain", "--out", out, "--tokenizer", t, "--data", bad, "--no-progress"],
                "config": ["pretrain", "--config", bad, "--out", out],
                "calibration": ["convert", t, out, "--calibration-text", bad, "--device", "cpu"],
                "text-file": ["spikes", s, "--text-file", bad, "--out", env["tmp"] / "s.npz", "--device", "cpu"],
                "prompts": ["make-preferences", "--student", s, "--teacher", t, "--prompts", bad, "--out",
                            env["tmp"] / "p.jsonl", "--device", "cpu"]}[verb]
        return argv, (str(bad), "utf-8")
    return make


def cuda_case(verb: str):
    def make(env):
        t, s, out, text = env["teacher"], env["student"], env["tmp"] / "out", env["text"]
        argv = {"convert": ["convert", t, out], "eval": ["eval", s, "--tasks", "indomain_choice", "--heldout-text", text],
                "energy": ["energy", s, "--text", text], "pretrain": ["pretrain", "--out", out, "--tokenizer", t],
                "distill": ["distill", "--out", out, "--teacher", t],
                "make-preferences": ["make-preferences", "--student", s, "--teacher", t, "--corpus", text, "--out",
                                     env["tmp"] / "p.jsonl"],
                "rl": ["rl", "--model", s, "--preferences", env["tmp"] / "p.jsonl", "--out", out],
                "generate": ["generate", s, "--prompt", "x"], "spikes": ["spikes", s, "--text", "x", "--out",
                                                                          env["tmp"] / "s.npz"],
                "bench-decode": ["bench-decode", "--shape", "130m", "--tokens", "1"],
                "quickstart": ["quickstart", "--out", out]}[verb]
        return [*argv, "--device", "cuda"], ("cuda",)
    return make


def simple_case(argv_of, words):
    def make(env):
        return argv_of(env), words
    return make


FAULTS = {
    **{f"model.safetensors {how}": model_file_case("model.safetensors", how)
       for how in ("truncated", "empty", "garbled", "folder")},
    **{f"pytorch_model.bin {how}": model_file_case("pytorch_model.bin", how, "bin")
       for how in ("truncated", "empty", "garbled", "folder")},
    **{f"config.json {how}": model_file_case("config.json", how) for how in ("truncated", "empty", "garbled", "folder")},
    **{f"tokenizer.json {how}": model_file_case("tokenizer.json", how)
       for how in ("truncated", "empty", "garbled", "folder")},
    **{f"shard index {how}": model_file_case("model.safetensors.index.json", how, "sharded")
       for how in ("truncated", "empty", "garbled", "folder")},
    "shard index pointing outside the folder": shard_index_case("../outside.safetensors", ("outside",)),
    "shard index naming a missing shard": shard_index_case("model-00009-of-00009.safetensors", ("does not exist",)),
    **{f"checkpoint/{name} {how}": checkpoint_case(name, how)
       for name in ("model.pt", "optimizer.pt", "rng.pt", "trainer.json")
       for how in ("truncated", "empty", "garbled", "folder")},
    "checkpoint/trainer.json {}": checkpoint_case("trainer.json", "{}", ("incomplete",)),
    **{f"non-UTF-8 --{verb}": not_utf8_case(verb) for verb in ("data", "config", "calibration", "text-file", "prompts")},
    "eval --limit nan": simple_case(lambda e: ["eval", e["student"], "--limit", "nan"], ("limit",)),
    "eval --device bogus": simple_case(lambda e: ["eval", e["student"], "--device", "bogus"], ("--device", "bogus")),
    **{f"--device cuda without CUDA: {verb}": cuda_case(verb)
       for verb in ("convert", "eval", "energy", "pretrain", "distill", "make-preferences", "rl", "generate", "spikes",
                    "bench-decode", "quickstart")},
    "pretrain --lr inf": simple_case(lambda e: ["pretrain", "--out", e["tmp"] / "out", "--tokenizer", e["teacher"],
                                                "--lr", "inf"], ("lr", "inf")),
    "distill --lr nan": simple_case(lambda e: ["distill", "--out", e["tmp"] / "out", "--teacher", e["teacher"],
                                               "--lr", "nan"], ("lr", "nan")),
    "distill wrong-length --hidden-layer-weights": simple_case(
        lambda e: ["distill", "--out", e["tmp"] / "out", "--teacher", e["teacher"], "--hidden-layer-weights", "1,2",
                   "--data", e["text"], "--no-progress"], ("hidden_layer_weights", "2 weights")),
    "convert of a folder that is already a student": simple_case(
        lambda e: ["convert", e["student"], e["tmp"] / "out", "--device", "cpu"], ("already",)),
    "spikes --overwrite on a folder": simple_case(
        lambda e: ["spikes", e["student"], "--text", "x", "--out", e["run"], "--overwrite", "--device", "cpu"],
        ("folder",)),
    "resume with an empty recipe": simple_case(
        lambda e: [(e["run"] / "train_config.yaml").write_text(""), "pretrain", "--out", e["run"], "--resume"][1:],
        ("train_config.yaml", "incomplete")),
    "resume from a folder that never ran": simple_case(
        lambda e: (e["tmp"] / "empty").mkdir() or ["pretrain", "--out", e["tmp"] / "empty", "--resume"],
        ("no run to resume",)),
}


@pytest.fixture
def env(tmp_path, teacher, student, stopped_run) -> dict:
    from training_helpers import SAMPLE

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    return {"tmp": tmp_path, "teacher": teacher, "student": student, "run": run, "text": SAMPLE}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_one_clear_line_and_changes_nothing(fault, env, capsys):
    if "without CUDA" in fault and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is not a fault here")
    argv, words = FAULTS[fault](env)
    before, teacher_before, student_before = snapshot(env["tmp"]), snapshot(env["teacher"]), snapshot(env["student"])
    code, err = run_cli(argv, capsys)
    assert_clean_error(code, err, *words)
    assert snapshot(env["tmp"]) == before
    assert snapshot(env["teacher"]) == teacher_before and snapshot(env["student"]) == student_before


# --- disk full, permission denied -------------------------------------------------------------
def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("during", ["checkpoint save", "final model save"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(run_copy, tokenizer, capsys, monkeypatch, during):
    import spikingmamba.utils.io as io
    from spikingmamba.pretrain.trainer import PretrainTask

    if during == "checkpoint save":
        def save_then_fill(obj, f, *args, **kwargs):   # part of the file is written, then the disk is full
            f.write(b"partial")
            _no_space()

        monkeypatch.setattr(torch, "save", save_then_fill)
    else:
        def save_then_fill(self, folder, full_state=None):
            (Path(folder) / "config.json").write_text("{}")
            _no_space()

        monkeypatch.setattr(PretrainTask, "save_model", save_then_fill)
    checkpoint_before = snapshot(run_copy / "checkpoint")
    code, err = run_cli(["pretrain", "--out", run_copy, "--resume", "--no-progress"], capsys)
    assert_clean_error(code, err, "no space left on device")
    monkeypatch.undo()
    if during == "checkpoint save":
        assert snapshot(run_copy / "checkpoint") == checkpoint_before           # the step-2 checkpoint is intact
    assert not (run_copy / "model").exists()
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".")]
    assert io.describe_os_error(OSError(28, "x")) == "no space left on device"


def _deny(monkeypatch, target: Path) -> None:
    """Make reading `target` fail with EACCES. As root, chmod does not deny reads (root bypasses file
    modes), so there the denial is simulated at Python's open(); otherwise a real chmod 000."""
    import builtins
    import errno
    import io
    import os

    if not IS_ROOT:
        target.chmod(0)
        return
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == target.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize("what", ["config.json", "--data", "--config", "checkpoint trainer.json"])
def test_permission_denied_is_not_no_such_file(env, capsys, monkeypatch, what):
    folder = _model_copy(env["teacher"], env["tmp"])
    target = {"config.json": folder / "config.json", "--data": env["tmp"] / "data.txt",
              "--config": env["tmp"] / "c.yaml", "checkpoint trainer.json": env["run"] / "checkpoint" / "trainer.json"}[what]
    if what == "--data":
        target.write_text(env["text"].read_text())
    if what == "--config":
        target.write_text("lr: 0.001\n")
    argv = {"config.json": _generate(folder),
            "--data": ["pretrain", "--out", env["tmp"] / "o", "--tokenizer", env["teacher"], "--data", target],
            "--config": ["pretrain", "--config", target, "--out", env["tmp"] / "o"],
            "checkpoint trainer.json": ["pretrain", "--out", env["run"], "--resume"]}[what]
    before = snapshot(env["tmp"])
    _deny(monkeypatch, target)
    try:
        code, err = run_cli(argv, capsys)
    finally:
        if not IS_ROOT:
            target.chmod(0o644)
    assert_clean_error(code, err, str(target), "permission denied")
    assert "does not exist" not in err and "no such" not in err.lower()
    monkeypatch.undo()
    assert snapshot(env["tmp"]) == before


# --- damage that is repaired, not refused -----------------------------------------------------
def test_a_garbled_metrics_line_does_not_stop_a_resume(run_copy, tokenizer, tmp_path):
    from spikingmamba.pretrain import pretrain
    from training_helpers import train_losses

    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"kind": "train", "step": 2, "lo\n\x00\x01 garbage\n')
    pretrain(pretrain_settings(run_copy, tokenizer, resume=True))
    pretrain(pretrain_settings(tmp_path / "clean", tokenizer))
    assert train_losses(run_copy) == train_losses(tmp_path / "clean")


def test_a_damaged_packed_data_cache_is_rebuilt(tmp_path, tokenizer, capsys):
    from spikingmamba.data import build_datasets, load_tokenizer
    from training_helpers import SAMPLE

    tok = load_tokenizer(tokenizer)
    train, _ = build_datasets(SAMPLE, tok, 16, cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    for how in ("truncated", "garbled"):
        damage(cache_file, how)
        again, _ = build_datasets(SAMPLE, tok, 16, cache_dir=tmp_path / "cache")
        assert torch.equal(again.rows, train.rows) and "rebuilding" in capsys.readouterr().err
    marker = tmp_path / "marker"
    with cache_file.open("wb") as f:
        torch.save({"train": Payload(marker)}, f)
    again, _ = build_datasets(SAMPLE, tok, 16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.rows, train.rows) and not marker.exists()
