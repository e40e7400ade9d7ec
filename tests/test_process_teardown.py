"""A distributed run frees its process group when it ends, not at interpreter exit.

FSDP keeps the group alive past `destroy_process_group` (the DeviceMesh and DTensor caches hold it,
the sharded modules sit in reference cycles); its gloo threads then met interpreter finalisation and
a torchrun child now and then aborted at exit ("terminate called without an active exception").
This checks the cause directly: after `shutdown`, no gloo thread is left in any process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_distill_ddp import free_port

PROBE = '''
import glob
import sys
import torch
from spikingmamba import SpikingMambaConfig, SpikingMambaForCausalLM
from spikingmamba.training.distributed import init_distributed, shard_frozen, shutdown, wrap_model

def threads():
    return sorted(open(t + "/comm").read().strip() for t in glob.glob("/proc/self/task/*"))

def train(env):
    """A step of an FSDP student against an FSDP-sharded teacher; the models are gone on return, as
    at the end of a training entry point. Returns the thread names seen while the group was in use."""
    torch.manual_seed(0)
    config = SpikingMambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4)
    student = wrap_model(SpikingMambaForCausalLM(config), env, "fsdp")
    teacher = shard_frozen(SpikingMambaForCausalLM(config).requires_grad_(False), env)
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        target = teacher(ids).logits
    (student(ids).logits - target).square().mean().backward()
    from torch.distributed.checkpoint.state_dict import get_state_dict
    get_state_dict(student, torch.optim.AdamW(student.parameters()))  # DTensor ops fill their caches
    return threads()

env = init_distributed("cpu")
before = train(env)
shutdown(env)
# one write per line: unbuffered (PYTHONUNBUFFERED), print() writes the text and its newline apart and
# the two ranks' lines could interleave on the shared pipe
sys.stdout.write(f"rank {env.rank} before {before} after {threads()}\\n")
sys.stdout.flush()
'''


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_fsdp_process_group_freed_at_shutdown(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(probe)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(line for line in run.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, run.stdout
    for line in lines:
        before, after = line.split(" before ")[1].split(" after ")
        assert "gloo" in before, line   # the probe saw the group's threads while it was in use
        assert "gloo" not in after, line
