"""`spikingmamba spikes MODEL --text TEXT --out FILE`: export binary spike trains as address events."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikingmamba.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("spikes", help="export a spiking model's spike trains on a text (address events)",
                              description=spikes_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="spiking student folder with its tokenizer")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to run")
    text.add_argument("--text-file", type=Path, help="a UTF-8 file holding the text to run")
    p.add_argument("--out", type=Path, required=True, help="output file (.npz)")
    p.add_argument("--max-tokens", type=int, default=4096, help="refuse longer texts (default 4096)")
    p.add_argument("--tokenizer", help='tokenizer folder or "gpt-neox" (default: the model folder)')
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=spikes_cli)


def spikes_cli(args: argparse.Namespace) -> int:
    """Run MODEL on the text and write every spike of every neuron (layer, in_proj / out_proj) as
    an address event (token, stream, micro-timestep, polarity, neuron) into OUT, a compressed .npz
    with a JSON header; the layout is documented in `spikingmamba.inference.spike_export`, and
    `spikingmamba.inference.read_spikes(OUT)` reads it back. Prints a JSON summary; the event counts
    equal the spike counts of the energy report (`firing_stats()`) on the same text.
    """
    import torch

    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.inference.spike_export import export_spikes

    if args.text_file is not None:
        if not args.text_file.is_file():
            raise UserError(f"--text-file {args.text_file}: no such file")
        text = args.text_file.read_text(encoding="utf-8")
    else:
        text = args.text
    if not text:
        raise UserError("the text is empty: give some text to run")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite to replace it")
    if args.out.parent and not args.out.parent.is_dir():
        raise UserError(f"{args.out.parent}: no such folder for --out")
    model = from_pretrained(args.model)
    if not model.is_spiking:
        raise UserError(f"{args.model} is a dense model: it has no spiking neurons to export "
                        "(make a student with `spikingmamba convert`)")
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("the text encodes to no tokens")
    if len(ids) > args.max_tokens:
        raise UserError(f"the text has {len(ids)} tokens, more than --max-tokens {args.max_tokens}")
    torch.set_flush_denormal(True)
    record = export_spikes(model, torch.tensor(ids), args.out, tokens=tokenizer.convert_ids_to_tokens(ids),
                           source=str(args.model))
    counts = record.counts()
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size, "tokens": len(ids),
                      "levels": record.levels, "streams": len(counts), "events": int(record.events.size),
                      "spikes_per_token": record.events.size / len(ids)}, indent=2))
    return 0
