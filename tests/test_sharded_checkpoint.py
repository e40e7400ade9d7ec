"""Sharded checkpoints (`--sharded-checkpoint`, torch.distributed.checkpoint) under FSDP on the CPU
(gloo): every process writes its shard, a run resumes on another number of processes with the same
global batch and continues the same run (step, data position, loss curve).

What holds exactly and what to rounding: the values DCP reads back are exactly the saved ones,
whatever the number of processes (tested: the 3-process shards read by one process equal the
gathered model bit for bit). Training on 2 or 3 processes sums the same gradients in another order,
so the continued run equals the uninterrupted one to float rounding (the tolerance of the DDP tests).
"""

import json
import pickle
from pathlib import Path

import pytest
import torch

from spikingmamba.distill import distill
from spikingmamba.errors import ConfigError, FileError, UserError
from spikingmamba.training.metrics import read_metrics
from test_distill_ddp import check_same_student, torchrun_distill
from training_helpers import SAMPLE, distill_settings, make_teacher, weights


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, teacher):
    from spikingmamba.data.tokenize import tokenize

    out = tmp_path_factory.mktemp("shards") / "shards"
    tokenize({"inputs": [str(SAMPLE)], "out": str(out), "tokenizer": str(teacher), "progress": False,
              "workers": 1, "shard_tokens": 3000})
    return out


def sharded(out, teacher, data, **overrides):
    """A 4-step FSDP distillation with a sharded checkpoint at step 2, reading token shards."""
    return distill_settings(out, teacher, **{"data": str(data), "max_steps": 4, "eval_every": 2, "save_every": 2,
                                             "distributed": "fsdp", "sharded_checkpoint": True, **overrides})


def trainer_state(out: Path) -> dict:
    return json.loads((out / "checkpoint" / "trainer.json").read_text())


def shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoint" / "shards").glob("*.distcp"))


def read_shards(out: Path, cfg: dict):
    """The checkpoint in `out` read back in this one process (no process group) into the trained
    model's structure and its AdamW."""
    from spikingmamba import from_pretrained
    from spikingmamba.distill.config import DistillConfig
    from spikingmamba.training.loop import make_optimizer
    from spikingmamba.training.sharded_checkpoint import load_shards

    model = from_pretrained(out).train()
    model.get_input_embeddings().weight.requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    optimizer = make_optimizer(model, DistillConfig.from_dict(cfg))
    load_shards(out / "checkpoint", model, optimizer)
    return model, optimizer


def check_continues(one: Path, resumed: Path, steps: int) -> None:
    """The resumed run's train records are the uninterrupted run's, one per step, to rounding."""
    records = read_metrics(resumed, "train")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    reference = read_metrics(one, "train")
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [r["tokens"] for r in records] == [r["tokens"] for r in reference]


# slow: its run time under torchrun. A child was once seen aborting at exit (-6): FSDP kept the gloo
# group alive past destroy_process_group until interpreter exit; `shutdown` now frees it
# (tests/test_process_teardown.py checks that directly).
@pytest.mark.slow
def test_two_processes_save_shards_three_resume_them(tmp_path, teacher, shards):
    """2 -> 3 processes (global batch 6 = 2 x 3 = 3 x 2), with the teacher sharded too."""
    one, run = tmp_path / "one", tmp_path / "run"
    distill(sharded(one, teacher, shards, batch_size=6, shard_teacher=True))
    first = torchrun_distill(sharded(run, teacher, shards, batch_size=3, shard_teacher=True, stop_at_step=2), nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    state = trainer_state(run)
    assert (state["step"], state["world_size"], state["sharded"], state["global_batch"]) == (2, 2, True, 6)
    assert state["data"]["position"] == 12 and shard_files(run) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (run / "checkpoint" / "model.pt").exists()

    rest = torchrun_distill(sharded(run, teacher, shards, batch_size=2, shard_teacher=True, resume=True), nproc=3)
    assert rest.returncode == 0, rest.stderr[-3000:]
    state = trainer_state(run)
    assert (state["step"], state["world_size"], state["data"]["position"]) == (4, 3, 24)
    assert shard_files(run) == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]
    check_continues(one, run, 4)
    check_same_student(one, run)
    # the model folder is a normal safetensors folder, gathered at the end; the 3 processes' shards
    # of the last checkpoint, read back by one process, are exactly its weights
    model, optimizer = read_shards(run, sharded(run, teacher, shards))
    final = weights(run)
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
    assert len(optimizer.state) == sum(p.requires_grad for p in model.parameters())
    assert all(int(s["step"]) == 4 for s in optimizer.state.values())


