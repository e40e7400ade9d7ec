"""Resume a sharded FSDP distillation on another number of processes and compare it with the same
run uninterrupted in one process: prints every step's loss side by side, the data positions and the
largest weight difference (docs/SCALE.md says what is exact and what is float rounding).

    python scripts/resume_across_processes.py --out runs/resume23 --first 2 --then 3
    python scripts/resume_across_processes.py --out runs/resume32 --first 3 --then 2

Runs (CPU, gloo; any extra arguments go to every `distill`):
    one process, global batch G, uninterrupted                      -> OUT/one
    FIRST processes, batch G / FIRST, stopped at --stop (a sharded checkpoint)
    THEN processes, batch G / THEN, --resume to the end             -> OUT/resumed
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def distill(out: Path, processes: int, flags: list[str]) -> None:
    command = ["-m", "spikingmamba.cli.main", "distill", "--out", str(out), *flags]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                   f"--master_port={port}", *command]
    print("$", " ".join(["python", *command]), flush=True)
    subprocess.run([sys.executable, *command], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--first", type=int, default=2, help="processes of the first part")
    parser.add_argument("--then", type=int, default=3, help="processes of the resumed part")
    parser.add_argument("--global-batch", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stop", type=int, default=3, help="the first part stops (and saves) at this step")
    args, extra = parser.parse_known_args()
    for n in (args.first, args.then):
        if args.global_batch % n:
            parser.error(f"--global-batch {args.global_batch} is not a multiple of {n} processes")
    recipe = ["--teacher", "default", "--seq-len", "64", "--max-steps", str(args.steps), "--warmup-steps", "1",
              "--eval-every", str(args.stop), "--eval-rows", "12", "--log-every", "1", "--save-every", str(args.stop),
              "--distributed", "fsdp", "--sharded-checkpoint", "--num-threads", "1", "--no-progress",
              "--overwrite", *extra]
    one, resumed = args.out / "one", args.out / "resumed"
    distill(one, 1, [*recipe, "--batch-size", str(args.global_batch)])
    distill(resumed, args.first, [*recipe, "--batch-size", str(args.global_batch // args.first),
                                  "--stop-at-step", str(args.stop)])
    first_state = json.loads((resumed / "checkpoint" / "trainer.json").read_text())
    distill(resumed, args.then, ["--resume", "--batch-size", str(args.global_batch // args.then)])
    last_state = json.loads((resumed / "checkpoint" / "trainer.json").read_text())

    from safetensors.torch import load_file

    a = load_file(str(one / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    print(f"\n{args.first} -> {args.then} processes, global batch {args.global_batch}, stopped at step {args.stop}\n")
    print("| step | processes | loss, 1 process uninterrupted | loss, resumed run | relative difference |")
    print("|---|---|---|---|---|")
    for x, y in zip(records(one, "train"), records(resumed, "train"), strict=True):
        n = args.first if y["step"] <= args.stop else args.then
        print(f"| {y['step']} | {n} | {x['loss']:.9g} | {y['loss']:.9g} | {abs(x['loss'] - y['loss']) / abs(x['loss']):.2e} |")
    print(f"\ncheckpoint at step {first_state['step']}: {first_state['world_size']} processes, data position "
          f"{first_state['data']['position']}; at step {last_state['step']}: {last_state['world_size']} processes, "
          f"data position {last_state['data']['position']}")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"final weights: largest absolute difference {diff:.3g} (largest weight {max(float(v.abs().max()) for v in a.values()):.3g})")


if __name__ == "__main__":
    main()
