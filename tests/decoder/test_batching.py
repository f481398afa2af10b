"""Packing sequences into rows and rows into batches, and batches that halve and retry when the
device runs out of memory (tested with an injected forward)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
import torch

from decoder.batching import PackedLayout, map_in_packed_batches, plan_batches


class FitsAtMost:
    """A forward that raises torch.OutOfMemoryError above a number of sequences or of computed
    positions, like a real device."""

    def __init__(self, sequences: int = 10**9, positions: int = 10**9) -> None:
        self.sequences = sequences
        self.positions = positions
        self.sizes: list[int] = []
        self.layouts: list[PackedLayout] = []

    def __call__(self, chunk: Sequence[int], layout: PackedLayout) -> list[int]:
        self.sizes.append(len(chunk))
        self.layouts.append(layout)
        if len(chunk) > self.sequences or layout.computed_positions > self.positions:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [item * 10 for item in chunk]


def assert_valid(layout: PackedLayout, lengths: Sequence[int]) -> None:
    """Every sequence lies inside its row, rows start at 0 and hold no gaps, no two overlap."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for row, start, length in zip(layout.rows, layout.starts, lengths, strict=True):
        assert 0 <= row < layout.num_rows and start + length <= layout.width
        spans.setdefault(row, []).append((start, start + length))
    assert set(spans) == set(range(layout.num_rows))
    for row_spans in spans.values():
        row_spans.sort()
        assert row_spans[0][0] == 0
        assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(row_spans))


def heavy_tailed(count: int, seed: int) -> list[int]:
    generator = random.Random(seed)
    return [1 + int(200 * generator.lognormvariate(0, 1)) for _ in range(count)]


def test_out_of_memory_halves_the_batch_and_keeps_order() -> None:
    forward = FitsAtMost(sequences=3)
    items = list(range(1, 21))
    results = map_in_packed_batches(forward, items, items, batch_size=16, pack=False)
    assert results == [item * 10 for item in items]
    assert forward.sizes[:3] == [16, 8, 4]
    assert max(size for size in forward.sizes[3:]) <= 3


def test_out_of_memory_on_packed_rows_repacks_narrower() -> None:
    forward = FitsAtMost(positions=300)
    items = [min(250, length) for length in heavy_tailed(40, seed=3)]
    results = map_in_packed_batches(forward, items, items, batch_size=64, max_batch_tokens=20_000)
    assert results == [item * 10 for item in items]
    assert forward.layouts[0].computed_positions > 300
    done = [layout for layout in forward.layouts if layout.computed_positions <= 300]
    assert sum(len(layout.rows) for layout in done) == len(items)


def test_single_item_that_does_not_fit_raises() -> None:
    with pytest.raises(torch.OutOfMemoryError):
        map_in_packed_batches(FitsAtMost(sequences=0), [2, 1], [2, 1], batch_size=2)


def test_short_sequences_share_rows_as_wide_as_the_longest() -> None:
    lengths = [1, 6, 10, 3, 4, 5]
    [batch] = plan_batches(lengths, batch_size=8)
    assert_valid(batch.layout, [lengths[i] for i in batch.items])
    assert sorted(batch.items) == list(range(6))
    assert batch.layout.width == 10 and batch.layout.num_rows == 3 and not batch.layout.one_per_row
    assert batch.layout.computed_positions == 30  # 29 tokens: one empty position instead of 31


def test_one_per_row_is_right_padding_longest_first() -> None:
    lengths = [3, 9, 5]
    [batch] = plan_batches(lengths, batch_size=8, pack=False)
    assert batch.items == (1, 2, 0) and batch.layout.one_per_row
    assert (batch.layout.width, batch.layout.starts) == (9, (0, 0, 0))


def test_token_budget_closes_a_batch_before_a_new_row_would_pass_it() -> None:
    lengths = [100, 100, 100, 10, 10, 10, 10]
    batches = plan_batches(lengths, batch_size=8, max_batch_tokens=250)
    assert [batch.layout.num_rows for batch in batches] == [2, 2]
    assert all(batch.layout.computed_positions <= 250 for batch in batches)
    assert sorted(i for batch in batches for i in batch.items) == list(range(7))


def test_a_sequence_longer_than_the_budget_runs_alone_and_the_rest_pack_within_it() -> None:
    lengths = [300, 20, 20, 20]
    batches = plan_batches(lengths, batch_size=8, max_batch_tokens=50)
    assert batches[0].items == (0,) and batches[0].layout.width == 300
    assert all(batch.layout.computed_positions <= 50 for batch in batches[1:])


def test_packing_heavy_tailed_lengths_leaves_little_padding() -> None:
    """Log-normal chat lengths in claims of 64: one sequence per row leaves about a third of the
    positions empty, packed rows a few percent; every layout valid, every sequence once."""
    packed = padded = real = 0
    for seed in range(8):
        lengths = heavy_tailed(64, seed)
        real += sum(lengths)
        for pack in (True, False):
            batches = plan_batches(lengths, batch_size=16, max_batch_tokens=16_384, pack=pack)
            assert sorted(i for batch in batches for i in batch.items) == list(range(64))
            for batch in batches:
                assert_valid(batch.layout, [lengths[i] for i in batch.items])
            computed = sum(batch.layout.computed_positions for batch in batches)
            packed, padded = (packed + computed, padded) if pack else (packed, padded + computed)
    assert (padded - real) / padded > 0.25
    assert (packed - real) / packed < 0.08
