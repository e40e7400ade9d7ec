"""Selective-scan backends alone, forward + backward (issue 2 bar: fast >= 10x the sequential reference).

    python benchmarks/bench_scan.py [--batch 8 --length 512 --d-inner 512 --d-state 16 --threads 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import interleaved_median, print_table
from spikingmamba.ops.selective_scan import selective_scan
from spikingmamba.runtime import configure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--d-inner", type=int, default=512)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    configure(args.threads)
    g = torch.Generator().manual_seed(0)
    b, l, d, n = args.batch, args.length, args.d_inner, args.d_state
    leaves = [torch.randn(b, l, d, generator=g), F.softplus(torch.randn(b, l, d, generator=g)),
              -torch.exp(torch.randn(d, n, generator=g)), torch.randn(b, l, n, generator=g),
              torch.randn(b, l, n, generator=g), torch.randn(d, generator=g)]
    leaves = [t.requires_grad_() for t in leaves]
    grad = torch.randn(b, l, d, generator=g)

    def run(backend):
        def fn():
            for t in leaves:
                t.grad = None
            y, _ = selective_scan(*leaves, backend=backend)
            y.backward(grad)
        return fn

    times = interleaved_median({"reference": run("reference"), "loop": run("loop"), "cpu": run("cpu")}, args.repeats, warmup=1)
    rows = [(name, f"{t:.3f}", f"{times['reference'] / t:.1f}x") for name, t in times.items()]
    print_table(f"selective scan fwd+bwd, batch {b} x length {l}, d_inner {d}, N {n}, {args.threads} threads "
                f"(median of {args.repeats})", rows, ("backend", "seconds", "speed-up vs reference"))


if __name__ == "__main__":
    main()
