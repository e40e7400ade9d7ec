"""Helpers shared by the benchmark scripts: timing by interleaved repetitions, table printing,
the frozen teacher of the distillation benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_median(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each fn, running them in turn (A B C A B C ...) so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def frozen_teacher(args):
    """The bundled (or named) teacher with `--teacher`, else a random one of `--vocab/--d-model/--layers`."""
    import spikingmamba
    from spikingmamba.assets import resolve_teacher

    if args.teacher:
        teacher = spikingmamba.from_pretrained(resolve_teacher(args.teacher))
    else:
        teacher = spikingmamba.SpikingMambaForCausalLM(spikingmamba.SpikingMambaConfig(
            vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers))
    return teacher.requires_grad_(False).eval()
