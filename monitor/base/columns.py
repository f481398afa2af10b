"""Per-sample counts as columns: what the statistics read, in memory that grows by ~100 bytes a sample.

    columns = ResultColumns.from_results(results)          # from SampleResult objects (tests, small sets)
    columns = ColumnsBuilder(); builder.add(...); builder.build()   # from database rows, chunk by chunk
    columns.window(start, end)                             # the samples with start < occurred_at <= end

One row per sample, sorted by (occurred_at, sample_id); segments are indices into `segments`. The counts are
those of `decoder.metrics.AcceptCounts` (A, R, D, S, E and the per-position and histogram vectors), so every
metric is computed from sums of these columns exactly as `AcceptCounts` defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from decoder.metrics import AcceptCounts

_SCALARS = ("sample_id", "occurred", "accepted", "rejected", "drafted", "steps", "eos_ended", "tokens")
_FLAGS = ("from_ids", "retokenized_differs", "rejected_estimated")


@dataclass(frozen=True)
class ResultColumns:
    segments: tuple[str, ...]
    segment: np.ndarray  # int64 index into segments
    sample_id: np.ndarray  # int64
    occurred: np.ndarray  # float64, seconds since the epoch (UTC)
    accepted: np.ndarray  # float64 ...
    rejected: np.ndarray
    drafted: np.ndarray
    steps: np.ndarray
    eos_ended: np.ndarray
    tokens: np.ndarray  # completion tokens
    per_position: np.ndarray  # float64 (samples, positions): steps whose i-th draft was accepted
    histogram: np.ndarray  # float64 (samples, k + 1): steps that accepted exactly a drafts
    from_ids: np.ndarray  # bool: replayed from the engine's logged token ids
    retokenized_differs: np.ndarray  # bool: ... and re-tokenizing the text gives other ids
    rejected_estimated: np.ndarray  # bool: R is an engine's histogram estimate

    def __len__(self) -> int:
        return int(self.sample_id.shape[0])

    @classmethod
    def empty(cls) -> ResultColumns:
        return ColumnsBuilder().build()

    @classmethod
    def from_results(cls, results: Iterable[Any]) -> ResultColumns:
        """From `monitor.base.stats.SampleResult`s."""
        builder = ColumnsBuilder()
        for result in results:
            counts = result.counts
            builder.add(
                sample_id=result.sample_id,
                segment=result.segment,
                occurred=result.occurred_at.timestamp(),
                accepted=counts.accepted,
                rejected=counts.rejected,
                drafted=counts.drafted,
                steps=counts.steps,
                eos_ended=counts.eos_ended,
                per_position=counts.accepted_per_position,
                histogram=counts.accept_histogram,
                tokens=result.completion_tokens,
                from_ids=result.from_ids,
                retokenized_differs=result.retokenized_equal is False,
                rejected_estimated=result.rejected_estimated,
            )
        return builder.build()

    def take(self, rows: np.ndarray) -> ResultColumns:
        """The rows selected by an index or boolean array (segments keep their indices)."""
        values = {f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "segments"}
        return ResultColumns(segments=self.segments, **values)

    def window(self, start: datetime, end: datetime) -> ResultColumns:
        """Samples with start < occurred_at <= end (rows are time-sorted: a slice)."""
        low = int(np.searchsorted(self.occurred, start.timestamp(), side="right"))
        high = int(np.searchsorted(self.occurred, end.timestamp(), side="right"))
        return self.take(np.arange(low, high))

    def counts(self, rows: np.ndarray | slice | None = None) -> AcceptCounts:
        """The summed counts of the rows (all rows when None)."""
        pick: Any = slice(None) if rows is None else rows
        return AcceptCounts(
            accepted=float(self.accepted[pick].sum()),
            rejected=float(self.rejected[pick].sum()),
            drafted=float(self.drafted[pick].sum()),
            steps=float(self.steps[pick].sum()),
            eos_ended=float(self.eos_ended[pick].sum()),
            accept_histogram=_trimmed(self.histogram[pick].sum(axis=0)),
            accepted_per_position=_trimmed(self.per_position[pick].sum(axis=0)),
        )

    def sample_counts(self, row: int) -> AcceptCounts:
        return self.counts(np.array([row]))

    def occurred_at(self, row: int) -> datetime:
        return datetime.fromtimestamp(float(self.occurred[row]), tz=UTC)


def _trimmed(vector: np.ndarray) -> list[float]:
    """A summed vector as a list, without the trailing zeros padding added (AcceptCounts sums vectors of
    different lengths by padding)."""
    values = [float(x) for x in vector]
    while values and values[-1] == 0.0:
        values.pop()
    return values


class ColumnsBuilder:
    """Collects samples row by row (or in chunks) into compact arrays; `build` sorts them by time."""

    _CHUNK = 50_000

    def __init__(self) -> None:
        self._segments: dict[str, int] = {}
        self._rows: dict[str, list[Any]] = {name: [] for name in ("segment", *_SCALARS, *_FLAGS)}
        self._vectors: dict[str, list[Sequence[float]]] = {"per_position": [], "histogram": []}
        self._chunks: list[dict[str, np.ndarray]] = []

    def add(
        self,
        *,
        sample_id: int,
        segment: str,
        occurred: float,
        accepted: float,
        rejected: float,
        drafted: float,
        steps: float,
        eos_ended: float,
        per_position: Sequence[float],
        histogram: Sequence[float],
        tokens: int,
        from_ids: bool = False,
        retokenized_differs: bool = False,
        rejected_estimated: bool = False,
    ) -> None:
        index = self._segments.setdefault(segment, len(self._segments))
        row = self._rows
        row["segment"].append(index)
        row["sample_id"].append(sample_id)
        row["occurred"].append(occurred)
        row["accepted"].append(accepted)
        row["rejected"].append(rejected)
        row["drafted"].append(drafted)
        row["steps"].append(steps)
        row["eos_ended"].append(eos_ended)
        row["tokens"].append(tokens)
        row["from_ids"].append(from_ids)
        row["retokenized_differs"].append(retokenized_differs)
        row["rejected_estimated"].append(rejected_estimated)
        self._vectors["per_position"].append(per_position)
        self._vectors["histogram"].append(histogram)
        if len(row["segment"]) >= self._CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._rows["segment"]:
            return
        chunk = {name: np.asarray(values) for name, values in self._rows.items()}
        for name, vectors in self._vectors.items():
            chunk[name] = _matrix(vectors)
        self._chunks.append(chunk)
        for values in self._rows.values():
            values.clear()
        for vectors in self._vectors.values():
            vectors.clear()

    def build(self) -> ResultColumns:
        self._flush()
        dtypes = {"segment": np.int64, "sample_id": np.int64, "tokens": np.int64}
        arrays: dict[str, np.ndarray] = {}
        for name in ("segment", *_SCALARS, *_FLAGS):
            parts = [chunk[name] for chunk in self._chunks]
            dtype = bool if name in _FLAGS else dtypes.get(name, np.float64)
            arrays[name] = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
        for name in ("per_position", "histogram"):
            arrays[name] = _stack([chunk[name] for chunk in self._chunks])
        self._chunks.clear()
        order = np.lexsort((arrays["sample_id"], arrays["occurred"]))
        if not np.all(order[:-1] < order[1:]):
            arrays = {name: values[order] for name, values in arrays.items()}
        segments = tuple(sorted(self._segments, key=self._segments.__getitem__))
        return ResultColumns(segments=segments, **arrays)


def _matrix(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    width = max((len(vector) for vector in vectors), default=0)
    matrix = np.zeros((len(vectors), width))
    for row, vector in enumerate(vectors):
        if vector:
            matrix[row, : len(vector)] = vector
    return matrix


def _stack(matrices: Sequence[np.ndarray]) -> np.ndarray:
    width = max((matrix.shape[1] for matrix in matrices), default=0)
    rows = sum(matrix.shape[0] for matrix in matrices)
    stacked = np.zeros((rows, width))
    start = 0
    for matrix in matrices:
        stacked[start : start + matrix.shape[0], : matrix.shape[1]] = matrix
        start += matrix.shape[0]
    return stacked
