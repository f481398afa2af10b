"""What every record reader shares: the error a record is quarantined with, the two formats and how one
is told from the other, and the limits of the integer fields (monitor.intake.records parses a record,
monitor.intake.engine_stats the engine's acceptance stats it may carry)."""

from __future__ import annotations

from typing import Any, Literal

RecordFormat = Literal["auto", "specwatch", "openai"]
MAX_TOKENS_LIMIT = 2**31 - 1  # an Integer column
MAX_TOKEN_IDS = 2**20
"""token ids one side of an exchange may carry (no context is longer)"""


class RecordError(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


def detect_format(value: Any) -> Literal["specwatch", "openai"]:
    if not isinstance(value, dict):
        raise RecordError(f"record must be a JSON object, got {type(value).__name__}")
    if "request" in value or "response" in value:
        return "openai"
    if "completion" in value or "messages" in value or "prompt" in value:
        return "specwatch"
    raise RecordError("unknown format: no completion/messages/prompt and no request/response")
