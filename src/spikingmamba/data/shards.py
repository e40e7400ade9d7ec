"""Token shards: a tokenised corpus as flat binary files of token ids, read by memory map.

A shard folder (written by `spikingmamba tokenize`, format in docs/DATA.md) holds

    index.json               what is where: splits, their shard files and token counts, the dtype,
                             the tokenizer's identity, how documents are separated
    train-00000.bin, ...     the train split's token stream, cut into shards of at most
                             `shard_tokens` tokens (raw little-endian uint16, or uint32 for
                             vocabularies over 65536 tokens; no header)
    heldout-00000.bin, ...   the held-out split's stream
    tokenizer/               the tokenizer that made them

Each split is one stream: the documents in order, each followed by the eos token; its shards are
consecutive pieces of it. Opening a shard set maps the files and reads nothing else, so the time and
memory it takes do not grow with the corpus; rows are read on demand (`MemmapRows`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from spikingmamba.errors import UserError

INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "spikingmamba-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    """The smallest dtype that holds every id of a `vocab_size`-token vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and the eos id: equal fingerprints map text to the same ids."""
    blob = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.eos_token_id])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


class ShardWriter:
    """Append token arrays to one split's stream, starting a new shard file every `shard_tokens`."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = Path(folder), split, _DTYPES[dtype], shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self._file: BinaryIO | None = None

    def write(self, tokens: np.ndarray, documents: int) -> None:
        """Append `tokens` (ids of `documents` whole documents, eos included)."""
        self.documents += documents
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            piece, tokens = tokens[:room], tokens[room:]
            self._file.write(piece.tobytes())
            self.shards[-1]["tokens"] += len(piece)

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = (self.folder / name).open("wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict[str, Any]:
        """The split's entry of the index."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return {"documents": self.documents, "tokens": sum(s["tokens"] for s in self.shards),
                "shards": self.shards}


class TokenStream:
    """One split's token stream over its memory-mapped shards; `read(start, stop)` copies a range."""

    def __init__(self, folder: Path, entry: dict[str, Any], dtype: np.dtype):
        self.maps = [np.memmap(folder / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
                     for s in entry["shards"] if s["tokens"]]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])  # stream offset of each shard

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens `[start, stop)` of the stream (across shard boundaries) as a new int64 array."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"tokens [{start}, {stop}) out of range for a stream of {len(self)}")
        out = np.empty(stop - start, dtype=np.int64)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while start + filled < stop:
            offset = start + filled - int(self.starts[shard])
            piece = self.maps[shard][offset:offset + stop - start - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


class MemmapRows:
    """Training rows over a token stream, read on demand: row `i` is
    `stream[i*seq_len : i*seq_len + seq_len + 1]`, as `pack` cuts an in-memory stream.

    Indexing with an int gives one row `(seq_len + 1,)`, with a sequence or 1-D tensor of ints the
    rows `(k, seq_len + 1)`, as int64 tensors (the interface `PackedDataset.rows` has).
    """

    def __init__(self, stream: TokenStream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.shape = (max(0, (len(stream) - 1) // seq_len), seq_len + 1)

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        return self.stream.read(i * self.seq_len, i * self.seq_len + self.seq_len + 1)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.dim() == 0):
            return torch.from_numpy(self._row(int(index)))
        rows = [self._row(int(i)) for i in index]
        if not rows:
            return torch.empty(0, self.shape[1], dtype=torch.long)
        return torch.from_numpy(np.stack(rows))                            # (k, seq_len + 1)


@dataclass
class ShardSet:
    """An opened shard folder: its index, and each split's stream."""

    folder: Path
    index: dict[str, Any]

    @classmethod
    def open(cls, folder: str | Path) -> "ShardSet":
        """Read and check `index.json` and map the shards (nothing else is read)."""
        folder = Path(folder)
        file = folder / INDEX_FILE
        if not file.is_file():
            raise UserError(f"{folder} is not a token shard folder (no {INDEX_FILE}); make one with "
                            "`spikingmamba tokenize`")
        try:
            index = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{file} is not valid JSON ({err})") from err
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise UserError(f"{file} is not a token shard index (no \"format\": \"{FORMAT}\")")
        if index.get("version") != FORMAT_VERSION:
            raise UserError(f"{file} has format version {index.get('version')}; this spikingmamba reads "
                            f"version {FORMAT_VERSION}: tokenize the data again")
        if index.get("dtype") not in _DTYPES:
            raise UserError(f"{file}: unknown dtype {index.get('dtype')!r} (expected one of {', '.join(_DTYPES)})")
        dtype = _DTYPES[index["dtype"]]
        for split, entry in index.get("splits", {}).items():
            for shard in entry["shards"]:
                path = folder / shard["file"]
                expected = shard["tokens"] * dtype.itemsize
                if not path.is_file() or path.stat().st_size != expected:
                    found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
                    raise UserError(f"{folder}: shard {shard['file']} of split {split} should hold {expected} "
                                    f"bytes ({shard['tokens']} tokens) but is {found}: tokenize the data again")
        return cls(folder, index)

    def stream(self, split: str) -> TokenStream:
        entry = self.index["splits"].get(split)
        if entry is None:
            raise UserError(f"{self.folder} has no {split} split (its splits: {', '.join(self.index['splits'])})")
        return TokenStream(self.folder, entry, _DTYPES[self.index["dtype"]])

    def check_tokenizer(self, tokenizer) -> None:
        """A clear error if `tokenizer` would not read these ids as the tokenizer that wrote them."""
        if tokenizer_fingerprint(tokenizer) != self.index["tokenizer"]["fingerprint"]:
            raise UserError(f"the shards in {self.folder} were made with another tokenizer "
                            f"({self.index['tokenizer']['source']}) than this run's; tokenize the data with "
                            "the model's tokenizer (spikingmamba tokenize --tokenizer MODEL_DIR)")
