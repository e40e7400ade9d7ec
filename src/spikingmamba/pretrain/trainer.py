"""Train a dense Mamba language model from scratch: `pretrain(config)` (the offline default teacher).

Orchestration only: the tokenizer (`spikingmamba.data.train_tokenizer`, trained on the train split
so that no held-out text shapes the vocabulary), the model (`SpikingMambaForCausalLM` without
neurons), next-token cross-entropy, and the loop of `spikingmamba.training`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikingmamba.data.dataset import TokenBatch
from spikingmamba.model.config import SpikingMambaConfig
from spikingmamba.model.lm import SpikingMambaForCausalLM
from spikingmamba.pretrain.config import PretrainConfig
from spikingmamba.training.distributed import DistEnv
from spikingmamba.training.loop import fit
from spikingmamba.training.losses import cross_entropy
from spikingmamba.training.run import agree, check_output, prepare_output
from spikingmamba.training.setup import data_path, load_data, main_first, run_in_processes, save_trained


@dataclass
class PretrainTask:
    """Next-token cross-entropy, for `spikingmamba.training.fit`."""

    model: SpikingMambaForCausalLM
    tokenizer: Any
    eval_at_start: bool = False
    initial_state: None = None  # built in memory, never on the meta device

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def loss(self, model: nn.Module, batch: TokenBatch):
        return cross_entropy(model(batch.input_ids).logits, batch.target_ids), {}

    @torch.no_grad()
    def eval_totals(self, model: nn.Module, batch: TokenBatch):
        n = batch.target_ids.numel()
        nll = cross_entropy(model(batch.input_ids).logits, batch.target_ids).double() * n
        return {"nll": nll, "tokens": torch.tensor(float(n), dtype=torch.float64)}

    def eval_summary(self, totals: dict[str, Any]) -> dict[str, Any]:
        loss = totals["nll"] / totals["tokens"]
        return {"heldout_loss": loss, "heldout_ppl": math.exp(loss), "eval_tokens": int(totals["tokens"])}

    def save_model(self, out: Path, full_state: dict[str, torch.Tensor] | None = None) -> None:
        save_trained(self.model, out, self.tokenizer, full_state)


def make_tokenizer(cfg: PretrainConfig):
    """The given tokenizer, the one a token shard folder was made with, or a BPE trained on the train
    split's documents (cached by content)."""
    from spikingmamba.data import load_texts, load_tokenizer, split_documents, train_tokenizer
    from spikingmamba.data.cache import default_cache_dir
    from spikingmamba.data.shards import TOKENIZER_DIR, is_shard_folder

    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    path = data_path(cfg)
    if is_shard_folder(path):
        return load_tokenizer(path / TOKENIZER_DIR)
    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, cfg.vocab_size,
                                     cfg.heldout_fraction, cfg.split_seed]).encode()).hexdigest()[:16]
    folder = default_cache_dir() / "tokenizers" / f"bpe{cfg.vocab_size}-{key}"
    if not (folder / "tokenizer.json").is_file():
        train_docs, _ = split_documents(load_texts(path), cfg.heldout_fraction, cfg.split_seed)
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tmp) / "train.txt"
            text.write_text("\n\n".join(train_docs), encoding="utf-8")
            staged = Path(tempfile.mkdtemp(prefix=".bpe-", dir=_mkdir(folder.parent)))
            train_tokenizer(text, staged, vocab_size=cfg.vocab_size)
            try:
                os.replace(staged, folder)  # atomic: a half-written tokenizer is never found
            except OSError:  # another process got there first
                shutil.rmtree(staged, ignore_errors=True)
    return load_tokenizer(folder)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_model(cfg: PretrainConfig, tokenizer) -> SpikingMambaForCausalLM:
    """A dense Mamba with Mamba's initialisation; the vocabulary padded to a multiple of 8."""
    eos = tokenizer.eos_token_id
    config = SpikingMambaConfig(
        vocab_size=8 * math.ceil(len(tokenizer) / 8), hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, state_size=cfg.state_size, expand=cfg.expand,
        conv_kernel=cfg.conv_kernel, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos)
    return SpikingMambaForCausalLM(config).train()


def pretrain(config: PretrainConfig | dict | str | Path) -> dict[str, Any]:
    """Train a dense Mamba LM from scratch; return the result (also written to result.json).

    `config` is a `PretrainConfig`, a dict of its fields, or a YAML file. Runs under `torchrun` too.
    """
    return run_in_processes(PretrainConfig, config, _pretrain)


def _pretrain(cfg: PretrainConfig, env: DistEnv) -> dict[str, Any]:
    agree(lambda: check_output(cfg, env.world_size), env)
    if cfg.resume and cfg.tokenizer is None:
        from spikingmamba.data import load_tokenizer

        tokenizer = agree(lambda: load_tokenizer(cfg.out), env)
    else:
        tokenizer = main_first(lambda: make_tokenizer(cfg), env)
    train, heldout = load_data(cfg, tokenizer, env)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer)
    out = prepare_output(cfg, env)
    if env.is_main and not cfg.resume:
        tokenizer.save_pretrained(str(out))
    n_params = sum(p.numel() for p in model.parameters())
    describe = {"parameters": n_params, "vocab_size": model.config.vocab_size, "train_rows": len(train),
                "heldout_rows": len(heldout), "train_tokens_available": train.num_tokens}
    return fit(PretrainTask(model, tokenizer), cfg, train, heldout, env, out, describe)