@pytest.mark.slow
def test_three_processes_save_shards_two_resume_them(tmp_path, teacher, shards):
    one, run = tmp_path / "one", tmp_path / "run"
    distill(sharded(one, teacher, shards, batch_size=6, shard_teacher=True))
    first = torchrun_distill(sharded(run, teacher, shards, batch_size=2, stop_at_step=2, shard_teacher=True), nproc=3)
    assert first.returncode == 0, first.stderr[-3000:]
    assert shard_files(run) == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]
    rest = torchrun_distill(sharded(run, teacher, shards, batch_size=3, resume=True, shard_teacher=True), nproc=2)
    assert rest.returncode == 0, rest.stderr[-3000:]
    state = trainer_state(run)
    assert (state["step"], state["world_size"], state["data"]["position"]) == (4, 2, 24)
    check_continues(one, run, 4)
    check_same_student(one, run)


@pytest.mark.slow
def test_bf16_teacher_sharded_equals_replicated_and_resumes(tmp_path, teacher, shards):
    """Two processes, a bfloat16 teacher: sharding it changes nothing (gathering is exact), also across
    a sharded resume with the same number of processes. (Against one process a bf16 teacher's run
    differs by more than float rounding: docs/SCALE.md.)"""
    whole, run = tmp_path / "whole", tmp_path / "run"
    done = torchrun_distill(sharded(whole, teacher, shards, batch_size=3, teacher_dtype="bfloat16"), nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    common = dict(batch_size=3, teacher_dtype="bfloat16", shard_teacher=True)
    first = torchrun_distill(sharded(run, teacher, shards, stop_at_step=2, **common), nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    rest = torchrun_distill(sharded(run, teacher, shards, resume=True, **common), nproc=2)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert [r["loss"] for r in read_metrics(whole, "train")] == [r["loss"] for r in read_metrics(run, "train")]
    a, b = weights(whole), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_one_process_shards_resume_on_two(tmp_path, teacher, shards):
    """A single process writes the same format (DCP without a process group); two continue it."""
    one, run = tmp_path / "one", tmp_path / "run"
    distill(sharded(one, teacher, shards, batch_size=4))
    distill(sharded(run, teacher, shards, batch_size=4, stop_at_step=2))
    assert shard_files(run) == ["__0_0.distcp"]
    rest = torchrun_distill(sharded(run, teacher, shards, batch_size=2, resume=True), nproc=2)
    assert rest.returncode == 0, rest.stderr[-3000:]
    check_continues(one, run, 4)
    check_same_student(one, run)


def test_one_process_sharded_resume_is_bit_exact(tmp_path, teacher, shards):
    """Without a change of processes, resuming from shards continues bit for bit, like a full checkpoint."""
    one, run = tmp_path / "one", tmp_path / "run"
    distill(sharded(one, teacher, shards, batch_size=4))
    distill(sharded(run, teacher, shards, batch_size=4, stop_at_step=2))
    assert trainer_state(run)["sharded"] and shard_files(run) == ["__0_0.distcp"]
    distill(sharded(run, teacher, shards, batch_size=4, resume=True))
    a, b = weights(one), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_metrics(one, "train")] == [r["loss"] for r in read_metrics(run, "train")]


def test_sharded_checkpoint_errors(tmp_path, teacher, shards):
    from spikingmamba.training.checkpoint import load_checkpoint
    from spikingmamba.training.distributed import DistEnv

    with pytest.raises(ConfigError, match="sharded_checkpoint needs distributed fsdp"):
        distill(sharded(tmp_path / "x", teacher, shards, distributed="ddp"))
    with pytest.raises(ConfigError, match="shard_teacher needs distributed fsdp"):
        distill(distill_settings(tmp_path / "x", teacher, shard_teacher=True))
    run = tmp_path / "run"
    distill(sharded(run, teacher, shards, batch_size=4, stop_at_step=2))
    # resuming without the flag: the recipe check names it; the checkpoint itself says what it is
    with pytest.raises(ConfigError, match="sharded_checkpoint: True -> False"):
        distill(sharded(run, teacher, shards, batch_size=4, resume=True, sharded_checkpoint=False))
    with pytest.raises(UserError, match="is sharded .*resume it with --sharded-checkpoint"):
        load_checkpoint(run, torch.nn.Linear(1, 1), None, None, DistEnv(0, 1, 0, torch.device("cpu")))
    # another global batch
    with pytest.raises(ConfigError, match="global batch of 4 .* 3 x 1 x 1 = 3"):
        distill(sharded(run, teacher, shards, batch_size=3, resume=True))
    # a missing shard file: one line naming the checkpoint, the run's folder kept
    (run / "checkpoint" / "shards" / "__0_0.distcp").unlink()
    with pytest.raises(FileError, match="checkpoint"):
        distill(sharded(run, teacher, shards, batch_size=4, resume=True))


def test_shard_metadata_may_not_run_code(tmp_path, teacher, shards):
    """The metadata file is unpickled with an allow-list of DCP's own classes: anything else is refused."""
    run = tmp_path / "run"
    distill(sharded(run, teacher, shards, batch_size=4, stop_at_step=2))
    metadata = run / "checkpoint" / "shards" / ".metadata"

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    metadata.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FileError, match=r"refused to load checkpoint metadata .*builtins.print"):
        distill(sharded(run, teacher, shards, batch_size=4, resume=True))
    metadata.write_bytes(b"garbage")
    with pytest.raises(FileError, match="damaged"):
        distill(sharded(run, teacher, shards, batch_size=4, resume=True))


