"""Compiled C++ kernels: each `.cpp` file of `ops/` built into a shared library once per machine,
cached, and loaded with ctypes (after torch, so it shares torch's OpenMP runtime).

The library is built with the system C++ compiler (`$CXX`, default `g++`) the first time it is
needed and cached under `$SPIKINGMAMBA_CACHE/<name>/` (default `~/.cache/spikingmamba/<name>/`),
keyed by a hash of the source (and the `.h` files beside it), the flags, the compiler and the CPU: a machine compiles it once, and a
changed source or another CPU builds a new one. Building is atomic (a temporary folder, then a
rename), so concurrent processes do not clash. Where it cannot be built or loaded, `load()` warns once
(`RuntimeWarning`, naming the slower path that runs instead) and returns None from then on.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

LINK_FLAGS = ("-shared", "-fopenmp")   # no -ffast-math here: it would link crtfastmath (process-wide FTZ)


# Elements of a memory-bound pass per thread below which a kernel runs on fewer threads. A parallel
# region ends when every one of its threads has been scheduled and done its share: on an idle machine
# that wait is negligible, but on cores shared with other jobs it is a scheduling delay per region,
# far longer than such a pass takes on one thread (docs/PERFORMANCE.md). So the elementwise kernels
# (neuron, conv1d, RMSNorm, losses, AdamW) take a second thread only for large passes.
ELEMENTWISE_WORK_PER_THREAD = 1 << 20


def threads_for(work: int, min_work_per_thread: int) -> int:
    """Threads for a kernel call: torch's thread count, but at least `min_work_per_thread` elements each."""
    return max(1, min(torch.get_num_threads(), work // min_work_per_thread))


def dtype_suffix(dtype: torch.dtype) -> str:
    """The exported-symbol suffix of a kernel compiled for `dtype` (float64 or float32)."""
    return "f64" if dtype == torch.float64 else "f32"


def cache_root() -> Path:
    return Path(os.environ.get("SPIKINGMAMBA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spikingmamba"))


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


class NativeLibrary:
    """The C++ source file `ops/<name>.cpp`, compiled with `compile_flags`; `declare` sets the ctypes
    signatures of its functions; `title` and `fallback` name it and what runs where it is unavailable
    (in the warning)."""

    def __init__(self, name: str, title: str, compile_flags: tuple[str, ...],
                 declare: Callable[[ctypes.CDLL], None], fallback: str):
        self.name, self.title, self.compile_flags = name, title, compile_flags
        self.declare, self.fallback = declare, fallback
        self.source = Path(__file__).with_name(f"{name}.cpp")
        self.loaded: dict = {}                    # "lib": the loaded CDLL, or None after a failure

    def cache_dir(self) -> Path:
        return cache_root() / self.name

    def _build_key(self, compiler: str) -> str:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
        h = hashlib.sha256()
        for header in sorted(self.source.parent.glob("*.h")):          # what a source may #include
            h.update(header.read_bytes())
        for part in (self.source.read_bytes(), " ".join(self.compile_flags + LINK_FLAGS).encode(), version.encode(),
                     platform.machine().encode(), _cpu_flags().encode()):
            h.update(part)
        return h.hexdigest()[:16]

    def build(self) -> Path:
        """Compile the source into the cache (once per machine); returns the library's path."""
        compiler = os.environ.get("CXX", "g++")
        target = self.cache_dir() / f"lib{self.name}-{self._build_key(compiler)}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:     # concurrent builders never clash
            obj, lib = os.path.join(tmp, f"{self.name}.o"), os.path.join(tmp, target.name)
            for cmd in ([compiler, *self.compile_flags, "-c", str(self.source), "-o", obj],
                        [compiler, *LINK_FLAGS, obj, "-o", lib]):
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
            os.replace(lib, target)                                      # atomic: readers see all or nothing
        return target

    def load(self) -> ctypes.CDLL | None:
        """The compiled library, built on first use; None (after one warning) where it cannot be built."""
        if "lib" not in self.loaded:
            try:
                lib = ctypes.CDLL(str(self.build()))
                self.declare(lib)
                self.loaded["lib"] = lib
            except Exception as err:   # no compiler, compile error, unloadable library: all mean "fall back"
                warnings.warn(f"{self.title} unavailable, using {self.fallback}: {err}",
                              RuntimeWarning, stacklevel=3)
                self.loaded["lib"] = None
        return self.loaded["lib"]
