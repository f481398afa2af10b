"""Per-sample counts as columns: what the statistics read, in memory that grows by ~100 bytes a sample.

    columns = ResultColumns.from_results(results)          # from SampleResult objects (tests, small sets)
    builder = ColumnsBuilder(); builder.add_chunk(...); builder.build()   # from database rows, chunk by chunk
    columns.window(start, end)                             # the samples with start < occurred_at <= end

One row per sample, sorted by (occurred_at, sample_id); segments are indices into `segments`. The counts are
those of `decoder.metrics.AcceptCounts` (A, R, D, S, E and the per-position and histogram vectors), so every
metric is computed from sums of these columns exactly as `AcceptCounts` defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import compress
from typing import Any

import numpy as np
import numpy.typing as npt

from decoder.counts import AcceptCounts

_SCALARS = ("sample_id", "occurred", "accepted", "rejected", "drafted", "steps", "eos_ended", "tokens", "window_k")
_FLAGS = ("from_ids", "retokenized_differs", "rejected_estimated")
_INTEGERS = ("segment", "sample_id", "tokens", "window_k")
VECTOR_DTYPE = np.float32  # per-sample step counts (exact up to 2**24 steps per sample); sums are float64


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
    window_k: np.ndarray  # int64: the k the counts were measured with (replay.window; an engine's k), -1 unknown
    per_position: np.ndarray  # float32 (samples, positions): steps whose i-th draft was accepted
    histogram: np.ndarray  # float32 (samples, k + 1): steps that accepted exactly a drafts (sums: float64)
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
        results = list(results)
        counts = [result.counts for result in results]
        builder = ColumnsBuilder()
        builder.add_chunk(
            segment=[result.segment for result in results],
            sample_id=[result.sample_id for result in results],
            occurred=[result.occurred_at.timestamp() for result in results],
            accepted=[c.accepted for c in counts],
            rejected=[c.rejected for c in counts],
            drafted=[c.drafted for c in counts],
            steps=[c.steps for c in counts],
            eos_ended=[c.eos_ended for c in counts],
            tokens=[result.completion_tokens for result in results],
            per_position=[c.accepted_per_position for c in counts],
            histogram=[c.accept_histogram for c in counts],
            from_ids=[result.from_ids for result in results],
            retokenized_differs=[result.retokenized_equal is False for result in results],
            rejected_estimated=[result.rejected_estimated for result in results],
        )
        return builder.build()

    def take(self, rows: np.ndarray | slice) -> ResultColumns:
        """The rows selected by an index or boolean array (segments keep their indices)."""
        values = {f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "segments"}
        return ResultColumns(segments=self.segments, **values)

    def window(self, start: datetime, end: datetime) -> ResultColumns:
        """Samples with start < occurred_at <= end."""
        return self.take(self.rows_between(start, end))  # views, not copies

    def rows_between(self, start: datetime, end: datetime) -> slice:
        """The rows with start < occurred_at <= end (rows are time-sorted: a slice)."""
        low = int(np.searchsorted(self.occurred, start.timestamp(), side="right"))
        high = int(np.searchsorted(self.occurred, end.timestamp(), side="right"))
        return slice(low, high)

    def counts(self, rows: np.ndarray | slice | None = None) -> AcceptCounts:
        """The summed counts of the rows (all rows when None)."""
        pick: Any = slice(None) if rows is None else rows
        return AcceptCounts(
            accepted=float(self.accepted[pick].sum()),
            rejected=float(self.rejected[pick].sum()),
            drafted=float(self.drafted[pick].sum()),
            steps=float(self.steps[pick].sum()),
            eos_ended=float(self.eos_ended[pick].sum()),
            accept_histogram=_trimmed(self.histogram[pick].sum(axis=0, dtype=np.float64)),
            accepted_per_position=_trimmed(self.per_position[pick].sum(axis=0, dtype=np.float64)),
        )

    def sample_counts(self, row: int) -> AcceptCounts:
        """One sample's counts (vectors without trailing zeros)."""
        return AcceptCounts(
            accepted=float(self.accepted[row]),
            rejected=float(self.rejected[row]),
            drafted=float(self.drafted[row]),
            steps=float(self.steps[row]),
            eos_ended=float(self.eos_ended[row]),
            accept_histogram=_trimmed(self.histogram[row]),
            accepted_per_position=_trimmed(self.per_position[row]),
        )

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
    """Collects samples chunk by chunk into compact arrays; `build` sorts them by time."""

    def __init__(self) -> None:
        self._segments: dict[str, int] = {}
        self._chunks: list[dict[str, np.ndarray]] = []

    def add_chunk(
        self,
        *,
        segment: Sequence[str],
        sample_id: npt.ArrayLike,
        occurred: npt.ArrayLike,
        accepted: npt.ArrayLike,
        rejected: npt.ArrayLike,
        drafted: npt.ArrayLike,
        steps: npt.ArrayLike,
        eos_ended: npt.ArrayLike,
        tokens: npt.ArrayLike,
        per_position: Sequence[Sequence[float]],
        histogram: Sequence[Sequence[float]],
        window_k: npt.ArrayLike | None = None,
        from_ids: npt.ArrayLike | None = None,
        retokenized_differs: npt.ArrayLike | None = None,
        rejected_estimated: npt.ArrayLike | None = None,
    ) -> None:
        """One chunk of samples, each argument holding one value per sample (flags default to False)."""
        count = len(segment)
        if count == 0:
            return
        indices = self._segments
        no = np.zeros(count, dtype=bool)
        self._chunks.append(
            {
                "segment": np.fromiter((indices.setdefault(name, len(indices)) for name in segment), np.int64, count),
                "sample_id": np.asarray(sample_id, dtype=np.int64),
                "occurred": np.asarray(occurred, dtype=np.float64),
                "accepted": np.asarray(accepted, dtype=np.float64),
                "rejected": np.asarray(rejected, dtype=np.float64),
                "drafted": np.asarray(drafted, dtype=np.float64),
                "steps": np.asarray(steps, dtype=np.float64),
                "eos_ended": np.asarray(eos_ended, dtype=np.float64),
                "tokens": np.asarray(tokens, dtype=np.int64),
                "window_k": np.full(count, -1, dtype=np.int64)
                if window_k is None
                else np.asarray(window_k, dtype=np.int64),
                "from_ids": no if from_ids is None else np.asarray(from_ids, dtype=bool),
                "retokenized_differs": no
                if retokenized_differs is None
                else np.asarray(retokenized_differs, dtype=bool),
                "rejected_estimated": no if rejected_estimated is None else np.asarray(rejected_estimated, dtype=bool),
                "per_position": _matrix(per_position),
                "histogram": _matrix(histogram),
            }
        )

    def build(self) -> ResultColumns:
        """The collected chunks as one time-sorted ResultColumns; each field is joined and ordered in turn
        and its chunks released, so the peak is about one field above the result itself."""
        order = np.lexsort((self._joined("sample_id"), self._joined("occurred")))
        in_order = bool(np.all(order[:-1] < order[1:]))
        arrays = {}
        for name in ("segment", *_SCALARS, *_FLAGS, "per_position", "histogram"):
            joined = self._joined(name, release=True)
            arrays[name] = joined if in_order else joined[order]
        self._chunks.clear()
        segments = tuple(sorted(self._segments, key=self._segments.__getitem__))
        return ResultColumns(segments=segments, **arrays)

    def _joined(self, name: str, release: bool = False) -> np.ndarray:
        parts = [chunk.pop(name) if release else chunk[name] for chunk in self._chunks]
        if name in ("per_position", "histogram"):
            return _stack(parts)
        dtype = bool if name in _FLAGS else np.int64 if name in _INTEGERS else np.float64
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _matrix(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """The vectors as rows of a matrix as wide as the longest, zero-padded (rows without counts stay zero)."""
    lengths = np.fromiter(map(len, vectors), dtype=np.intp, count=len(vectors))
    width = int(lengths.max(initial=0))
    matrix = np.zeros((len(vectors), width), dtype=VECTOR_DTYPE)
    full = lengths == width
    if width and full.any():  # the common case, one window k throughout: one call
        matrix[full] = np.array(list(compress(vectors, full)), dtype=VECTOR_DTYPE)
    for row in np.flatnonzero((lengths > 0) & ~full).tolist():  # shorter: measured with a smaller k
        matrix[row, : lengths[row]] = vectors[row]
    return matrix


def _stack(matrices: Sequence[np.ndarray]) -> np.ndarray:
    width = max((matrix.shape[1] for matrix in matrices), default=0)
    rows = sum(matrix.shape[0] for matrix in matrices)
    stacked = np.zeros((rows, width), dtype=VECTOR_DTYPE)
    start = 0
    for matrix in matrices:
        stacked[start : start + matrix.shape[0], : matrix.shape[1]] = matrix
        start += matrix.shape[0]
    return stacked
