"""A preallocated key/value cache for Qwen2.5 decoders.

One tensor per layer for keys and one for values, shaped (batch, kv_heads, capacity, head_dim), filled
left to right. Rows of a padded batch share one fill length; `valid` marks which slots hold real
tokens (None when every slot below `length` does). Decoding writes into the preallocated slots and
allocates nothing until the capacity runs out, when the buffers grow by doubling. The owner of a
long-lived cache (a conversation) gives memory back with `shrink` once most of it lies unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0
    valid: torch.Tensor | None = None  # (batch, capacity) bool, or None when all of [0, length) is valid

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        self._reallocate(max(needed, 2 * self.capacity))

    def shrink(self, capacity: int) -> None:
        """Reallocate to `capacity` slots (never fewer than `length`), keeping the filled part, so
        the memory above it goes back to the allocator."""
        capacity = max(capacity, self.length)
        if capacity < self.capacity:
            self._reallocate(capacity)

    def _reallocate(self, capacity: int) -> None:
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                moved = old.new_zeros(old.shape[:2] + (capacity,) + old.shape[3:])
                moved[:, :, : self.length] = old[:, :, : self.length]
                store[i] = moved
        if self.valid is not None:
            moved_valid = self.valid.new_zeros((self.valid.shape[0], capacity))
            moved_valid[:, : self.length] = self.valid[:, : self.length]
            self.valid = moved_valid

    def mark(self, start: int, count: int, valid_rows: torch.Tensor | None = None) -> None:
        """Record which of the slots [start, start + count) hold real tokens.

        valid_rows: (batch, count) bool, or None when all of them do.
        """
        if valid_rows is None:
            if self.valid is not None:
                self.valid[:, start : start + count] = True
            return
        if self.valid is None:
            self.valid = torch.zeros((self.batch_size, self.capacity), dtype=torch.bool, device=valid_rows.device)
            self.valid[:, :start] = True
        self.valid[:, start : start + count] = valid_rows

    def copy_prefix(self, length: int, capacity: int | None = None) -> KVCache:
        """A new one-row-per-row cache holding this cache's first `length` slots, with room for
        `capacity` (at least `length`)."""
        if length > self.length:
            raise ValueError(f"the cache holds {self.length} slots, {length} were asked for")
        capacity = max(length, capacity or length, 1)
        copy = KVCache(
            keys=[k.new_zeros(k.shape[:2] + (capacity,) + k.shape[3:]) for k in self.keys],
            values=[v.new_zeros(v.shape[:2] + (capacity,) + v.shape[3:]) for v in self.values],
            length=length,
        )
        for target, source in zip(copy.keys + copy.values, self.keys + self.values):
            target[:, :, :length] = source[:, :, :length]
        if self.valid is not None:
            copy.valid = self.valid.new_zeros((self.valid.shape[0], capacity))
            copy.valid[:, :length] = self.valid[:, :length]
        return copy

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows where `keep` (batch,) is True (a finished row leaves the batch)."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        if self.valid is not None:
            self.valid = self.valid[keep]

    def truncate(self, length: int) -> None:
        """Forget everything from slot `length` on (used to roll back a cancelled turn)."""
        self.length = min(self.length, length)

    def reset(self) -> None:
        self.length = 0
        self.valid = None

    def free(self) -> None:
        """Release the buffers (the cache holds nothing and cannot be used again)."""
        self.keys = []
        self.values = []
        self.length = 0
        self.valid = None
