"""Preference pairs: read and check `prompt` / `chosen` / `rejected` records, tokenise them into rows.

File format: JSON lines, one object per pair, with string fields `prompt`, `chosen` and `rejected`
(the format of common preference datasets; other fields are kept out of the way and ignored).
The completion follows the prompt directly: the text scored is `prompt + chosen`, tokenised as the
prompt's tokens followed by the completion's tokens (so the prompt boundary is exact). No special
token is added.

Bad records are errors that name the record (1-based, blank lines not counted) and its line:
    not JSON / not an object / a field missing or not a string / an empty (or all-space) field /
    chosen == rejected / a prompt that leaves no room for a completion token in `max_tokens`
With `skip_invalid=True` such records are skipped instead and counted by reason in
`PreferenceStats.skipped` (reported in the run's result): nothing is dropped silently.
A completion that does not fit after its prompt is cut to fit and counted in `truncated_*`; a pair
whose two completions become identical by that cut is skipped as invalid (or an error).

Tokenised pairs (`PreferencePairs`, the training loop's `Examples` for the DPO task), T = max_tokens:
    ids          (n, 2, T)  prompt + chosen, then prompt + rejected token ids, right-padded with `pad_id`
    prompt_len   (n, 2)     prompt tokens of each sequence
    total_len    (n, 2)     prompt + completion tokens of each sequence
`batch(indices)` stacks the chosen then the rejected sequences into one `PairBatch` (2b, l).
Right padding is safe: Mamba is causal, so padding never changes the logits of real tokens.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from spikingmamba.errors import UserError
from spikingmamba.utils.io import read_text

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: str
    chosen: str
    rejected: str
    number: int  # 1-based record number in the file
    line: int    # 1-based line number


@dataclass
class PreferenceStats:
    """What reading and tokenising a preference file kept, cut and skipped (all counted)."""

    records: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)   # reason -> count
    truncated_chosen: int = 0
    truncated_rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "used": self.used, "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values()), "truncated_chosen": self.truncated_chosen,
                "truncated_rejected": self.truncated_rejected}


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _where(path: Path, number: int, line: int) -> str:
    return f"{path}: record {number} (line {line})"


def _check_record(obj: Any) -> tuple[str, str, str]:
    if not isinstance(obj, dict):
        raise _Invalid("not an object", f"expected a JSON object with {', '.join(FIELDS)}, got "
                       f"{type(obj).__name__}")
    for name in FIELDS:
        if name not in obj:
            raise _Invalid(f"missing {name}", f'the field "{name}" is missing (a record needs '
                           f"{', '.join(FIELDS)})")
        if not isinstance(obj[name], str):
            raise _Invalid(f"{name} not a string", f'the field "{name}" must be a string, got '
                           f"{type(obj[name]).__name__}")
        if not obj[name].strip():
            raise _Invalid(f"empty {name}", f'the field "{name}" is empty')
    if obj["chosen"] == obj["rejected"]:
        raise _Invalid("chosen == rejected", "chosen and rejected are the same text: the pair prefers nothing")
    return obj["prompt"], obj["chosen"], obj["rejected"]


def read_preferences(path: str | Path, skip_invalid: bool = False,
                     stats: PreferenceStats | None = None) -> list[PreferenceRecord]:
    """Read and check a preference .jsonl file (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"preference file {path} does not exist")
    stats = stats if stats is not None else PreferenceStats()
    records: list[PreferenceRecord] = []
    number = 0
    try:
        lines = read_text(path, "preferences file").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err})") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        number += 1
        stats.records += 1
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _Invalid("not JSON", f"not valid JSON ({err.msg})") from None
            prompt, chosen, rejected = _check_record(obj)
        except _Invalid as bad:
            if not skip_invalid:
                raise UserError(f"{_where(path, number, line_no)}: {bad}; fix the record, or pass "
                                "--skip-invalid to skip bad records (they are counted)") from None
            stats.skipped[bad.reason] += 1
            continue
        records.append(PreferenceRecord(prompt, chosen, rejected, number, line_no))
    if not records:
        raise UserError(f"{path} holds no usable preference records ({stats.records} read, "
                        f"{sum(stats.skipped.values())} skipped)")
    return records


def split_records(records: list[PreferenceRecord], heldout_fraction: float,
                  seed: int) -> tuple[list[PreferenceRecord], list[PreferenceRecord]]:
    """(train, held-out) by record, in file order; `round(n * fraction)` (at least 1) held out."""
    if len(records) < 2:
        raise UserError(f"need at least 2 preference records to hold one out for evaluation, got {len(records)}")
    n_heldout = min(len(records) - 1, max(1, round(len(records) * heldout_fraction)))
    heldout = set(random.Random(seed).sample(range(len(records)), n_heldout))
    return ([r for i, r in enumerate(records) if i not in heldout],
            [r for i, r in enumerate(records) if i in heldout])


