"""Tiny teachers and run settings shared by the training and distillation tests."""

from __future__ import annotations

from pathlib import Path

import torch

SAMPLE = Path(__file__).parent / "data" / "sample_corpus.txt"
VOCAB = 320


def make_teacher(folder: Path, hidden: int = 16, layers: int = 2, state: int = 4, vocab: int = VOCAB) -> Path:
    """A random dense teacher with a BPE tokenizer trained on the sample corpus, saved to `folder`.

    The (untied) LM head is scaled up so that the teacher's next-token distributions are far from
    uniform and depend on what the blocks compute: the KL term then has something to teach.
    """
    from spikingmamba import SpikingMambaConfig, SpikingMambaForCausalLM
    from spikingmamba.data import train_tokenizer

    train_tokenizer(SAMPLE, folder, vocab_size=vocab)
    torch.manual_seed(0)
    model = SpikingMambaForCausalLM(SpikingMambaConfig(vocab_size=vocab, hidden_size=hidden,
                                                       num_hidden_layers=layers, state_size=state,
                                                       tie_word_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    model.save_pretrained(folder)
    return folder


def run_settings(out: Path, **overrides) -> dict:
    """A few-second run: short sequences, tiny batches, one thread, no progress bar."""
    settings = dict(out=str(out), data=str(SAMPLE), seq_len=16, batch_size=2, max_steps=6, warmup_steps=1,
                    eval_every=3, eval_rows=4, log_every=1, save_every=3, num_threads=1, progress=False)
    settings.update(overrides)
    return settings


def distill_settings(out: Path, teacher: Path, **overrides) -> dict:
    return run_settings(out, **{"teacher": str(teacher), "calibration_tokens": 64, "lr": 1e-3, **overrides})


def pretrain_settings(out: Path, tokenizer: Path, **overrides) -> dict:
    return run_settings(out, tokenizer=str(tokenizer), hidden_size=16, num_layers=2, state_size=4, **overrides)


def train_losses(out: Path) -> list[tuple[int, float]]:
    from spikingmamba.training.metrics import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(out, "train")]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from spikingmamba.model.loading import model_folder

    return load_file(str(model_folder(folder) / "model.safetensors"))
