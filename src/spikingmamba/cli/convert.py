"""`spikingmamba convert TEACHER OUT --levels D`: write a spiking student made from a Mamba checkpoint."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from spikingmamba.config import add_config_parser, config_from_args, option
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.neurons.config import NEURON_KINDS, SpikingConfig, parse_site_values
from spikingmamba.neurons.sites import DEFAULT_SITES, SITES, resolve_sites
from spikingmamba.runtime import ModelRuntimeConfig

CALIBRATION_ROW = 256          # tokens per calibration sequence
MIN_CALIBRATION_TOKENS = 16


@dataclass
class ConvertConfig(ModelRuntimeConfig):
    """The teacher, the neurons to add, and the text that calibrates their thresholds."""

    teacher: str = option("", "Mamba checkpoint folder (transformers, state-spaces or ours) or hub id",
                          positional=True)
    out: str = option("", "output folder for the student", positional=True)
    levels: int = option(4, "D: largest spike magnitude / micro-steps", ge=1)
    neuron: str = option("silif", "neuron type", choices=NEURON_KINDS)
    sites: tuple[str, ...] = option(DEFAULT_SITES, f"projections that get neurons, comma-separated: any of "
                                    f"{','.join(SITES)}, or all")
    site_levels: tuple[str, ...] = option((), "smaller largest spikes at some sites, SITE=D items (e.g. in_proj=2)",
                                          metavar="SITE=D,...")
    per_tensor: bool = option(False, "one threshold per tensor instead of per channel")
    calibration_rates: tuple[str, ...] = option((), "rate-aware calibration at some sites, SITE=X items (e.g. "
                                                "in_proj=0.2): start there at X spikes per neuron per token",
                                                metavar="SITE=X,...")
    calibration_text: str | None = option(None, "text file whose teacher activations set the thresholds (none: "
                                          "the training split of the offline default corpus)", metavar="FILE")
    calibration_tokens: int = option(4096, "tokens of calibration text to use", ge=MIN_CALIBRATION_TOKENS)
    tokenizer: str | None = option(None, 'tokenizer folder or "gpt-neox" (the public Mamba checkpoints\' one) '
                                   "when TEACHER has none; saved with the student")
    overwrite: bool = option(False, "replace OUT if it already holds files")

    def check(self) -> None:
        if not self.teacher or not self.out:
            raise ConfigError("give the TEACHER checkpoint and the OUT folder")
        self.sites = resolve_sites(self.sites)
        SpikingConfig(levels=self.levels, neuron=self.neuron, sites=self.sites,
                      site_levels=parse_site_values(self.site_levels, "site_levels"))       # its rules, before any work
        rates = parse_site_values(self.calibration_rates, "calibration_rates", float)
        if any(v < 0 for v in rates.values()) or not set(rates) <= set(self.sites):
            raise ConfigError(f"calibration_rates must name sites among {self.sites} with rates >= 0, "
                              f"got {self.calibration_rates!r}")


def register(subparsers) -> None:
    add_config_parser(subparsers, "convert", ConvertConfig, convert,
                      help="make a spiking student from a Mamba checkpoint")


def convert(args: argparse.Namespace) -> int:
    """Copy the teacher, put an SI-LIF neuron before the projections named in --sites (default every
in_proj and out_proj, the paper's; `--sites all` adds x_proj, dt_proj and the LM head), calibrate
each neuron's thresholds on the teacher's activations, save the student (with the tokenizer) in OUT.

Calibration text: --calibration-text, else the training split of the offline default corpus (said
on stderr). A teacher without a tokenizer (a state-spaces release) needs --tokenizer, e.g.
gpt-neox. OUT is written only once the student is complete: a failed run leaves nothing behind.
Examples:
  spikingmamba convert runs/teacher runs/student --levels 4
  spikingmamba convert state-spaces-mamba-130m runs/s130m --tokenizer gpt-neox --calibration-text notes.txt
"""
    from spikingmamba import from_pretrained, to_spiking
    from spikingmamba.data import check_vocab, load_texts, load_tokenizer
    from spikingmamba.utils.io import atomic_save_dir, save_model

    cfg = config_from_args(ConvertConfig, args)
    out = Path(cfg.out)
    _check_output(out, cfg.overwrite)
    if cfg.calibration_text is not None and not Path(cfg.calibration_text).is_file():
        raise UserError(f"--calibration-text {cfg.calibration_text}: no such file")
    device = cfg.setup()
    teacher = from_pretrained(cfg.teacher, dtype=cfg.torch_dtype).to(device)
    if teacher.is_spiking:
        raise UserError(f"{cfg.teacher} is already a spiking student; convert takes a dense Mamba (its teacher)")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.teacher)
    check_vocab(tokenizer, teacher.config.vocab_size)
    if cfg.calibration_text is not None:
        texts = load_texts(cfg.calibration_text)
        source = cfg.calibration_text
    else:
        texts, source = _default_calibration_texts()
        print(f"convert: no --calibration-text; calibrating on {cfg.calibration_tokens} tokens of {source}",
              file=sys.stderr)
    ids = calibration_ids(texts, tokenizer, cfg.calibration_tokens).to(device)
    student = to_spiking(teacher, levels=cfg.levels, neuron=cfg.neuron, sites=cfg.sites,
                         per_channel=not cfg.per_tensor, site_levels=parse_site_values(cfg.site_levels, "site_levels"),
                         calibration_ids=ids,
                         calibration_rates=parse_site_values(cfg.calibration_rates, "calibration_rates", float))
    atomic_save_dir(out, lambda folder: save_model(student, folder, tokenizer=tokenizer))
    print(json.dumps({"student": str(out), "levels": cfg.levels, "neuron": cfg.neuron, "sites": list(cfg.sites),
                      "calibration": {"text": str(source), "tokens": int(ids.numel())}}, indent=2))
    return 0


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse OUT before any work when the run could not write it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite to replace them")


def _default_calibration_texts() -> tuple[list[str], str]:
    """The training documents of the offline default corpus (the split distillation uses, so held-out
    text stays unseen), and a name for them."""
    from spikingmamba.data import fetch_default_corpus, load_texts, split_documents

    corpus = fetch_default_corpus()
    train, _ = split_documents(load_texts(corpus), heldout_fraction=0.05, seed=0)
    return train, f"the offline default corpus ({corpus}, training split)"


def calibration_ids(texts: list[str], tokenizer, n_tokens: int):
    """About `n_tokens` tokens from documents spread evenly over `texts` (so that every part of it
    is represented), each followed by the end-of-text token, as rows of `CALIBRATION_ROW`: (rows, length)."""
    import torch

    n_docs = max(1, min(len(texts), -(-n_tokens // CALIBRATION_ROW)))
    per_doc = -(-n_tokens // n_docs)
    eos = tokenizer.eos_token_id
    spread = torch.linspace(0, len(texts) - 1, n_docs).round().long().tolist() if texts else []
    rest = (i for i in range(len(texts)) if i not in set(spread))       # when the spread documents are short
    stream: list[int] = []
    for index in itertools.chain(spread, rest):
        if len(stream) >= n_tokens:
            break
        # a token is rarely longer than 16 characters: enough text without tokenizing whole documents
        stream += tokenizer(texts[index][: per_doc * 16], add_special_tokens=False)["input_ids"][:per_doc]
        if eos is not None:
            stream.append(eos)
    stream = stream[:n_tokens]
    if len(stream) < MIN_CALIBRATION_TOKENS:
        raise UserError(f"the calibration text gives only {len(stream)} tokens; need at least "
                        f"{MIN_CALIBRATION_TOKENS}")
    length = min(CALIBRATION_ROW, len(stream))
    return torch.tensor(stream[: len(stream) // length * length]).view(-1, length)
