"""What every entry point sets up before it touches a model: CPU threads, denormal flushing, the
device and the dtype. Every CLI verb, script and benchmark calls `configure` once, first.

Threads: by default torch runs on every core this process may use (its CPU affinity, which
respects `taskset` and container limits), divided among the processes that `torchrun` starts on
this machine (`LOCAL_WORLD_SIZE`). `num_threads` overrides it.

Denormals: the decaying states of the selective scan reach subnormal floats, which CPUs process
far more slowly than normal ones; flushing them to zero changes no result at the precision we print.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from spikingmamba.config import Config, option
from spikingmamba.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), or all the machine's cores where the
    platform has no affinity call."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:              # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """Every available core, shared evenly by the processes torchrun runs on this machine."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, available_cores() // local_processes)


def configure(num_threads: int = 0) -> int:
    """Set torch's CPU threads (0: `default_threads()`) and flush denormals; return the threads."""
    if num_threads < 0:
        raise ConfigError(f"num_threads must be >= 0 (0: every available core), got {num_threads}")
    torch.set_flush_denormal(True)
    torch.set_num_threads(num_threads or default_threads())
    return torch.get_num_threads()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" (CUDA when torch sees a GPU, else the CPU), "cpu" or "cuda" (the local rank's GPU)."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but torch sees no CUDA device; use device cpu (or auto)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype named `name` (a key of `DTYPES`)."""
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


@dataclass
class RuntimeConfig(Config):
    """The machine options of a verb that runs a model: device and CPU threads."""

    device: str = option("auto", 'device: "auto" (cuda when available), "cpu" or "cuda"', choices=DEVICES,
                         group="machine")
    num_threads: int = option(0, "CPU threads (0: every available core)", ge=0, group="machine",
                              aliases=("--threads",))

    def setup(self) -> torch.device:
        """`configure` the process and return the device (a `ConfigError` for cuda without CUDA)."""
        configure(self.num_threads)
        return resolve_device(self.device)


@dataclass
class ModelRuntimeConfig(RuntimeConfig):
    """`RuntimeConfig` plus the dtype the model's parameters are loaded in."""

    dtype: str = option("float32", "parameter dtype: float32, float64, bfloat16 or float16", choices=tuple(DTYPES),
                        group="machine")

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)
