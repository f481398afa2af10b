"""Groups of traffic that statistics and findings address: all traffic, each full segment, and roll-ups.

    grouping = Grouping.of(["tenant=a/region=eu/lang=zh", "tenant=b/region=eu/lang=en"], [["region", "lang"]])
    grouping.names          # ('*', 'tenant=a/region=eu/lang=zh', ..., 'lang=zh', 'region=eu', 'tenant=a', ...)
    grouping.levels         # one Level per kind of group: each segment belongs to at most one group per level

A full segment is every configured label a record has, plus its language
(`tenant=h:1f2e/region=sg/route=chat/lang=zh`). With many tenants, regions and routes the full segments are
too small to say anything, while a shift that crosses them (Chinese traffic sinking acceptance for every
tenant) shows only when they are pooled. A roll-up pools every segment that carries the same values for a
label set: `lang=zh` is all Chinese traffic, `region=eu/lang=zh` the Chinese traffic of one region. Every
single label is rolled up; `stats.rollups` adds label sets. A roll-up is named like a segment, its parts in
the segments' own order, so thresholds, routes and silences address it with the same `key=value/...`
syntax.

A segment that lacks one of a set's labels is in no group of that set. When a roll-up has the name of a
full segment (records without some label), the roll-up keeps the name: it holds that segment's samples
and those of the segments that carry the same labels and more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ALL_SEGMENTS = "*"
ALL, SEGMENT, ROLLUP = "all", "segment", "rollup"  # kinds of group


def segment_parts(segment: str) -> list[tuple[str, str]]:
    """(key, value) of each `key=value` part, in order; parts without "=" are skipped."""
    parts = []
    for part in segment.split("/"):
        key, sep, value = part.partition("=")
        if sep:
            parts.append((key, value))
    return parts


def contains(group: str, segment: str) -> bool:
    """The group ("*", a segment or a roll-up) holds the segment: every part of its name is one of the segment's."""
    return group == ALL_SEGMENTS or set(group.split("/")) <= set(segment.split("/"))


@dataclass(frozen=True)
class Level:
    """One partition of the segments: `of_segment[i]` is the group (an index into `Grouping.names`) that
    segment i belongs to on this level, -1 for none."""

    kind: str
    labels: tuple[str, ...]
    of_segment: np.ndarray


@dataclass(frozen=True)
class Grouping:
    segments: tuple[str, ...]
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    levels: tuple[Level, ...]

    @classmethod
    def of(cls, segments: Sequence[str], rollups: Iterable[Sequence[str]] = ()) -> Grouping:
        """All traffic, each segment, each single label and each configured label set over `segments`."""
        names: list[str] = [ALL_SEGMENTS]
        kinds: list[str] = [ALL]
        index: dict[str, int] = {ALL_SEGMENTS: 0}
        parts = [segment_parts(segment) for segment in segments]
        levels = [Level(ALL, (), np.zeros(len(segments), dtype=np.int64))]
        label_sets = _label_sets(parts, rollups)
        rolled = {_name(p, labels) for labels in label_sets for p in parts} - {None}

        def group_of(name: str, kind: str) -> int:
            if name not in index:
                index[name] = len(names)
                names.append(name)
                kinds.append(kind)
            return index[name]

        full = [-1 if segment in rolled else group_of(segment, SEGMENT) for segment in segments]
        levels.append(Level(SEGMENT, (), np.array(full, dtype=np.int64)))
        for labels in label_sets:
            of_segment = []
            for segment_parts_ in parts:
                name = _name(segment_parts_, labels)
                of_segment.append(-1 if name is None else group_of(name, ROLLUP))
            levels.append(Level(ROLLUP, labels, np.array(of_segment, dtype=np.int64)))
        return cls(tuple(segments), tuple(names), tuple(kinds), tuple(levels))

    def groups_of(self, segment: int) -> list[int]:
        """The groups segment `segment` (an index into `segments`) belongs to."""
        return [int(level.of_segment[segment]) for level in self.levels if level.of_segment[segment] >= 0]


def _label_sets(parts: Sequence[Sequence[tuple[str, str]]], rollups: Iterable[Sequence[str]]) -> list[tuple[str, ...]]:
    """Each label the segments carry alone, then the configured sets (distinct, at least one label)."""
    seen: list[str] = []
    for segment_parts_ in parts:
        for key, _ in segment_parts_:
            if key not in seen:
                seen.append(key)
    sets: list[tuple[str, ...]] = [(key,) for key in seen]
    for labels in rollups:
        chosen = tuple(dict.fromkeys(labels))
        if chosen and frozenset(chosen) not in {frozenset(s) for s in sets}:
            sets.append(chosen)
    return sets


def _name(parts: Sequence[tuple[str, str]], labels: Sequence[str]) -> str | None:
    """The roll-up of `labels` a segment with these parts belongs to (parts in the segment's order), or None
    when the segment lacks one of the labels."""
    chosen = [(key, value) for key, value in parts if key in labels]
    if len({key for key, _ in chosen}) < len(labels):
        return None
    return "/".join(f"{key}={value}" for key, value in chosen)
