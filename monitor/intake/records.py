"""Traffic records: decode one raw line or object and normalise it, or say exactly why not.

Reasons name fields and types, never the values: a reason is logged and stored, a value may be PII.

Two formats, auto-detected per record:

- specwatch: {"id", "timestamp", "messages" | "prompt", "completion", "model", "temperature",
  "metadata": {"tenant", "region", "route", "language", ...}}
- openai: a gateway's chat-completions log, {"request": {"messages", "model", "temperature", ...},
  "response": {"id", "created", "choices": [{"message": {"content"}}], "usage"}, "metadata"?}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

RecordFormat = Literal["auto", "specwatch", "openai"]
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class RecordError(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


@dataclass(frozen=True)
class TrafficRecord:
    """One exchange, normalised but not yet redacted."""

    messages: list[dict[str, str]]
    completion: str
    id: str | None = None
    timestamp: datetime | None = None
    model: str | None = None
    temperature: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "specwatch"


def decode_line(raw: bytes, max_bytes: int) -> Any:
    """Bytes of one JSONL line -> JSON value, or RecordError naming what is wrong."""
    if len(raw) > max_bytes:
        raise RecordError(f"record is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RecordError("malformed JSON: nested too deeply") from None


def detect_format(value: Any) -> Literal["specwatch", "openai"]:
    if not isinstance(value, dict):
        raise RecordError(f"record must be a JSON object, got {type(value).__name__}")
    if "request" in value or "response" in value:
        return "openai"
    if "completion" in value or "messages" in value or "prompt" in value:
        return "specwatch"
    raise RecordError("unknown format: no completion/messages/prompt and no request/response")


def parse_record(value: Any, fmt: RecordFormat = "auto") -> TrafficRecord:
    """A decoded JSON value -> TrafficRecord, or RecordError with the reason."""
    chosen = detect_format(value) if fmt == "auto" else fmt
    if not isinstance(value, dict):
        raise RecordError(f"record must be a JSON object, got {type(value).__name__}")
    if chosen == "openai":
        return _parse_openai(value)
    return _parse_specwatch(value)


def _parse_specwatch(value: dict[str, Any]) -> TrafficRecord:
    if "messages" in value:
        messages = _messages(value["messages"], "messages")
    elif "prompt" in value:
        messages = [{"role": "user", "content": _text(value["prompt"], "prompt")}]
    else:
        raise RecordError("missing field: messages or prompt")
    if "completion" not in value:
        raise RecordError("missing field: completion")
    return TrafficRecord(
        messages=messages,
        completion=_completion(value["completion"], "completion"),
        id=_optional_id(value.get("id"), "id"),
        timestamp=_timestamp(value.get("timestamp"), "timestamp"),
        model=_optional_str(value.get("model"), "model"),
        temperature=_temperature(value.get("temperature"), "temperature"),
        metadata=_metadata(value.get("metadata"), "metadata"),
        format="specwatch",
    )


def _parse_openai(value: dict[str, Any]) -> TrafficRecord:
    request, response = value.get("request"), value.get("response")
    if not isinstance(request, dict):
        raise RecordError("request: missing or not an object")
    if not isinstance(response, dict):
        raise RecordError("response: missing or not an object")
    if "messages" in request:
        messages = _messages(request["messages"], "request.messages")
    elif "prompt" in request:
        messages = [{"role": "user", "content": _text(request["prompt"], "request.prompt")}]
    else:
        raise RecordError("missing field: request.messages")
    metadata = _metadata(value.get("metadata"), "metadata")
    if isinstance(request.get("user"), str) and "user" not in metadata:
        metadata["user"] = request["user"]
    return TrafficRecord(
        messages=messages,
        completion=_openai_completion(response),
        id=_optional_id(value.get("id", response.get("id")), "id"),
        timestamp=_timestamp(value.get("timestamp", response.get("created")), "timestamp"),
        model=_optional_str(request.get("model", response.get("model")), "request.model"),
        temperature=_temperature(request.get("temperature"), "request.temperature"),
        metadata=metadata,
        format="openai",
    )


def _openai_completion(response: dict[str, Any]) -> str:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise RecordError("response.choices: missing or empty")
    first = choices[0]
    if not isinstance(first, dict):
        raise RecordError("response.choices[0]: not an object")
    if "message" in first:
        message = first["message"]
        if not isinstance(message, dict):
            raise RecordError("response.choices[0].message: not an object")
        return _completion(message.get("content"), "response.choices[0].message.content")
    return _completion(first.get("text"), "response.choices[0].text")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: must be a non-empty list")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise RecordError(f"{where}[{index}]: not an object")
        role = item.get("role")
        if role not in ROLES:
            raise RecordError(f"{where}[{index}].role: not one of {sorted(ROLES)}")
        content = _content(item.get("content"), f"{where}[{index}].content")
        messages.append({"role": role, "content": content})
    return messages


def _content(value: Any, where: str) -> str:
    """Message content: a string, or OpenAI content parts whose text parts are joined."""
    if value is None:
        return ""
    if isinstance(value, list):
        texts = [part.get("text") for part in value if isinstance(part, dict) and part.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise RecordError(f"{where}: text part without a string")
        return "\n".join(texts)  # type: ignore[arg-type]
    return _text(value, where)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _completion(value: Any, where: str) -> str:
    if value is None:
        raise RecordError(f"missing field: {where}")
    text = _text(value, where)
    if not text.strip():
        raise RecordError(f"empty completion ({where})")
    return text


def _optional_str(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _optional_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"{where}: expected a string or integer, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > 256:
        raise RecordError(f"{where}: must be 1 to 256 characters")
    return text


def _temperature(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: expected a number, got {type(value).__name__}")
    if not 0 <= value <= 10:
        raise RecordError(f"{where}: {value} is outside [0, 10]")
    return float(value)


def _timestamp(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{where}: expected ISO 8601 text or epoch seconds, got bool")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise RecordError(f"{where}: {value} is not a valid epoch time") from None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RecordError(f"{where}: text is not ISO 8601") from None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    raise RecordError(f"{where}: expected ISO 8601 text or epoch seconds, got {type(value).__name__}")


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
    metadata = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise RecordError(f"{where}.{key}: expected a string or number, got {type(item).__name__}")
        metadata[str(key)] = str(item)
    return metadata
