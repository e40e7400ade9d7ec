"""Language-modelling data: read documents, split them by document, pack their tokens into rows.

Each row holds `seq_len + 1` token ids: inputs are `row[:-1]`, next-token targets are `row[1:]`.
Consecutive rows overlap by one token, so every token of the stream is a target exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import random
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from spikingmamba.data.cache import default_cache_dir
from spikingmamba.data.documents import iter_documents
from spikingmamba.data.shards import MemmapRows, ShardSet, is_shard_folder
from spikingmamba.errors import ConfigError, UserError
from spikingmamba.utils.io import load_torch, save_torch

# Bump when packing changes, so that stale cached packs are not reused.
_PACK_FORMAT_VERSION = 1


def load_texts(path: str | Path) -> list[str]:
    """Read all the documents of a data set, in order, into a list (see `iter_documents` for the
    formats). No documents at all is an error."""
    docs = list(iter_documents(path))
    if not docs:
        raise UserError(f"{path} holds no text: the data set is empty")
    return docs


def split_documents(docs: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split whole documents into (train, held-out), each in the original order.

    `round(len(docs) * heldout_fraction)` documents, at least one, are held out, chosen at random
    from `seed`: the same documents and seed always give the same split.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be between 0 and 1 (exclusive), got {heldout_fraction}")
    if len(docs) < 2:
        raise UserError(f"need at least 2 documents to hold one out, got {len(docs)}; "
                        "separate documents in a text file by blank lines")
    n_heldout = min(len(docs) - 1, max(1, round(len(docs) * heldout_fraction)))
    heldout = set(random.Random(seed).sample(range(len(docs)), n_heldout))
    train = [doc for i, doc in enumerate(docs) if i not in heldout]
    return train, [doc for i, doc in enumerate(docs) if i in heldout]


def pack(token_ids_list: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by `eos_id`, and cut the stream into rows.

    Returns a LongTensor `(n, seq_len + 1)`; row `i` is `stream[i*seq_len : i*seq_len + seq_len + 1]`.
    The incomplete tail of the stream is dropped; too short a stream gives `n = 0`.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len must be at least 1, got {seq_len}")
    stream = list(chain.from_iterable([*ids, eos_id] for ids in token_ids_list))
    if len(stream) < seq_len + 1:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    rows = torch.tensor(stream, dtype=torch.long).unfold(0, seq_len + 1, seq_len)  # (n, seq_len + 1)
    return rows.contiguous()


class TokenBatch(NamedTuple):
    """A batch of packed rows for a language-modelling task."""

    input_ids: torch.Tensor    # (b, seq_len)  row[:-1]
    target_ids: torch.Tensor   # (b, seq_len)  row[1:]: position t predicts target_ids[:, t]


class PackedDataset(Dataset):
    """Rows of packed token ids; item `i` is `{"input_ids": row[:-1], "target_ids": row[1:]}`.

    `target_ids` are already shifted: compare them with the logits at the same positions, and do
    not pass them as `labels` to a transformers model (which shifts again).
    `rows` is a LongTensor `(n, seq_len + 1)`, or `MemmapRows` reading them from token shards.
    """

    def __init__(self, rows: torch.Tensor | MemmapRows) -> None:
        if len(rows.shape) != 2 or rows.shape[1] < 2:
            raise ValueError(f"rows must have shape (n, seq_len + 1), got {tuple(rows.shape)}")
        self.rows = rows

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1] - 1

    @property
    def num_tokens(self) -> int:
        """Number of next-token targets, `len(self) * seq_len`."""
        return len(self) * self.seq_len

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"input_ids": row[:-1], "target_ids": row[1:]}

    def batch(self, indices: torch.Tensor, device: torch.device | str | None = None) -> TokenBatch:
        """Rows `indices` as one `TokenBatch` on `device` (what the training loop hands a task)."""
        rows = self.rows[indices].to(device)                                   # (b, seq_len + 1)
        return TokenBatch(rows[:, :-1], rows[:, 1:])


def build_datasets(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[PackedDataset, PackedDataset]:
    """Read `path`, split it by document, tokenise and pack both parts: `(train, heldout)`.

    A token shard folder (`spikingmamba tokenize`) is memory-mapped instead (`shard_datasets`).

    The packed tensors are cached in `cache_dir` (default `<spikingmamba cache>/packed`) under a key
    made of the data's path, size and modification time, the tokenizer's vocabulary, `seq_len`,
    `heldout_fraction` and `seed`, so a repeated run skips reading and tokenising.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist")
    if is_shard_folder(path):
        return shard_datasets(path, tokenizer, seq_len)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise UserError("the tokenizer has no eos token, which packing puts between documents")
    cache_file = Path(cache_dir or default_cache_dir() / "packed") / (
        _cache_key(path, tokenizer, seq_len, heldout_fraction, seed) + ".pt"
    )
    if cache_file.is_file():
        try:
            packs = load_torch(cache_file, "packed-data cache file")
            return PackedDataset(packs["train"]), PackedDataset(packs["heldout"])
        except (UserError, KeyError, TypeError):  # damaged or foreign: it is only a cache, so rebuild it
            print(f"spikingmamba: the packed-data cache file {cache_file} is damaged; rebuilding it", file=sys.stderr)

    train_docs, heldout_docs = split_documents(load_texts(path), heldout_fraction, seed)
    train_ids, heldout_ids = (
        tokenizer(docs, add_special_tokens=False)["input_ids"] for docs in (train_docs, heldout_docs)
    )
    n_train, n_heldout = (sum(len(ids) + 1 for ids in split) for split in (train_ids, heldout_ids))  # +eos
    if min(n_train, n_heldout) < seq_len + 1:
        n_docs = len(train_docs) + len(heldout_docs)
        wanted = math.ceil((seq_len + 1) / heldout_fraction)
        raise UserError(
            f"too few tokens in {path}: {n_train + n_heldout} in all, {n_train} in the train split and "
            f"{n_heldout} in the held-out split ({len(heldout_docs)} of {n_docs} documents); one sequence "
            f"of seq_len={seq_len} needs {seq_len + 1} tokens in each split. Add text (about {wanted} "
            f"tokens in all at heldout_fraction={heldout_fraction}), lower seq_len, or raise heldout_fraction"
        )
    packs = {"train": pack(train_ids, seq_len, eos_id), "heldout": pack(heldout_ids, seq_len, eos_id)}
    save_torch(packs, cache_file)
    return PackedDataset(packs["train"]), PackedDataset(packs["heldout"])


