"""`spikingmamba spikes MODEL --text TEXT --out FILE`: export binary spike trains as address events."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.utils.io import read_text
from spikingmamba.runtime import ModelRuntimeConfig


@dataclass
class SpikesConfig(ModelRuntimeConfig):
    """The spiking model, the text it runs on, and where the events go."""

    model: str = option("", "spiking student folder with its tokenizer", positional=True)
    text: str | None = option(None, "the text to run")
    text_file: str | None = option(None, "a UTF-8 file holding the text to run", metavar="FILE")
    out: str = option("", "output file (.npz)", metavar="FILE")
    max_tokens: int = option(4096, "refuse longer texts", ge=1)
    tokenizer: str | None = option(None, 'tokenizer folder or "gpt-neox" (none: the model folder)')
    overwrite: bool = option(False, "replace OUT if it exists")

    def check(self) -> None:
        if not self.model:
            raise ConfigError("model is required: the spiking student folder")
        if (self.text is None) == (self.text_file is None):
            raise ConfigError("give the text with exactly one of --text and --text-file")
        if not self.out:
            raise ConfigError("out is required: the .npz file to write (--out)")


def register(subparsers) -> None:
    add_config_parser(subparsers, "spikes", SpikesConfig, spikes_cli,
                      help="export a spiking model's spike trains on a text (address events)")


def spikes_cli(args: argparse.Namespace) -> int:
    """Run MODEL on the text and write every spike of every neuron (each spiking site of each layer,
and the LM head's if it spikes) as
    an address event (token, stream, micro-timestep, polarity, neuron) into OUT, a compressed .npz
    with a JSON header; the layout is documented in `spikingmamba.inference.spike_export`, and
    `spikingmamba.inference.read_spikes(OUT)` reads it back. Prints a JSON summary; the event counts
    equal the spike counts of the energy report (`firing_stats()`) on the same text. Example:
      spikingmamba spikes runs/student --text "Fair is foul" --out spikes.npz
    """
    import torch

    from spikingmamba import from_pretrained
    from spikingmamba.data.tokenizer import load_tokenizer
    from spikingmamba.inference.spike_export import export_spikes

    cfg = config_from_args(SpikesConfig, args)
    out = Path(cfg.out)
    if cfg.text_file is not None:
        if not Path(cfg.text_file).is_file():
            raise UserError(f"--text-file {cfg.text_file}: no such file")
        text = read_text(cfg.text_file, "--text-file")
    else:
        text = cfg.text
    if not text:
        raise UserError("the text is empty: give some text to run")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; spikes writes one .npz file (give a file name)")
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if out.parent and not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such folder for --out")
    device = cfg.setup()
    model = from_pretrained(cfg.model, dtype=cfg.torch_dtype).to(device)
    if not model.is_spiking:
        raise UserError(f"{cfg.model} is a dense model: it has no spiking neurons to export "
                        "(make a student with `spikingmamba convert`)")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("the text encodes to no tokens")
    if len(ids) > cfg.max_tokens:
        raise UserError(f"the text has {len(ids)} tokens, more than --max-tokens {cfg.max_tokens}")
    record = export_spikes(model, torch.tensor(ids, device=device), out,
                           tokens=tokenizer.convert_ids_to_tokens(ids), source=str(cfg.model))
    counts = record.counts()
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "tokens": len(ids),
                      "levels": record.levels, "streams": len(counts), "events": int(record.events.size),
                      "spikes_per_token": record.events.size / len(ids)}, indent=2))
    return 0
