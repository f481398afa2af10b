"""Traffic segments: stable strings such as `tenant=h:1f2e3d4c5b6a/region=sg/lang=zh`.

A segment is the configured metadata keys that the record has, in configured order, then
the language. Values of hashed keys (tenant and user ids by default) appear only as salted
hashes, so no raw identifier reaches the database; the caller redacts the other values (a segment
lands in alert labels and Slack). Control and format characters never reach a segment.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from monitor.base.config import Secret
from monitor.intake.redact import without_format_characters

HASH_PREFIX = "h:"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
    """Keep '/' and '=' as separators only; drop control and format characters."""
    visible = _CONTROL.sub("", without_format_characters(value))
    return visible.replace("%", "%25").replace("/", "%2F").replace("=", "%3D").strip()


def segment_for(metadata: Mapping[str, str], language: str, keys: Iterable[str]) -> str:
    values = {key: escape_part(metadata.get(key, "")) for key in keys}
    parts = [f"{key}={value}" for key, value in values.items() if value]
    parts.append(f"lang={escape_part(language)}")
    return "/".join(parts)
