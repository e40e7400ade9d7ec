"""Distillation step: today's CPU step vs the step as issue 12 found it, and the step vs its matrix products.

    python benchmarks/bench_train_step.py [--teacher default] [--batch 8 --length 128 --levels 4 --threads 2]

One full optimiser step of `spikingmamba distill` (teacher forward, student forward + backward with
KL + hidden-state matching, SGC on, AdamW; `DistillTask.loss` as the trainer runs it), at the default
teacher's shape (random weights of that shape unless --teacher is given), timed interleaved in one
run, each variant on its own copy of the student and optimiser:
  - "cpu": what training runs now (compiled scan, compiled neurons, fused AdamW);
  - "loop": the same with the per-timestep "loop" scan;
  - "issue-12 baseline": the step as issue 12 measured it: "loop" scan, the neurons in torch ops
    (`silif_ref`, by hiding the compiled neuron for that variant), torch's per-tensor AdamW;
  - profiled (torch profiler, --profile-steps steps of "cpu"): step time / time in the matrix products
    (self time of aten::mm, addmm, bmm, baddbmm, addbmm, mv, addmv, dot: forward and backward; the
    wrappers aten::linear / matmul have no kernels of their own), and the operators that take the most.
Issue 12 targets: step / matrix products <= 1.5 (must: 2.0); >= 2.5x the issue-12 baseline (must: 2x).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

from common import frozen_teacher, interleaved_median, print_table
from spikingmamba.ops import cpu_neuron
from spikingmamba.runtime import configure

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::mv", "aten::addmv",
              "aten::dot")


def set_scan_backend(model: torch.nn.Module, backend: str) -> None:
    for layer in model.backbone.layers:
        layer.mixer.scan_backend = backend


class compiled_neurons_hidden:
    """Inside: the neurons run `silif_ref` (torch ops), as before the compiled neuron existed."""

    def __enter__(self):
        self.saved = dict(cpu_neuron.LIBRARY.loaded)
        cpu_neuron.LIBRARY.loaded["lib"] = None

    def __exit__(self, *exc):
        cpu_neuron.LIBRARY.loaded.clear()
        cpu_neuron.LIBRARY.loaded.update(self.saved)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help='teacher folder or "default" (else a random model of --d-model etc.)')
    p.add_argument("--d-model", type=int, default=320)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=5)
    args = p.parse_args()
    configure(args.threads)

    from spikingmamba.data.dataset import TokenBatch
    from spikingmamba.distill.config import DistillConfig
    from spikingmamba.distill.trainer import DistillTask, build_student
    from spikingmamba.training.loop import make_optimizer

    torch.manual_seed(0)
    teacher = frozen_teacher(args)
    ids = torch.randint(0, teacher.config.vocab_size, (args.batch, args.length + 1))
    batch = TokenBatch(ids[:, :-1], ids[:, 1:])
    cfg = DistillConfig(out="unused", levels=args.levels)
    student = build_student(teacher, cfg, calibration_ids=batch.input_ids[:2])
    task = DistillTask(student, teacher, cfg)
    task.before_step(0, 100)                                      # SGC on, as early in a run

    def step(backend: str, baseline: bool = False):
        model = copy.deepcopy(student)
        optimizer = make_optimizer(model, cfg)
        if baseline:                                              # torch's per-tensor AdamW, as before
            optimizer = torch.optim.AdamW([{**g, "fused": False, "foreach": False} for g in optimizer.param_groups])

        def fn():
            set_scan_backend(teacher, backend)
            set_scan_backend(model, backend)
            with compiled_neurons_hidden() if baseline else contextlib.nullcontext():
                loss, _ = task.loss(model, batch)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return fn

    times = interleaved_median({"cpu": step("cpu"), "loop": step("loop"), "issue-12 baseline": step("loop", True)},
                               args.repeats, warmup=1)

    run = step("cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.profile_steps):
            run()
        profiled_step = (time.perf_counter() - start) / args.profile_steps
    ops = prof.key_averages()
    per_step = {e.key: e.self_cpu_time_total / 1e6 / args.profile_steps for e in ops}
    matmul = sum(per_step.get(name, 0.0) for name in MATMUL_OPS)

    tokens = args.batch * args.length
    shape = (f"d_model {teacher.config.hidden_size}, {teacher.config.num_hidden_layers} layers, vocab "
             f"{teacher.config.vocab_size}, D = {args.levels}, batch {args.batch} x {args.length}, "
             f"{args.threads} threads")
    base = times["issue-12 baseline"]
    rows = [(name, f"{t:.3f}", f"{tokens / t:,.0f}", f"{base / t:.2f}x", f"{times['loop'] / t:.2f}x")
            for name, t in times.items()]
    print_table(f"distillation step, {shape}, median of {args.repeats}", rows,
                ("variant", "seconds", "tokens/s", "speed-up vs issue-12 baseline", "vs loop"))
    print_table(f"profiled distill step (cpu), {args.profile_steps} steps", [
        ("step (wall, under the profiler)", f"{profiled_step:.3f}", "1.00"),
        ("matrix products (self time of " + ", ".join(n.removeprefix("aten::") for n in MATMUL_OPS) + ")",
         f"{matmul:.3f}", f"{matmul / profiled_step:.2f}"),
        ("step / matrix products", f"{profiled_step / matmul:.2f}", ""),
        ("step without the profiler (median above) / matrix products", f"{times['cpu'] / matmul:.2f}", ""),
    ], ("quantity", "seconds per step", "share of step"))
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:12]
    print_table("operators by self time (per step)", [(k, f"{v:.4f}", f"{v / profiled_step:.2f}") for k, v in top],
                ("operator", "seconds", "share of step"))


if __name__ == "__main__":
    main()
