"""Traffic segments: stable strings such as `tenant=h:1f2e3d4c5b6a/region=sg/lang=zh`.

A segment is the configured metadata keys that the record has, in configured order, then
the language. Values of hashed keys (tenant and user ids by default) appear only as salted
hashes, so no raw identifier reaches the database.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from monitor.config import Secret

HASH_PREFIX = "h:"


class ValueHasher:
    """Salted, keyed hashes of identifiers: equal ids give equal hashes under one salt."""

    def __init__(self, salt: Secret, hashed_keys: Iterable[str]) -> None:
        self._salt = salt.reveal().encode("utf-8")
        self.hashed_keys = frozenset(hashed_keys)

    def hash(self, value: str) -> str:
        digest = hmac.new(self._salt, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:16]

    def protect(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """Metadata with every hashed key's value replaced by its hash."""
        return {key: self.hash(value) if key in self.hashed_keys else value for key, value in metadata.items()}


def escape_part(value: str) -> str:
    """Keep '/' and '=' as separators only."""
    return value.replace("%", "%25").replace("/", "%2F").replace("=", "%3D").strip()


def segment_for(metadata: Mapping[str, str], language: str, keys: Iterable[str]) -> str:
    parts = [f"{key}={escape_part(metadata[key])}" for key in keys if metadata.get(key, "").strip()]
    parts.append(f"lang={escape_part(language)}")
    return "/".join(parts)
