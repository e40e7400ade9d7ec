"""Orders in which training reads its rows: endless streams of row indices, one permutation per epoch.

Stream position `p` is row `perm_e[i]` with `e, i = divmod(p, n_rows)`; both orders are pure
functions of (seed, position), so a run resumed at a recorded position reads what the uninterrupted
run would have read.

- `BatchOrder`: `torch.randperm` per epoch, for rows held in memory (8 bytes per row per epoch);
- `ShuffledOrder`: a keyed permutation computed one index at a time (a Feistel network), for rows
  memory-mapped from token shards, where a stored permutation of billions of tokens' rows would cost
  memory that grows with the corpus.
"""

from __future__ import annotations

import torch

from spikingmamba.data.dataset import PackedDataset
from spikingmamba.data.shards import MemmapRows

_M64 = (1 << 64) - 1
_ROUNDS = 4


class BatchOrder:
    """Endless stream of row indices: epoch e is a permutation of the rows seeded by (seed, e)."""

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.seed = n_rows, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))}
        return self._cache[epoch]

    def take(self, start: int, count: int) -> torch.Tensor:
        """Indices at stream positions [start, start + count)."""
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n_rows)
            out.append(int(self._epoch(epoch)[i]))
        return torch.tensor(out, dtype=torch.long)


def _mix(z: int) -> int:
    """splitmix64's finaliser: a bijective scramble of 64-bit integers."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class ShuffledOrder:
    """Endless stream of row indices in constant memory: epoch e permutes the rows with a
    `_ROUNDS`-round Feistel network keyed by (seed, e) on the smallest domain of 4^h >= n_rows
    indices, walking the cycle past indices >= n_rows (a bijection of the domain restricted this way
    stays a bijection of [0, n_rows))."""

    def __init__(self, n_rows: int, seed: int):
        if n_rows < 1:
            raise ValueError(f"n_rows must be at least 1, got {n_rows}")
        self.n_rows, self.seed = n_rows, seed
        self.half_bits = max(1, ((n_rows - 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half_bits) - 1

    def _permute(self, key: int, i: int) -> int:
        x = i
        while True:
            left, right = x >> self.half_bits, x & self.mask
            for r in range(_ROUNDS):
                left, right = right, left ^ (_mix(key ^ (r << 56) ^ right) & self.mask)
            x = (left << self.half_bits) | right
            if x < self.n_rows:
                return x

    def take(self, start: int, count: int) -> torch.Tensor:
        """Indices at stream positions [start, start + count)."""
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n_rows)
            out.append(self._permute(_mix(_mix(self.seed) ^ epoch), i))
        return torch.tensor(out, dtype=torch.long)


def row_order(examples, seed: int) -> BatchOrder | ShuffledOrder:
    """The order of a training run over `examples` (a split, `len` examples): `ShuffledOrder` for
    rows memory-mapped from token shards, else `BatchOrder`."""
    mapped = isinstance(examples, PackedDataset) and isinstance(examples.rows, MemmapRows)
    return (ShuffledOrder if mapped else BatchOrder)(len(examples), seed)
