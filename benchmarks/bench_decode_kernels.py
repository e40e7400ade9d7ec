"""Versions of the compiled decode step (`ops/cpu_decode.cpp`) side by side in one process, by CPU time.

    nice -n 10 python benchmarks/bench_decode_kernels.py --baseline REV [--variant NAME=FILE.cpp ...] \
        --rates 0.05,0.1,0.2 --repeats 30 --tokens 8

The mamba-130m shape with random weights, every site spiking, batch 1, one thread (as `spikingmamba
bench-decode --shape 130m --sites all --batch-sizes 1 --threads 1`). One dense and one sparse deployed
decoder per rate; each kernel version (this tree's, git revision REV's `cpu_decode.cpp` and headers,
any --variant source; all built into a temporary folder with today's flags and the same C entry points
and structs) steps them in turn, chunk by chunk (interleaved, so load from other jobs hits all alike).
Reports the median CPU (and wall) ms per step, the speed-up against the fastest dense decoder of all
versions, and the efficiency against the bytes bound of `spikingmamba.inference.bench` (the spike
counts measured while decoding).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from spikingmamba import to_spiking
from spikingmamba.inference.bench import MB, bytes_per_step, nonzero_per_step, random_model, set_firing_rate
from spikingmamba.inference.deploy import deploy
from spikingmamba.ops import cpu_decode
from spikingmamba.neurons.sites import resolve_sites
from spikingmamba.ops.native import LINK_FLAGS

OPS = Path(cpu_decode.__file__).parent


def build(source_text: str, folder: Path, name: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """A decode-step source (headers: this tree's, unless already in `folder`) built and loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    for header in OPS.glob("*.h"):
        if not (folder / header.name).exists():
            (folder / header.name).write_text(header.read_text())
    src, obj, lib = folder / f"{name}.cpp", folder / f"{name}.o", folder / f"lib{name}.so"
    src.write_text(source_text)
    compiler = os.environ.get("CXX", "g++")
    for cmd in ([compiler, *cpu_decode.COMPILE_FLAGS, *defines, "-c", str(src), "-o", str(obj)],
                [compiler, *LINK_FLAGS, str(obj), "-o", str(lib)]):
        subprocess.run(cmd, check=True)
    loaded = ctypes.CDLL(str(lib))
    cpu_decode._declare(loaded)
    return loaded


def revision_library(rev: str, root: Path) -> ctypes.CDLL:
    folder = Path(tempfile.mkdtemp(prefix=f"decode-{rev}-"))
    rel = OPS.relative_to(root)
    for header in OPS.glob("*.h"):
        shown = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{rel / header.name}"], capture_output=True,
                               text=True)
        if shown.returncode == 0:
            (folder / header.name).write_text(shown.stdout)
    text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{rel / 'cpu_decode.cpp'}"], capture_output=True,
                          text=True, check=True).stdout
    return build(text, folder, "cpu_decode")


class Run:
    def __init__(self, decoder, lib, ids: torch.Tensor, warmup: int):
        self.decoder, self.lib, self.ids, self.t = decoder, lib, ids, 0
        self.state = decoder.init_state(1)
        self.chunk(warmup)

    def chunk(self, steps: int) -> tuple[float, float]:
        fused = self.decoder._fused
        fused._lib = self.lib
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            _, self.state = self.decoder.step(self.ids[self.t % self.ids.shape[0]], self.state)
            self.t += 1
        return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", metavar="REV", action="append", default=[], help="a git revision's kernel")
    p.add_argument("--variant", metavar="NAME=FILE", action="append", default=[],
                   help="a kernel source file (optionally FILE:-DFLAG,-DFLAG)")
    p.add_argument("--no-tree", action="store_true", help="leave out this tree's kernel")
    p.add_argument("--rates", default="0.05,0.1,0.2")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(subprocess.run(["git", "-C", str(OPS), "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True, check=True).stdout.strip())
    libs: dict[str, ctypes.CDLL] = {}
    for rev in args.baseline:
        libs[f"at {rev}"] = revision_library(rev, root)
    if not args.no_tree:
        libs["this tree"] = cpu_decode.library()
    for spec in args.variant:
        name, path = spec.split("=", 1)
        path, _, flags = path.partition(":")
        defines = tuple(f for f in flags.split(",") if f)
        libs[name] = build(Path(path).read_text(), Path(tempfile.mkdtemp(prefix="decode-variant-")), "cpu_decode",
                           defines)
    rates = [float(r) for r in args.rates.split(",")]
    dense = random_model("130m", 0)
    student = to_spiking(dense, levels=4, sites=resolve_sites(("all",), "--sites")).eval()
    g = torch.Generator().manual_seed(0)
    vocab = dense.config.vocab_size
    calib = torch.randint(0, vocab, (4, 64), generator=g)
    ids = torch.randint(0, vocab, (args.warmup + args.tokens * args.repeats, 1), generator=g)
    dense_dec = deploy(dense)
    decoders = {"dense": dense_dec}
    for r in rates:
        set_firing_rate(student, r, calib)
        decoders[f"{r:g}"] = deploy(student, mode="sparse")
    print(f"# load {os.getloadavg()}", flush=True)
    runs = {(k, d): Run(dec, lib, ids, args.warmup) for k, lib in libs.items() for d, dec in decoders.items()}
    for d, dec in decoders.items():
        if d != "dense":
            dec.reset_counts()
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(run.chunk(args.tokens))
    print(f"# load {os.getloadavg()}", flush=True)
    mb = {"dense": bytes_per_step(dense_dec, 1) / MB}
    for d, dec in decoders.items():
        if d != "dense":
            mb[d] = bytes_per_step(dec, 1, nonzero_per_step(dec, 1)) / MB
    cpu = {key: statistics.median(c for _, c in ts) / args.tokens * 1e3 for key, ts in times.items()}
    wall = {key: statistics.median(w for w, _ in ts) / args.tokens * 1e3 for key, ts in times.items()}
    best = min(cpu[(k, "dense")] for k in libs)
    best_wall = min(wall[(k, "dense")] for k in libs)
    sparse = [d for d in decoders if d != "dense"]
    print("| kernel | dense CPU ms | " + " | ".join(f"{d} CPU ms (wall)" for d in sparse) +
          " | efficiency CPU " + " / ".join(sparse) + " | efficiency wall |")
    print("|---" * (3 + len(sparse)) + "|---|")
    for k in libs:
        eff = [best / cpu[(k, d)] / (mb["dense"] / mb[d]) for d in sparse]
        eff_w = [best_wall / wall[(k, d)] / (mb["dense"] / mb[d]) for d in sparse]
        print(f"| {k} | {cpu[(k, 'dense')]:.2f} ({wall[(k, 'dense')]:.2f}) | " +
              " | ".join(f"{cpu[(k, d)]:.3f} ({wall[(k, d)]:.3f})" for d in sparse) + " | " +
              " / ".join(f"{e:.0%}" for e in eff) + " | " + " / ".join(f"{e:.0%}" for e in eff_w) + " |")
    print("bytes bound: " + " / ".join(f"{mb['dense'] / mb[d]:.2f}x ({mb[d]:.1f} MB)" for d in sparse) +
          f"; dense {mb['dense']:.1f} MB")


if __name__ == "__main__":
    main()