class TokenizedPair(NamedTuple):
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def tokenize_pair(record: PreferenceRecord, tokenizer, max_tokens: int, stats: PreferenceStats) -> TokenizedPair:
    """Token ids of the prompt and both completions, the completions cut to fit `max_tokens`.

    Raises `_Invalid` (caught by `tokenize_records`) for a prompt that leaves no room.
    """
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt, chosen, rejected = encode(record.prompt), encode(record.chosen), encode(record.rejected)
    room = max_tokens - len(prompt)
    if room < 1:
        raise _Invalid("prompt too long", f"the prompt has {len(prompt)} tokens; with seq_len {max_tokens} "
                       "(prompt + completion) it leaves no room for a completion token. Shorten the prompt "
                       "or raise seq_len")
    if len(chosen) > room:
        chosen, stats.truncated_chosen = chosen[:room], stats.truncated_chosen + 1
    if len(rejected) > room:
        rejected, stats.truncated_rejected = rejected[:room], stats.truncated_rejected + 1
    if chosen == rejected:
        raise _Invalid("chosen == rejected after truncation",
                       f"chosen and rejected are the same in their first {room} tokens (all that fits after "
                       f"the prompt in seq_len {max_tokens}): the pair prefers nothing. Raise seq_len")
    return TokenizedPair(prompt, chosen, rejected)


class PairBatch(NamedTuple):
    """Chosen then rejected sequences stacked, trimmed to the longest: the model sees (2b, l)."""

    input_ids: torch.Tensor    # (2b, l)   chosen rows first, then rejected rows
    target_ids: torch.Tensor   # (2b, l)   input_ids shifted by one
    mask: torch.Tensor         # (2b, l)   1 where the target is a completion token
    lengths: torch.Tensor      # (2b,)     total tokens (prompt + completion) of each sequence

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


class PreferencePairs:
    """Tokenised preference pairs in the layout of the module docstring; the DPO task's `Examples`."""

    def __init__(self, pairs: list[TokenizedPair], max_tokens: int, pad_id: int):
        self.ids = torch.full((len(pairs), 2, max_tokens), pad_id, dtype=torch.long)
        self.prompt_len = torch.zeros(len(pairs), 2, dtype=torch.long)
        self.total_len = torch.zeros(len(pairs), 2, dtype=torch.long)
        for i, pair in enumerate(pairs):
            for k, completion in enumerate((pair.chosen, pair.rejected)):
                ids = pair.prompt + completion
                self.ids[i, k, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                self.prompt_len[i, k], self.total_len[i, k] = len(pair.prompt), len(ids)

    @property
    def seq_len(self) -> int:
        """T: the most tokens of prompt + completion."""
        return self.ids.shape[2]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, indices: torch.Tensor, device: torch.device | str | None = None) -> PairBatch:
        """Pairs `indices` as one `PairBatch` on `device`."""
        ids = torch.cat([self.ids[indices, 0], self.ids[indices, 1]]).to(device)              # (2b, T)
        prompt_len = torch.cat([self.prompt_len[indices, 0], self.prompt_len[indices, 1]]).to(device)  # (2b,)
        total_len = torch.cat([self.total_len[indices, 0], self.total_len[indices, 1]]).to(device)    # (2b,)
        used = int(total_len.max())
        ids = ids[:, :used]                                                         # trim shared padding
        positions = torch.arange(1, used, device=ids.device)                        # index of each target token
        mask = (positions >= prompt_len[:, None]) & (positions < total_len[:, None])  # (2b, used - 1)
        return PairBatch(ids[:, :-1], ids[:, 1:], mask, total_len)


def tokenize_records(records: list[PreferenceRecord], tokenizer, max_tokens: int, skip_invalid: bool,
                     stats: PreferenceStats, path: str | Path = "preferences") -> PreferencePairs:
    """All usable records as `PreferencePairs`; bad ones raise or are skipped (counted)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise UserError("the tokenizer has neither a pad nor an eos token to pad preference pairs with")
    pairs = []
    for record in records:
        try:
            pairs.append(tokenize_pair(record, tokenizer, max_tokens, stats))
        except _Invalid as bad:
            if not skip_invalid:
                raise UserError(f"{_where(Path(path), record.number, record.line)}: {bad}; or pass "
                                "--skip-invalid to skip such records (they are counted)") from None
            stats.skipped[bad.reason] += 1
    stats.used += len(pairs)
    if not pairs:
        raise UserError(f"{path}: no preference record fits (all {len(records)} were skipped)")
    return PreferencePairs(pairs, max_tokens, pad_id)