def test_plain_values_are_read_weights_only():
    import io

    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    from spikingmamba.training.sharded_checkpoint import SafePlanner

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    buffer = io.BytesIO()
    torch.save(Evil(), buffer)
    buffer.seek(0)
    item = ReadItem(LoadItemType.BYTE_IO, MetadataIndex("optimizer.param_groups"), torch.Size([]),
                    MetadataIndex("optimizer.param_groups"), torch.Size([]), torch.Size([]))
    with pytest.raises(FileError, match="not a plain value"):
        SafePlanner().load_bytes(item, buffer)


def test_bf16_teacher(tmp_path, teacher):
    """The teacher in bfloat16 (half its memory): the student stays float32, built from the float32
    teacher, and the distillation's KL differs from the float32 teacher's only by bf16 rounding."""
    from spikingmamba import from_pretrained

    common = dict(max_steps=2, eval_every=0, save_every=0)
    full = distill(distill_settings(tmp_path / "fp32", teacher, **common))
    half = distill(distill_settings(tmp_path / "bf16", teacher, teacher_dtype="bfloat16", **common))
    assert from_pretrained(tmp_path / "bf16").lm_head.weight.dtype == torch.float32
    assert half["first_eval"]["kl"] == pytest.approx(full["first_eval"]["kl"], rel=0.3, abs=1e-3)
    assert half["first_eval"]["teacher_ppl"] == pytest.approx(full["first_eval"]["teacher_ppl"], rel=0.05)
