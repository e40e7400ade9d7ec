"""The documents of a data set, streamed one at a time: memory holds a batch of them, never the corpus.

Sources, by what `source` is:
- `hf:NAME` (`hf:NAME:CONFIG` for a named configuration): a hub dataset, streamed by
  `datasets.load_dataset(..., streaming=True)`; needs the hub, fails with a clear error offline;
- a folder written by `datasets.Dataset.save_to_disk` (or a `DatasetDict` with a `train` split, or
  with a single split), read in batches from its memory-mapped Arrow files;
- a `.jsonl` file: one JSON object per line;
- a `.parquet` file, read one record batch at a time (pyarrow);
- any other file: UTF-8 text, documents separated by a blank line (an exact `\\n\\n`; `\\r\\n` line
  ends count as `\\n`).
Records of the structured formats give their `text_field` column. Documents are stripped of
surrounding whitespace; empty ones are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from spikingmamba.errors import UserError
from spikingmamba.utils.io import reading

HUB_PREFIX = "hf:"
_CHUNK_CHARS = 1 << 20   # characters of a text file read at a time
_BATCH_RECORDS = 1024    # records of a parquet file or datasets folder read at a time


def iter_documents(source: str | Path, text_field: str = "text", hub_split: str = "train") -> Iterator[str]:
    """Yield the non-empty, stripped documents of `source` in order (see the module docstring)."""
    if str(source).startswith(HUB_PREFIX):
        raw = _hub_documents(str(source)[len(HUB_PREFIX):], text_field, hub_split)
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(f"data path {path} does not exist")
        if path.is_dir():
            raw = _saved_dataset_documents(path, text_field)
        elif path.suffix == ".jsonl":
            raw = _jsonl_documents(path, text_field)
        elif path.suffix == ".parquet":
            raw = _parquet_documents(path, text_field)
        else:
            raw = _text_documents(path)
    for text in raw:
        if text and text.strip():
            yield text.strip()


def _text_documents(path: Path) -> Iterator[str]:
    """`text.replace("\\r\\n", "\\n").split("\\n\\n")` of the whole file, read a chunk at a time.

    The unsplit tail of what was read is carried into the next chunk, so the pieces are exactly
    those of splitting the whole text; a `\\r` at the end of a chunk waits for the next one.
    """
    carry, held = "", ""
    with reading(path, "data file"), path.open(encoding="utf-8", newline="") as f:  # errors name the file
        while chunk := f.read(_CHUNK_CHARS):
            new = held + chunk
            held = "\r" if new.endswith("\r") else ""
            pieces = (carry + new[:len(new) - len(held)].replace("\r\n", "\n")).split("\n\n")
            carry = pieces.pop()
            yield from pieces
    yield carry + held


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with reading(path, "data file"), path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f'{path}, line {line_no}: the record has no string "{text_field}" field')
            yield record[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # installed with datasets

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError kinds for a bad file
        raise UserError(f"{path} is not a readable parquet file ({err})") from err
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise UserError(f'{path} has no "{text_field}" column (its columns: {", ".join(names)})')
    for batch in parquet.iter_batches(batch_size=_BATCH_RECORDS, columns=[text_field]):
        yield from batch.column(0).to_pylist()


def _saved_dataset_documents(path: Path, text_field: str) -> Iterator[str]:
    import datasets  # slow to import; only this format needs it

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path} is a folder but not one written by datasets' save_to_disk ({err})") from err
    if isinstance(data, datasets.DatasetDict):
        if "train" in data:
            data = data["train"]
        elif len(data) == 1:
            data = next(iter(data.values()))
        else:
            raise UserError(f"{path} holds the splits {sorted(data)}: save the one to train on by itself")
    if text_field not in data.column_names:
        raise UserError(f'{path} has no "{text_field}" column (its columns: {", ".join(data.column_names)})')
    for batch in data.select_columns([text_field]).iter(batch_size=_BATCH_RECORDS):
        yield from batch[text_field]


def _hub_documents(spec: str, text_field: str, split: str) -> Iterator[str]:
    import datasets

    name, _, config = spec.partition(":")
    shown = f"{HUB_PREFIX}{spec} (split {split})"
    try:
        stream = iter(datasets.load_dataset(name, config or None, split=split, streaming=True))
        first = next(stream, None)
    except Exception as err:  # offline, unknown name, no such split: datasets raises many kinds
        said = " ".join(str(err).split())[:300]
        raise UserError(f"could not stream {shown} from the Hugging Face hub ({type(err).__name__}: {said}); "
                        "check the name and the network, or save the data set locally and pass its "
                        "path") from err
    if first is None:
        return
    if not isinstance(first.get(text_field), str):
        raise UserError(f'{shown}: the records have no string "{text_field}" field (fields: '
                        f'{", ".join(first)})')
    yield first[text_field]
    for record in stream:
        yield record[text_field]
