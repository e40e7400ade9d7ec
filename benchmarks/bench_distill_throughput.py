"""Distillation throughput (tokens/s), single process: one full optimiser step of `spikingmamba distill`.

    python benchmarks/bench_distill_throughput.py [--teacher default|DIR] [--batch 16 --length 256]

Timed, interleaved in one run (random token ids, so no corpus is needed):
  - dense pretraining step (CE, the teacher's own training): the reference cost
  - distillation step: teacher forward (no grad) + student forward/backward (KL + hidden-state
    matching, SGC on) + AdamW, exactly `DistillTask.loss` as the trainer runs it
  - the same with the firing-rate penalty (one more elementwise pass per neuron)
  - the teacher forward alone, and the student forward + backward alone (where the time goes)
Without `--teacher`, a random model of the default teacher's shape (d_model 320, 6 layers,
vocab 4096) is used; with `--teacher default`, the bundled teacher.
"""

from __future__ import annotations

import argparse

import torch

from common import frozen_teacher, interleaved_median, print_table
from spikingmamba.runtime import configure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help='teacher folder or "default" (else a random model of --d-model etc.)')
    p.add_argument("--d-model", type=int, default=320)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    configure(args.threads)

    import spikingmamba
    from spikingmamba.data.dataset import TokenBatch
    from spikingmamba.distill.config import DistillConfig
    from spikingmamba.distill.trainer import DistillTask, build_student
    from spikingmamba.training.losses import cross_entropy
    from spikingmamba.training.loop import make_optimizer

    torch.manual_seed(0)
    teacher = frozen_teacher(args)
    vocab = teacher.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length + 1))
    batch = TokenBatch(ids[:, :-1], ids[:, 1:])
    inputs, targets = batch

    cfg = DistillConfig(out="unused", levels=args.levels)
    student = build_student(teacher, cfg, calibration_ids=inputs[:2])
    plain = DistillTask(student, teacher, cfg)
    with_rate = DistillTask(student, teacher, cfg.replace(rate_weight=0.1, rate_target=0.1))
    plain.before_step(0, 100)                                     # SGC on, as early in a run
    optimizer = make_optimizer(student, cfg)

    dense = spikingmamba.SpikingMambaForCausalLM(teacher.config).train()
    dense.load_state_dict(teacher.state_dict())
    dense_opt = make_optimizer(dense, cfg)

    def distill_step(task):
        def fn():
            loss, _ = task.loss(student, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return fn

    def pretrain_step():
        cross_entropy(dense(inputs).logits, targets).backward()
        dense_opt.step()
        dense_opt.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.no_grad():
            teacher(inputs, output_hidden_states=True)

    def student_fwd_bwd():
        student(inputs).logits.float().mean().backward()
        student.zero_grad(set_to_none=True)

    contenders = {
        "dense pretraining step (CE)": pretrain_step,
        "distill step (KL + hidden, SGC on)": distill_step(plain),
        "distill step + rate penalty": distill_step(with_rate),
        "  of which: teacher forward": teacher_forward,
        "  of which: student fwd + bwd": student_fwd_bwd,
    }
    times = interleaved_median(contenders, args.repeats, warmup=1)
    tokens = args.batch * args.length
    n_params = sum(p.numel() for p in teacher.parameters())
    base = times["dense pretraining step (CE)"]
    rows = [(name, f"{t:.3f}", f"{tokens / t:,.0f}", f"{t / base:.2f}x") for name, t in times.items()]
    print_table(f"distillation throughput: teacher {n_params / 1e6:.2f}M params (d_model {teacher.config.hidden_size}, "
                f"{teacher.config.num_hidden_layers} layers, vocab {vocab}), levels {args.levels}, batch "
                f"{args.batch} x {args.length}, {args.threads} threads, median of {args.repeats}",
                rows, ("step", "seconds", "tokens/s", "time / pretraining step"))


if __name__ == "__main__":
    main()
