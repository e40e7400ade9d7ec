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
    yield
    torch.set_num_threads(1)        # a CLI verb run in-process takes every core; later tests keep one


def make_tokenizer(vocab_size=300):
    """A byte-level BPE trained on the sample corpus (throwaway; for tiny models)."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = Path(__file__).parent / "data" / "sample_corpus.txt"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus.read_text(encoding="utf-8").splitlines()[:2000], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_dense_and_student(root):
    """`root/dense` (a tiny random SpikingMamba without neurons), `root/student` (its calibrated
    D = 4 student, the paper's sites) and `root/student_all` (the same with a neuron at every site),
    each saved with a `make_tokenizer()` tokenizer; returns root."""
    from pathlib import Path

    import spikingmamba
    from spikingmamba.utils.io import save_model

    corpus = Path(__file__).parent / "data" / "sample_corpus.txt"
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = spikingmamba.SpikingMambaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                             state_size=8, initializer_range=0.2)
    dense = spikingmamba.SpikingMambaForCausalLM(config).eval()
    calib = torch.tensor(tokenizer(corpus.read_text(encoding="utf-8")[:4000])["input_ids"][:256]).view(4, -1)
    student = spikingmamba.to_spiking(dense, levels=4, calibration_ids=calib).eval()
    save_model(dense, root / "dense", tokenizer=tokenizer)
    save_model(student, root / "student", tokenizer=tokenizer)
    every = spikingmamba.to_spiking(dense, levels=4, sites="all", calibration_ids=calib).eval()
    save_model(every, root / "student_all", tokenizer=tokenizer)
    return root


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
