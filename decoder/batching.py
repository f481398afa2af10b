"""Packing variable-length sequences into rows and rows into batches, and running a forward over
them that halves the batch when the device runs out of memory.

Sequences are packed into rows as wide as the longest (best-fit decreasing over all of them, each
whole in one row); rows sorted by the room they use are cut into batches as wide as their widest
row. Few computed positions then belong to no sequence: right padding, one sequence per row,
leaves about a third of a heavy-tailed claim's positions empty (tests/decoder/test_batching.py,
bench/decoder_gpu.py). A model whose state runs along the row rather than through attention (a
recurrent or hybrid target) needs one sequence per row: `pack=False`."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class PackedLayout:
    """Where each sequence of a batch sits: row `rows[i]` from position `starts[i]`, in
    `num_rows` rows of `width` positions."""

    width: int
    num_rows: int
    rows: tuple[int, ...]
    starts: tuple[int, ...]

    @property
    def computed_positions(self) -> int:
        return self.num_rows * self.width

    @property
    def one_per_row(self) -> bool:
        """Every row holds one sequence from position 0 (the right-padded layout)."""
        return self.num_rows == len(self.rows)


@dataclass(frozen=True)
class PlannedBatch:
    """One forward pass: the sequences it takes (indices into the planned lengths, in layout
    order) and where they sit."""

    items: tuple[int, ...]
    layout: PackedLayout


def _pack_into_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` per row: longest first, each into the row whose free room fits it most
    tightly, else a new row of `capacity` positions; a sequence longer than that gets a row of
    its own. Within a row, sequences follow one another from position 0."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = max(capacity, length), len(rows)
            rows.append([])
        rows[row].append(index)
        if room > length:
            bisect.insort(free, (room - length, row))
    return rows


def plan_batches(
    lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int | None = None, pack: bool = True
) -> list[PlannedBatch]:
    """Batches of at most `batch_size` rows and `max_batch_tokens` positions (rows x width; a row
    wider than that runs alone) covering every sequence once. Packed rows are as wide as the
    longest sequence (at most the token budget); `pack=False`: one sequence per row."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not lengths:
        return []
    if any(length < 1 for length in lengths):
        raise ValueError("every sequence needs at least one token")
    if pack:
        capacity = max(lengths) if max_batch_tokens is None else min(max(lengths), max_batch_tokens)
        rows = _pack_into_rows(lengths, capacity)
    else:
        rows = [[index] for index in range(len(lengths))]
    used = [sum(lengths[i] for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -used[r])
    batches: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        width = used[order[start]]
        size = batch_size if max_batch_tokens is None else max(1, min(batch_size, max_batch_tokens // width))
        chosen = order[start : start + size]
        items: list[int] = []
        row_of: list[int] = []
        starts: list[int] = []
        for batch_row, row in enumerate(chosen):
            offset = 0
            for index in rows[row]:
                items.append(index)
                row_of.append(batch_row)
                starts.append(offset)
                offset += lengths[index]
        layout = PackedLayout(width=width, num_rows=len(chosen), rows=tuple(row_of), starts=tuple(starts))
        batches.append(PlannedBatch(items=tuple(items), layout=layout))
        start += len(chosen)
    return batches


def map_in_packed_batches(
    forward: Callable[[Sequence[ItemT], PackedLayout], list[ResultT]],
    items: Sequence[ItemT],
    lengths: Sequence[int],
    *,
    batch_size: int,
    max_batch_tokens: int | None = None,
    pack: bool = True,
) -> list[ResultT]:
    """forward(chunk, layout) over the batches `plan_batches` makes of `items` (`lengths` theirs);
    results in item order. When forward raises torch.OutOfMemoryError, what is left is planned
    again with half the rows and half the token budget, and the smaller limits are kept; a single
    sequence that does not fit re-raises."""
    if len(lengths) != len(items):
        raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
    results: dict[int, ResultT] = {}
    pending = list(range(len(items)))
    while pending:
        plan = plan_batches(
            [lengths[i] for i in pending], batch_size=batch_size, max_batch_tokens=max_batch_tokens, pack=pack
        )
        for batch in plan:
            indices = [pending[i] for i in batch.items]
            try:
                outputs = forward([items[i] for i in indices], batch.layout)
            except torch.OutOfMemoryError:
                if len(indices) == 1:
                    raise
                computed = batch.layout.computed_positions
                batch_size = max(1, batch.layout.num_rows // 2)
                max_batch_tokens = max(
                    1, (computed if max_batch_tokens is None else min(max_batch_tokens, computed)) // 2
                )
                log.warning(
                    "out of memory on %d sequences in %d rows; retrying with at most %d rows and %d positions",
                    len(indices),
                    batch.layout.num_rows,
                    batch_size,
                    max_batch_tokens,
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                break
            results.update(zip(indices, outputs, strict=True))
        pending = [i for i in pending if i not in results]
    return [results[i] for i in range(len(items))]
