"""`spikingmamba tokenize`: turn a corpus into memory-mapped token shards for training."""

from __future__ import annotations

import argparse
import json

from spikingmamba.config import add_config_parser, config_from_args
from spikingmamba.data.tokenize_config import TokenizeConfig


def register(subparsers) -> None:
    add_config_parser(subparsers, "tokenize", TokenizeConfig, tokenize_command,
                      help="tokenise a corpus into memory-mapped token shards")


def tokenize_command(args: argparse.Namespace) -> int:
    """Tokenise text into token shards that distill / pretrain read by memory map (--data FOLDER).

Documents are streamed (memory stays flat whatever the corpus size), tokenised in parallel
processes (the output does not depend on their number), each followed by the eos token, drawn
into a train and a heldout split, and appended to flat uint16 (uint32 for vocabularies over 65536
tokens) shard files. The folder is written under a temporary name and renamed when complete.

Output (--out): index.json (splits, shard files, token counts, dtype, tokenizer identity),
train-NNNNN.bin, heldout-NNNNN.bin, tokenizer/. Format: docs/DATA.md.

Options come from the defaults, then --config YAML, then flags. Examples:
  spikingmamba tokenize corpus.txt --out data/shards
  spikingmamba tokenize part-*.parquet --tokenizer gpt-neox --out data/pile --workers 8
  spikingmamba tokenize hf:Salesforce/wikitext:wikitext-103-raw-v1 --tokenizer gpt-neox --out data/wt
  spikingmamba distill --data data/shards --out runs/student
"""
    from spikingmamba.data.tokenize import tokenize

    cfg = config_from_args(TokenizeConfig, args)
    index = tokenize(cfg)
    summary = {split: {k: v for k, v in entry.items() if k != "shards"} | {"shards": len(entry["shards"])}
               for split, entry in index["splits"].items()}
    print(json.dumps({"out": cfg.out, "dtype": index["dtype"], "seconds": index["seconds"], **summary}, indent=2))
    return 0
