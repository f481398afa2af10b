"""Batches halve and retry when the device runs out of memory (tested with an injected forward)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from decoder.batching import map_in_batches


class FitsAtMost:
    """A forward that raises torch.OutOfMemoryError above a batch size, like a real device."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, chunk: Sequence[int]) -> list[int]:
        self.sizes.append(len(chunk))
        if len(chunk) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [item * 10 for item in chunk]


def test_out_of_memory_halves_the_batch_and_keeps_order() -> None:
    forward = FitsAtMost(limit=3)
    results = map_in_batches(forward, list(range(20)), batch_size=16)
    assert results == [item * 10 for item in range(20)]
    assert forward.sizes[:3] == [16, 8, 4]
    assert max(size for size in forward.sizes[3:]) <= 3


def test_single_item_that_does_not_fit_raises() -> None:
    with pytest.raises(torch.OutOfMemoryError):
        map_in_batches(FitsAtMost(limit=0), [1, 2], batch_size=2)


def test_token_budget_limits_batch_size() -> None:
    forward = FitsAtMost(limit=100)
    items = [100, 100, 100, 10, 10, 10, 10]
    map_in_batches(forward, items, batch_size=8, max_batch_tokens=250, tokens_of=lambda item: item)
    assert forward.sizes == [2, 2, 3]
