"""Configuration of `spikingmamba tokenize`: text in, token shards out (see `spikingmamba.data.tokenize`)."""

from __future__ import annotations

from dataclasses import dataclass

from spikingmamba.errors import ConfigError
from spikingmamba.config import Config, option


@dataclass
class TokenizeConfig(Config):
    """What to read, with which tokenizer, and how to write the shards."""

    inputs: tuple[str, ...] = option((), "data to tokenise, read in this order: .txt files (documents separated "
                                     "by blank lines), .jsonl, .parquet, datasets.save_to_disk folders, or "
                                     "hf:NAME[:CONFIG] to stream a hub dataset", positional=True, metavar="INPUT")
    out: str = option("", "the shard folder to write (index.json, *.bin, tokenizer/)")
    overwrite: bool = option(False, "replace an --out folder that already holds files")
    tokenizer: str = option("default", 'tokenizer: "default" (the bundled teacher\'s), "gpt-neox", or a '
                            "tokenizer / model folder; training checks that its model uses the same one")
    text_field: str = option("text", "the text field of .jsonl / .parquet / datasets / hub records")
    hub_split: str = option("train", "the split of an hf:NAME dataset to stream")
    heldout_fraction: float = option(0.05, "fraction of the documents (drawn at random) written to the heldout "
                                     "split", gt=0, lt=1)
    split_seed: int = option(0, "seed of the document draw for the heldout split", ge=0)
    shard_tokens: int = option(1 << 27, "tokens per shard file (the last one of a split holds the rest)", ge=1)
    workers: int = option(0, "tokenising processes (0: one per CPU core; 1: in this process)", ge=0)
    batch_documents: int = option(256, "documents per task handed to a tokenising process", ge=1)
    progress: bool = option(True, "show a progress bar (documents, tokens)")

    def check(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs are required: the text files / folders / hf:NAME data sets to tokenise")
        if not self.out:
            raise ConfigError("out is required: the folder to write the shards to")
