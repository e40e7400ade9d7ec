"""Many processes: `torchrun --nproc_per_node 2` on the CPU (gloo) trains the same student as one
process with the same global batch, to float rounding."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from spikingmamba.distill import distill
from spikingmamba.training.metrics import read_metrics
from training_helpers import distill_settings, make_teacher, weights


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_distill(settings: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun -m spikingmamba.cli.main distill` with `settings` as flags."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "spikingmamba.cli.main", "distill", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def check_same_student(one_process, two_processes) -> None:
    """Equal to float rounding: gradients summed in another order differ in the last bits, and Adam
    divides by sqrt(v), so the weights may differ by ~1e-5 of the lr-sized updates (lr 1e-3 here)."""
    a, b = weights(one_process), weights(two_processes)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=2e-5, msg=key)
    la = [r["loss"] for r in read_metrics(one_process, "train")]
    lb = [r["loss"] for r in read_metrics(two_processes, "train")]
    assert la == pytest.approx(lb, rel=1e-5)


def test_two_processes_ddp_equal_one_process(tmp_path, teacher):
    common = dict(max_steps=3, eval_every=0, save_every=0, rate_weight=0.1, rate_target=0.5)
    distill(distill_settings(tmp_path / "one", teacher, batch_size=4, **common))
    run = torchrun_distill(distill_settings(tmp_path / "two", teacher, batch_size=2, **common))
    assert run.returncode == 0, run.stderr[-3000:]
    check_same_student(tmp_path / "one", tmp_path / "two")
    assert '"processes": 2' in run.stdout


@pytest.mark.slow
def test_user_error_stops_every_process(tmp_path, teacher):
    run = torchrun_distill(distill_settings(tmp_path / "o", tmp_path / "no_teacher", max_steps=2))
    assert run.returncode != 0 and "no such checkpoint folder" in run.stderr


@pytest.mark.slow
def test_two_processes_fsdp_equal_one_process_and_resume(tmp_path, teacher):
    common = dict(max_steps=4, eval_every=2, save_every=2)
    distill(distill_settings(tmp_path / "one", teacher, batch_size=4, **common))
    first = torchrun_distill(distill_settings(tmp_path / "fsdp", teacher, batch_size=2, distributed="fsdp",
                                              stop_at_step=2, **common))
    assert first.returncode == 0, first.stderr[-3000:]
    rest = torchrun_distill(distill_settings(tmp_path / "fsdp", teacher, batch_size=2, distributed="fsdp",
                                             resume=True, **common))
    assert rest.returncode == 0, rest.stderr[-3000:]
    check_same_student(tmp_path / "one", tmp_path / "fsdp")


def test_two_processes_read_their_slices_of_token_shards(tmp_path, teacher):
    from spikingmamba.data.tokenize import tokenize
    from training_helpers import SAMPLE

    tokenize({"inputs": [str(SAMPLE)], "out": str(tmp_path / "shards"), "tokenizer": str(teacher),
              "progress": False, "workers": 1, "shard_tokens": 3000})
    common = dict(max_steps=3, eval_every=0, save_every=0, data=str(tmp_path / "shards"))
    distill(distill_settings(tmp_path / "one", teacher, batch_size=4, **common))
    run = torchrun_distill(distill_settings(tmp_path / "two", teacher, batch_size=2, **common))
    assert run.returncode == 0, run.stderr[-3000:]
    check_same_student(tmp_path / "one", tmp_path / "two")
