"""Selective-scan backends side by side: forward, forward + backward, and what each keeps for the backward.

    python benchmarks/bench_scan.py [--batch 8 --length 512 --d-inner 512 --d-state 16 --threads 2]

Timed, interleaved in one run: "reference" (sequential oracle, autograd through the loop; leave it
out with --skip-reference at large shapes), "loop" (fused torch loop, hand-written backward, the
previous CPU default), "cpu" (compiled kernel, chunked recomputation).
Memory, at --memory-shape (default: the mamba-130m scan, batch 8 x 2048, d_inner 1536, N 16): the
bytes each backend saves for its backward beyond its inputs, against storing every state
(b, l, d_inner, N). Issue 12 target: cpu <= 1/8 of every state. Issue 2 bar: loop >= 10x reference.
With --baseline REV: the compiled kernel of git revision REV (its cpu_scan.cpp and headers, built into
a temporary folder with today's flags; REV must have today's C entry points) against this tree's, in
one process, interleaved, called as the mixer calls it (softplus of dt, skip D x, gate silu(z), A_log):
forward and forward + backward.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import interleaved_median, print_table
from spikingmamba.ops import cpu_scan
from spikingmamba.ops.native import LINK_FLAGS
from spikingmamba.ops.selective_scan import selective_scan
from spikingmamba.runtime import configure


def scan_leaves(b: int, l: int, d: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(b, l, d, generator=g), F.softplus(torch.randn(b, l, d, generator=g)),
              -torch.exp(torch.randn(d, n, generator=g)), torch.randn(b, l, n, generator=g),
              torch.randn(b, l, n, generator=g), torch.randn(d, generator=g)]
    return [t.requires_grad_() for t in leaves]


def baseline_library(rev: str) -> ctypes.CDLL:
    """The compiled scan of git revision `rev`, built into a temporary folder with today's flags."""
    ops = Path(cpu_scan.__file__).parent
    root = Path(subprocess.run(["git", "-C", str(ops), "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True, check=True).stdout.strip())
    folder = Path(tempfile.mkdtemp(prefix="scan-baseline-"))
    for name in ["cpu_scan.cpp", *(h.name for h in ops.glob("*.h"))]:
        shown = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{(ops / name).relative_to(root)}"],
                               capture_output=True, text=True)
        if shown.returncode == 0:                 # a header the revision did not have yet is left out
            (folder / name).write_text(shown.stdout)
    for cmd in (["g++", *cpu_scan.COMPILE_FLAGS, "-c", "cpu_scan.cpp", "-o", "cpu_scan.o"],
                ["g++", *LINK_FLAGS, "cpu_scan.o", "-o", "libscan.so"]):
        subprocess.run(cmd, cwd=folder, check=True)
    lib = ctypes.CDLL(str(folder / "libscan.so"))
    cpu_scan._declare(lib)
    return lib


def compare_with_baseline(rev: str, b: int, l: int, d: int, n: int, repeats: int) -> None:
    """REV's kernel against this tree's, as the mixer calls it: fwd and fwd + bwd, interleaved."""
    g = torch.Generator().manual_seed(2)
    x, dt, B, C = (torch.randn(shape, generator=g) for shape in ((b, l, d), (b, l, d), (b, l, n), (b, l, n)))
    dt = dt - 4                                                   # softplus(dt) around 0.02, as at init
    A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)
    D, z = torch.ones(d), torch.randn(b, l, 2 * d, generator=g)[..., d:]     # z: a strided view, as in the mixer
    leaves = [t.requires_grad_() for t in (x, dt, A_log, B, C, D)]
    grad = torch.randn(b, l, d, generator=g)
    libs = {f"cpu at {rev}": baseline_library(rev), "cpu (this tree)": cpu_scan.library()}
    saved = dict(cpu_scan.LIBRARY.loaded)

    def call(lib, backward):
        def fn():
            cpu_scan.LIBRARY.loaded["lib"] = lib
            for t in leaves:
                t.grad = None
            with torch.set_grad_enabled(backward):
                y, _ = selective_scan(*leaves, backend="cpu", z=z, delta_softplus=True, A_is_log=True)
            if backward:
                y.backward(grad)
        return fn

    try:
        contenders = {(name, part): call(lib, part == "fwd+bwd") for name, lib in libs.items()
                      for part in ("fwd", "fwd+bwd")}
        times = interleaved_median(contenders, repeats, warmup=1)
    finally:
        cpu_scan.LIBRARY.loaded.clear()
        cpu_scan.LIBRARY.loaded.update(saved)
    first = next(iter(libs))
    rows = [(name, f"{times[(name, 'fwd')]:.4f}", f"{times[(name, 'fwd+bwd')]:.4f}",
             f"{(times[(name, 'fwd+bwd')] - times[(name, 'fwd')]) / times[(name, 'fwd')]:.2f}",
             f"{times[(first, 'fwd')] / times[(name, 'fwd')]:.2f}x",
             f"{times[(first, 'fwd+bwd')] / times[(name, 'fwd+bwd')]:.2f}x") for name in libs]
    print_table(f"compiled scan as the mixer calls it (softplus, D, gate, A_log), batch {b} x length {l}, d_inner {d}, "
                f"N {n} (median of {repeats})", rows,
                ("kernel", "fwd s", "fwd+bwd s", "bwd / fwd", f"fwd speed-up vs {rev}", f"fwd+bwd speed-up vs {rev}"))


def saved_bytes(backend: str, leaves: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the scan's backward, not counting the inputs."""
    inputs = {t.untyped_storage().data_ptr() for t in leaves}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in inputs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = selective_scan(*leaves, backend=backend)
    del y
    return sum(storages.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--d-inner", type=int, default=512)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--memory-shape", default="8,2048,1536,16", help="b,l,d_inner,N for the memory table")
    p.add_argument("--baseline", metavar="REV", help="only compare the compiled kernel of git revision REV with this "
                                                     "tree's (see above)")
    args = p.parse_args()
    configure(args.threads)
    b, l, d, n = args.batch, args.length, args.d_inner, args.d_state
    if args.baseline:
        compare_with_baseline(args.baseline, b, l, d, n, args.repeats)
        return
    leaves = scan_leaves(b, l, d, n)
    grad = torch.randn(b, l, d, generator=torch.Generator().manual_seed(1))
    backends = ("loop", "cpu") if args.skip_reference else ("reference", "loop", "cpu")

    def forward(backend):
        def fn():
            with torch.no_grad():
                selective_scan(*leaves, backend=backend)
        return fn

    def forward_backward(backend):
        def fn():
            for t in leaves:
                t.grad = None
            y, _ = selective_scan(*leaves, backend=backend)
            y.backward(grad)
        return fn

    contenders = {}
    for name in backends:
        contenders[(name, "fwd")] = forward(name)
        contenders[(name, "fwd+bwd")] = forward_backward(name)
    times = interleaved_median(contenders, args.repeats, warmup=1)
    rows = [(name, f"{times[(name, 'fwd')]:.4f}", f"{times[('loop', 'fwd')] / times[(name, 'fwd')]:.2f}x",
             f"{times[(name, 'fwd+bwd')]:.4f}", f"{times[('loop', 'fwd+bwd')] / times[(name, 'fwd+bwd')]:.2f}x")
            for name in backends]
    print_table(f"selective scan, batch {b} x length {l}, d_inner {d}, N {n}, {args.threads} threads "
                f"(median of {args.repeats})", rows,
                ("backend", "fwd s", "fwd speed-up vs loop", "fwd+bwd s", "fwd+bwd speed-up vs loop"))

    mb, ml, md, mn = (int(v) for v in args.memory_shape.split(","))
    big = scan_leaves(mb, ml, md, mn)
    every_state = mb * ml * md * mn * big[0].element_size()
    rows = [("every state (b, l, d_inner, N)", f"{every_state / 2**20:,.1f}", "1")]
    for name in ("loop", "cpu"):
        kept = saved_bytes(name, big)
        rows.append((name, f"{kept / 2**20:,.1f}", f"1/{every_state / kept:.1f}"))
    print_table(f"saved for the backward beyond the inputs, batch {mb} x length {ml}, d_inner {md}, N {mn}, "
                f"float32", rows, ("backend", "MiB", "fraction of every state"))


if __name__ == "__main__":
    main()
