"""Selective-scan backends side by side: forward, forward + backward, and what each keeps for the backward.

    python benchmarks/bench_scan.py [--batch 8 --length 512 --d-inner 512 --d-state 16 --threads 2]

Timed, interleaved in one run: "reference" (sequential oracle, autograd through the loop; leave it
out with --skip-reference at large shapes), "loop" (fused torch loop, hand-written backward, the
previous CPU default), "cpu" (compiled kernel, chunked recomputation).
Memory, at --memory-shape (default: the mamba-130m scan, batch 8 x 2048, d_inner 1536, N 16): the
bytes each backend saves for its backward beyond its inputs, against storing every state
(b, l, d_inner, N). Issue 12 target: cpu <= 1/8 of every state. Issue 2 bar: loop >= 10x reference.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import interleaved_median, print_table
from spikingmamba.ops.selective_scan import selective_scan
from spikingmamba.runtime import configure


def scan_leaves(b: int, l: int, d: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(b, l, d, generator=g), F.softplus(torch.randn(b, l, d, generator=g)),
              -torch.exp(torch.randn(d, n, generator=g)), torch.randn(b, l, n, generator=g),
              torch.randn(b, l, n, generator=g), torch.randn(d, generator=g)]
    return [t.requires_grad_() for t in leaves]


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
    args = p.parse_args()
    configure(args.threads)
    b, l, d, n = args.batch, args.length, args.d_inner, args.d_state
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
