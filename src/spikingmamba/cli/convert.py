"""`spikingmamba convert TEACHER OUT --levels D`: write a spiking student made from a Mamba checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spikingmamba.errors import UserError
from spikingmamba.neurons.config import NEURON_KINDS, SITES


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="make a spiking student from a Mamba checkpoint",
                              description=convert.__doc__)
    p.add_argument("teacher", help="Mamba checkpoint folder (transformers, state-spaces or ours) or hub id")
    p.add_argument("out", type=Path, help="output folder for the student")
    p.add_argument("--levels", type=int, default=4, help="D: largest spike magnitude / micro-steps (default 4)")
    p.add_argument("--neuron", choices=NEURON_KINDS, default="silif", help="neuron type (default silif)")
    p.add_argument("--sites", default=",".join(SITES), help="comma-separated projections that get neurons")
    p.add_argument("--per-tensor", action="store_true", help="one threshold per tensor instead of per channel")
    p.add_argument("--calibration-text", type=Path, help="text file whose teacher activations set the thresholds")
    p.add_argument("--calibration-tokens", type=int, default=4096, help="tokens of it to use (default 4096)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it already holds files")
    p.set_defaults(func=convert)


def convert(args: argparse.Namespace) -> int:
    """Copy the teacher, put an SI-LIF neuron before every in_proj/out_proj, calibrate, save."""
    from spikingmamba import from_pretrained, to_spiking
    from spikingmamba.utils.io import prepare_output_dir, save_model

    if args.levels < 1:
        raise UserError(f"--levels must be an integer >= 1, got {args.levels}")
    out = prepare_output_dir(args.out, args.overwrite)
    teacher = from_pretrained(args.teacher)
    calibration_ids = None
    tokenizer = None
    if args.calibration_text is not None:
        from spikingmamba.data.tokenizer import load_tokenizer

        if not args.calibration_text.is_file():
            raise UserError(f"--calibration-text {args.calibration_text}: no such file")
        tokenizer = load_tokenizer(args.teacher)
        ids = tokenizer(args.calibration_text.read_text(encoding="utf-8"))["input_ids"][: args.calibration_tokens]
        if len(ids) < 16:
            raise UserError(f"--calibration-text has only {len(ids)} tokens; need at least 16")
        calibration_ids = torch.tensor(ids).view(1, -1)
    student = to_spiking(teacher, levels=args.levels, neuron=args.neuron,
                         sites=tuple(s.strip() for s in args.sites.split(",") if s.strip()),
                         per_channel=not args.per_tensor, calibration_ids=calibration_ids)
    save_model(student, out, tokenizer=tokenizer, source=args.teacher)
    print(json.dumps({"student": str(out), "levels": args.levels, "neuron": args.neuron,
                      "calibrated": calibration_ids is not None}, indent=2))
    return 0
