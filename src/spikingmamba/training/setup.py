"""Shared steps of the training entry points: the config argument, the data, the final model folder."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from spikingmamba.errors import ConfigError
from spikingmamba.training.config import CorpusConfig, TrainConfig
from spikingmamba.training.distributed import DistEnv
from spikingmamba.training.run import agree

C = TypeVar("C", bound=TrainConfig)
T = TypeVar("T")


def resolve_config(cls: type[C], config: C | dict[str, Any] | str | Path) -> C:
    """A config object, a dict of its fields, or a YAML file -> a validated `cls`."""
    if isinstance(config, cls):
        config.validate()
        return config
    if isinstance(config, dict):
        return cls.from_dict(config)
    if isinstance(config, (str, Path)):
        return cls.load(config)
    raise ConfigError(f"expected a {cls.__name__}, a dict or a YAML path, got {type(config).__name__}")


def run_in_processes(cls: type[C], config: C | dict[str, Any] | str | Path,
                     body: Callable[[C, DistEnv], T]) -> T:
    """Resolve `config` into a `cls`, join the process group (under torchrun), run `body(cfg, env)`,
    and leave the group whatever happens: the shared shape of every training entry point."""
    from spikingmamba.training.distributed import shutdown
    from spikingmamba.training.run import output_locked, setup_process

    cfg = resolve_config(cls, config)
    env = setup_process(cfg)
    try:
        with output_locked(cfg.out, env):
            return body(cfg, env)
    finally:
        shutdown(env)


def data_path(cfg: CorpusConfig) -> Path:
    if cfg.data == "default":
        from spikingmamba.data import fetch_default_corpus

        return fetch_default_corpus()
    return Path(cfg.data)


def load_data(cfg: CorpusConfig, tokenizer, env: DistEnv):
    """(train, held-out) packed datasets. The main process reads, tokenises and caches first; the
    others then read the cache (no duplicate tokenising, no race on the cache file)."""
    from spikingmamba.data import build_datasets

    def build():
        return build_datasets(data_path(cfg), tokenizer, cfg.seq_len, cfg.heldout_fraction, cfg.split_seed)

    return main_first(build, env)


def main_first(fn: Callable[[], T], env: DistEnv) -> T:
    """`fn()` on the main process, then on the others (e.g. to fill a cache the others then read).
    Both rounds are collective, so a UserError anywhere stops every process."""
    first = agree(lambda: fn() if env.is_main else None, env)
    rest = agree(lambda: None if env.is_main else fn(), env)
    return first if env.is_main else rest


def save_trained(model, out: Path, tokenizer, full_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the trained model (with SGC off) and its tokenizer as a loadable folder.

    With FSDP, `model` is sharded, so a fresh copy is built from `full_state` and saved instead.
    """
    from spikingmamba.model.lm import SpikingMambaForCausalLM
    from spikingmamba.utils.io import save_model

    if full_state is not None:
        fresh = SpikingMambaForCausalLM(model.config)
        fresh.load_state_dict(full_state)
        model = fresh
    if model.is_spiking:
        model.set_sgc(0.0)
    save_model(model, out, tokenizer=tokenizer)
