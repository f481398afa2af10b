"""Stratified, deterministic sampling: a per-segment rate and a per-segment hourly cap.

Whether a record passes rate r is decided by a hash of its sample key, so the same traffic
always gives the same sample; the hourly cap keeps a loud segment from crowding out rare ones.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from datetime import datetime

HASH_SPACE = float(1 << 64)

Bucket = tuple[str, datetime]


def key_fraction(sample_key: str) -> float:
    """A uniform number in [0, 1) fixed by the sample key."""
    digest = hashlib.blake2b(sample_key.encode("ascii"), digest_size=8, person=b"specwatch-sample").digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def passes_rate(sample_key: str, rate: float) -> bool:
    return key_fraction(sample_key) < rate


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class HourlyCap:
    """Admits records while their (segment, hour) bucket is under its cap; counts admissions."""

    def __init__(self, already_kept: Mapping[Bucket, int]) -> None:
        self._already_kept = already_kept
        self.admitted: Counter[Bucket] = Counter()

    def admit(self, segment: str, moment: datetime, cap: int) -> bool:
        bucket = (segment, hour_of(moment))
        if cap and self._already_kept.get(bucket, 0) + self.admitted[bucket] >= cap:
            return False
        self.admitted[bucket] += 1
        return True
