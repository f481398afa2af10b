"""Running a batched forward over many items, halving the batch when the device runs out of memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def map_in_batches(
    forward: Callable[[Sequence[ItemT]], list[ResultT]],
    items: Sequence[ItemT],
    *,
    batch_size: int,
    max_batch_tokens: int | None = None,
    tokens_of: Callable[[ItemT], int] | None = None,
) -> list[ResultT]:
    """forward() over consecutive chunks of `items`, results in item order.

    A chunk holds at most `batch_size` items and, when `max_batch_tokens` is given, at most that
    many padded tokens (items should come longest first: the first item sets the width). When
    forward raises torch.OutOfMemoryError the chunk is retried with half the items, and the
    smaller size is kept for the rest; a single item that does not fit re-raises."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    results: list[ResultT] = []
    start = 0
    while start < len(items):
        size = batch_size
        if max_batch_tokens is not None and tokens_of is not None:
            size = max(1, min(size, max_batch_tokens // max(1, tokens_of(items[start]))))
        chunk = items[start : start + size]
        try:
            results.extend(forward(chunk))
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            batch_size = max(1, len(chunk) // 2)
            if max_batch_tokens is not None:
                max_batch_tokens = max(1, max_batch_tokens // 2)
            log.warning("out of memory on a batch of %d; retrying with %d", len(chunk), batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start += len(chunk)
    return results
