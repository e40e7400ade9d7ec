"""Shared fixtures: an isolated environment (nothing written to $HOME, no hub) and tiny checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined (at import of spikingmamba.ops.triton_scan,
# which only the "triton" backend triggers): set here, before any test imports it, the kernels run
# in Triton's CPU interpreter on machines without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # Tiny models: per-op work is too small to split over threads; one thread is faster and
    # immune to other jobs on a shared 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "env"
    for var, sub in (("HF_HOME", "hf"), ("HF_DATASETS_CACHE", "datasets"), ("MPLCONFIGDIR", "mpl"),
                     ("SPIKINGMAMBA_CACHE", "spikingmamba")):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)


def make_hf_mamba(tmp_path, name="hf", **overrides):
    """Save a random transformers MambaForCausalLM (float32) and return (folder, model)."""
    from transformers import MambaConfig, MambaForCausalLM

    cfg = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2)
    cfg.update(overrides)
    model = MambaForCausalLM(MambaConfig(**cfg)).eval()
    # random non-trivial SSM parameters so the test exercises more than the init values
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.D.normal_()
            layer.norm.weight.uniform_(0.5, 1.5)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def hf_mamba(tmp_path):
    return make_hf_mamba(tmp_path)