def shard_datasets(folder: str | Path, tokenizer: PreTrainedTokenizerBase,
                   seq_len: int) -> tuple[PackedDataset, PackedDataset]:
    """`(train, heldout)` rows memory-mapped from a token shard folder, whose `tokenize` run made the
    split; `tokenizer` must be the one that wrote the shards."""
    shards = ShardSet.open(folder)
    shards.check_tokenizer(tokenizer)
    train, heldout = (PackedDataset(MemmapRows(shards.stream(split), seq_len)) for split in ("train", "heldout"))
    if min(len(train), len(heldout)) < 1:
        counts = {split: shards.index["splits"][split]["tokens"] for split in ("train", "heldout")}
        raise UserError(f"too few tokens in {folder} ({counts['train']} train, {counts['heldout']} heldout); one "
                        f"sequence of seq_len={seq_len} needs {seq_len + 1} tokens in each split: add text or "
                        "lower seq_len")
    return train, heldout


def _cache_key(
    path: Path, tokenizer: PreTrainedTokenizerBase, seq_len: int, heldout_fraction: float, seed: int
) -> str:
    """Hash of everything the packs depend on; a folder is fingerprinted by all the files in it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([_PACK_FORMAT_VERSION, stats, vocab, tokenizer.eos_token_id, seq_len, heldout_fraction,
                       seed])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]
