"""Tokenise a corpus into token shards, in constant memory and in parallel processes.

    documents (streamed, `iter_documents`)          main process, in order
      -> held-out draw per document                 random.Random(split_seed): one draw per document
      -> batches of `batch_documents`               at most 2 x workers batches in flight
      -> token ids + eos per document               worker processes (the tokenizers library)
      -> appended to the split's shard files        main process, in the batches' order

The output depends on the inputs, the tokenizer, `heldout_fraction` and `split_seed` only: not on
the number of workers or the batch size (each document is encoded on its own). Everything is
written into a temporary sibling of `out` and renamed into place at the end, `index.json` last, so
an interrupted run leaves no shard folder (and a previous one at `out` stays as it was).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import deque
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from spikingmamba.data.documents import HUB_PREFIX, iter_documents
from spikingmamba.data.shards import (FORMAT, FORMAT_VERSION, INDEX_FILE, SPLITS, TOKENIZER_DIR, ShardWriter,
                                      token_dtype, tokenizer_fingerprint)
from spikingmamba.data.tokenize_config import TokenizeConfig
from spikingmamba.data.tokenizer import load_tokenizer
from spikingmamba.errors import UserError
from spikingmamba.utils.io import atomic_save_dir

# the tokenizer of a worker process, set once by `_init_worker`
_WORKER: dict[str, Any] = {}


def tokenize(config: TokenizeConfig | dict) -> dict[str, Any]:
    """Write the token shards of `config.inputs` to `config.out`; return the index (also index.json)."""
    cfg = config if isinstance(config, TokenizeConfig) else TokenizeConfig.from_dict(config)
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"--out {out} already holds files; pass --overwrite to replace them")
    for source in cfg.inputs:
        if not source.startswith(HUB_PREFIX) and not Path(source).exists():
            raise UserError(f"data path {source} does not exist")
    tokenizer = load_tokenizer(_tokenizer_source(cfg.tokenizer))
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer {cfg.tokenizer} has no eos token, which the shards put after every document")
    if not tokenizer.is_fast:
        raise UserError(f"the tokenizer {cfg.tokenizer} is not a fast (Rust `tokenizers`) tokenizer, which the "
                        "tokenising processes need")
    result: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        result.update(_write_shards(cfg, tokenizer, tmp))

    atomic_save_dir(out, write)
    return result


def _tokenizer_source(name: str) -> str:
    if name == "default":
        from spikingmamba.assets import default_teacher_dir

        return str(default_teacher_dir())
    return name


def _write_shards(cfg: TokenizeConfig, tokenizer, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    dtype = token_dtype(len(tokenizer))
    writers = {split: ShardWriter(folder, split, dtype, cfg.shard_tokens) for split in SPLITS}
    workers = cfg.workers or os.cpu_count() or 1
    backend = tokenizer.backend_tokenizer.to_str()
    bar, n_tokens = _progress(cfg), 0
    encoded = _encoded_batches(_batches(cfg), (backend, tokenizer.eos_token_id, dtype), workers)
    for heldout, tokens, n_docs in encoded:
        writers["heldout" if heldout else "train"].write(tokens, n_docs)
        n_tokens += len(tokens)
        if bar is not None:
            bar.update(n_docs)
            bar.set_postfix(tokens=n_tokens, refresh=False)
    if bar is not None:
        bar.close()
    splits = {split: writer.close() for split, writer in writers.items()}
    if splits["train"]["documents"] == 0:
        raise UserError(f"{', '.join(cfg.inputs)} hold no text: nothing to tokenise")
    if splits["heldout"]["documents"] == 0:
        raise UserError(f"no document was drawn for the heldout split ({splits['train']['documents']} documents "
                        f"at heldout_fraction={cfg.heldout_fraction}): add documents or raise heldout_fraction")
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    index = {
        "format": FORMAT, "version": FORMAT_VERSION, "dtype": dtype,
        "tokenizer": {"source": cfg.tokenizer, "fingerprint": tokenizer_fingerprint(tokenizer),
                      "vocab_size": len(tokenizer), "folder": TOKENIZER_DIR},
        "eos": {"id": tokenizer.eos_token_id, "token": tokenizer.eos_token, "placement": "after every document"},
        "inputs": list(cfg.inputs), "text_field": cfg.text_field,
        "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed,
        "shard_tokens": cfg.shard_tokens, "splits": splits,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")  # last: marks "complete"
    return index


def _batches(cfg: TokenizeConfig) -> Iterator[tuple[bool, list[str]]]:
    """(held out?, documents) in corpus order: runs of at most `batch_documents` documents of one split."""
    draw = random.Random(cfg.split_seed).random
    docs = chain.from_iterable(iter_documents(s, cfg.text_field, cfg.hub_split) for s in cfg.inputs)
    labelled = ((draw() < cfg.heldout_fraction, doc) for doc in docs)
    batch: list[str] = []
    current = False
    for heldout, doc in labelled:
        if batch and (heldout != current or len(batch) == cfg.batch_documents):
            yield current, batch
            batch = []
        current = heldout
        batch.append(doc)
    if batch:
        yield current, batch


def _encoded_batches(batches: Iterator[tuple[bool, list[str]]], setup: tuple[str, int, str],
                     workers: int) -> Iterator[tuple[bool, np.ndarray, int]]:
    """(held out?, token ids of the batch with eos after each document, documents), in input order.
    `setup` is `_init_worker`'s arguments."""
    if workers == 1:
        _init_worker(*setup)
        for heldout, docs in batches:
            yield heldout, _encode(docs), len(docs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=setup) as pool:
        pending: deque = deque()
        batches = iter(batches)
        for heldout, docs in islice(batches, 2 * workers):
            pending.append((heldout, len(docs), pool.apply_async(_encode, (docs,))))
        while pending:
            heldout, n_docs, job = pending.popleft()
            for next_heldout, docs in islice(batches, 1):  # keep 2 x workers batches in flight
                pending.append((next_heldout, len(docs), pool.apply_async(_encode, (docs,))))
            yield heldout, job.get(), n_docs


def _init_worker(backend: str, eos_id: int, dtype: str) -> None:
    """Load the tokenizer (its `tokenizers` JSON) into this process."""
    from tokenizers import Tokenizer

    _WORKER.update(tokenizer=Tokenizer.from_str(backend), eos=eos_id, dtype=dtype)


def _encode(docs: list[str]) -> np.ndarray:
    """The documents' ids, each document followed by eos, as one array of the shards' dtype."""
    encodings = _WORKER["tokenizer"].encode_batch(docs, add_special_tokens=False)
    ids = list(chain.from_iterable((*e.ids, _WORKER["eos"]) for e in encodings))
    return np.asarray(ids, dtype=_WORKER["dtype"])


def _progress(cfg: TokenizeConfig):
    if not cfg.progress:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(unit="doc", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr)
