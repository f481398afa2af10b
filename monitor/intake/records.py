"""Traffic records: decode one raw line or object and normalise it, or say exactly why not.

Reasons name fields and types, never the values nor the keys of free-form objects: a reason is
logged and stored, and a value or a metadata key may be PII. Every string is checked for what no
database column can hold (NUL, unpaired surrogates) before anything else reads it.

Two formats, auto-detected per record:

- specwatch: {"id", "timestamp", "messages" | "prompt", "completion", "model", "temperature",
  "finish_reason", "max_tokens", "prompt_token_ids", "completion_token_ids",
  "metadata": {"tenant", "region", "route", "language", ...}}
- openai: a gateway's chat-completions log, {"request": {"messages", "model", "temperature",
  "max_tokens" | "max_completion_tokens", ...}, "response": {"id", "created",
  "choices": [{"message": {"content"}, "finish_reason"}], "usage"}, "metadata"?}

A streamed openai response is logged as the list of its chunks (`chat.completion.chunk` or completions
chunks): the completion is the concatenation of choice 0's `delta.content` (or `text`), the finish
reason the last one sent, id / created / model the first sent, completion token ids the concatenation
of the chunks' (vLLM streams each chunk's new ids), prompt token ids the first sent.

Either format may carry the serving engine's own per-request speculative-decoding stats (vLLM's
`metrics.speculative_decoding`, SGLang's spec_* meta_info, TensorRT-LLM's per-choice
`speculative_decoding`, or specwatch's top-level `engine_acceptance`; see monitor.intake.engine_stats):
`engine_acceptance` holds them, `engine_acceptance_problem` says why a payload that was present was
refused. A refused payload does not make the record unusable.

A `prompt` (specwatch, or the completions API's `request.prompt`) is raw text the engine read as
is: the record says so (`raw_prompt`), and replay encodes it without the chat template.

Token ids, where the engine returned them, are the tokens it read and emitted: vLLM's
`return_token_ids` (`response.prompt_token_ids` for chat, `choices[0].prompt_token_ids` for
completions, `choices[0].token_ids`), SGLang's `output_ids` (on the choice or the response) and
`response_token_ids`. Replay prefers them to re-tokenized text (decoder.exchange).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.intake.engine_stats import EngineAcceptance, EnginePayloadError, engine_acceptance
from monitor.intake.record_format import (
    MAX_TOKEN_IDS,
    MAX_TOKENS_LIMIT,
    RecordError,
    RecordFormat,
    detect_format,
)

__all__ = ["MAX_TOKENS_LIMIT", "MAX_TOKEN_IDS", "RecordError", "RecordFormat", "TrafficRecord", "detect_format"]

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
# NUL (PostgreSQL text cannot hold it) and UTF-16 surrogates (a lone one cannot be encoded as UTF-8).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
# How a generation ended, as stored: a known label or nothing (the input is free text). Aliases
# map other engines' words (Anthropic's stop_reason) onto OpenAI's.
FINISH_REASONS = frozenset({"stop", "length", "eos", "tool_calls", "function_call", "content_filter"})
_FINISH_ALIASES = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
PROMPT_ID_FIELDS = ("prompt_token_ids",)
COMPLETION_ID_FIELDS = ("token_ids", "output_ids", "response_token_ids")


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
    raw_prompt: bool = False
    """the input is one raw prompt (no chat template): `messages` holds it as a single user turn"""
    finish_reason: str | None = None
    """one of FINISH_REASONS, or None when absent or unknown (read as a natural stop)"""
    max_tokens: int | None = None
    """the request's cap on generated tokens, when the log carries it"""
    prompt_token_ids: list[int] | None = None
    """the prompt as the engine's tokenizer produced it (chat template applied), when logged"""
    completion_token_ids: list[int] | None = None
    """the generated tokens as the engine emitted them, when logged"""
    engine_acceptance: EngineAcceptance | None = None
    """the serving engine's own acceptance counts for this request, when the record carries them"""
    engine_acceptance_problem: str | None = None
    """why an engine payload that the record carries was refused (then `engine_acceptance` is None)"""


def decode_line(raw: bytes, max_bytes: int) -> Any:
    """Bytes of one JSONL line -> JSON value, or RecordError naming what is wrong."""
    if len(raw) > max_bytes:
        raise RecordError(f"record is over the {max_bytes}-byte limit ({len(raw)} bytes read)")
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
    except ValueError:  # an integer with more digits than int() converts (sys.get_int_max_str_digits)
        raise RecordError("malformed JSON: a number with too many digits") from None


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
    acceptance, problem = _engine_payload(value, "specwatch")
    return TrafficRecord(
        raw_prompt="messages" not in value,
        finish_reason=finish_reason(value.get("finish_reason")),
        max_tokens=_max_tokens(value.get("max_tokens"), "max_tokens"),
        prompt_token_ids=token_ids(value.get("prompt_token_ids"), "prompt_token_ids"),
        completion_token_ids=token_ids(value.get("completion_token_ids"), "completion_token_ids"),
        messages=messages,
        completion=_completion(value["completion"], "completion"),
        id=_optional_id(value.get("id"), "id"),
        timestamp=_timestamp(value.get("timestamp"), "timestamp"),
        model=_optional_str(value.get("model"), "model"),
        temperature=_temperature(value.get("temperature"), "temperature"),
        metadata=_metadata(value.get("metadata"), "metadata"),
        format="specwatch",
        engine_acceptance=acceptance,
        engine_acceptance_problem=problem,
    )


def _parse_openai(value: dict[str, Any]) -> TrafficRecord:
    request, response = value.get("request"), value.get("response")
    if not isinstance(request, dict):
        raise RecordError("request: missing or not an object")
    choice_where = "response.choices[0]"
    if isinstance(response, list):
        response, choice_where = _assembled_stream(response), "response[*].choices[0]"
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
        metadata["user"] = _text(request["user"], "request.user")
    first = _first_choice(response)
    acceptance, problem = _engine_payload(value, "openai")
    return TrafficRecord(
        raw_prompt="messages" not in request,
        finish_reason=finish_reason(first.get("finish_reason")) or finish_reason(first.get("stop_reason")),
        max_tokens=_request_max_tokens(request),
        prompt_token_ids=_first_ids([(first, "response.choices[0]"), (response, "response")], PROMPT_ID_FIELDS),
        completion_token_ids=_first_ids([(first, "response.choices[0]"), (response, "response")], COMPLETION_ID_FIELDS),
        messages=messages,
        completion=_openai_completion(first, choice_where),
        id=_optional_id(value.get("id", response.get("id")), "id"),
        timestamp=_timestamp(value.get("timestamp", response.get("created")), "timestamp"),
        model=_optional_str(request.get("model", response.get("model")), "request.model"),
        temperature=_temperature(request.get("temperature"), "request.temperature"),
        metadata=metadata,
        format="openai",
        engine_acceptance=acceptance,
        engine_acceptance_problem=problem,
    )


def _first_choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise RecordError("response.choices: missing or empty")
    first = choices[0]
    if not isinstance(first, dict):
        raise RecordError("response.choices[0]: not an object")
    return first


def _openai_completion(first: dict[str, Any], where: str) -> str:
    for key in ("message", "delta"):
        if key in first:
            message = first[key]
            if not isinstance(message, dict):
                raise RecordError(f"{where}.{key}: not an object")
            return _completion(message.get("content"), f"{where}.{key}.content")
    return _completion(first.get("text"), f"{where}.text")


def _engine_payload(value: dict[str, Any], fmt: RecordFormat) -> tuple[EngineAcceptance | None, str | None]:
    """The engine's acceptance stats and no problem, or none and why the payload present was refused."""
    try:
        return engine_acceptance(value, fmt), None
    except EnginePayloadError as exc:
        return None, str(exc)


def _assembled_stream(chunks: list[Any]) -> dict[str, Any]:
    """A streamed response, logged as its chunks, -> the one response they stand for (choice 0 only)."""
    if not chunks:
        raise RecordError("response: an empty list of stream chunks")
    stream = _Stream()
    for index, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise RecordError(f"response[{index}]: not an object")
        stream.add(chunk, f"response[{index}]")
    return stream.response()


@dataclass
class _Stream:
    """What the chunks of one stream said so far about choice 0."""

    header: dict[str, Any] = field(default_factory=dict)
    """id, created, model, prompt_token_ids: the first value sent"""
    choice: dict[str, Any] = field(default_factory=dict)
    """finish_reason, stop_reason: the last value sent; prompt_token_ids: the first"""
    texts: list[str] = field(default_factory=list)
    chat: bool = False
    completion_ids: dict[str, list[int]] = field(default_factory=dict)
    seen_choice: bool = False

    def add(self, chunk: dict[str, Any], where: str) -> None:
        for key in ("id", "created", "model", *PROMPT_ID_FIELDS):
            if self.header.get(key) is None and chunk.get(key) is not None:
                self.header[key] = chunk[key]
        found = _stream_choice(chunk, where)
        if found is not None:
            self._add_choice(*found)

    def _add_choice(self, choice: dict[str, Any], where: str) -> None:
        self.seen_choice = True
        for key in ("finish_reason", "stop_reason"):
            if choice.get(key) is not None:
                self.choice[key] = choice[key]
        for key in PROMPT_ID_FIELDS:
            if self.choice.get(key) is None and choice.get(key) is not None:
                self.choice[key] = choice[key]
        self.chat = self.chat or "delta" in choice
        text = _chunk_text(choice, where)
        if text is not None:
            self.texts.append(text)
        self._add_ids(choice, where)

    def _add_ids(self, choice: dict[str, Any], where: str) -> None:
        for name in COMPLETION_ID_FIELDS:
            if choice.get(name) is not None:
                ids = token_ids(choice[name], f"{where}.{name}") or []
                self.completion_ids.setdefault(name, []).extend(ids)
                return

    def response(self) -> dict[str, Any]:
        if not self.seen_choice:
            raise RecordError("response: no stream chunk carries choice 0")
        content = "".join(self.texts) if self.texts else None
        choice = {"delta": {"content": content}} if self.chat else {"text": content}
        return {**self.header, "choices": [{**choice, **self.choice, **self.completion_ids}]}


def _chunk_text(choice: dict[str, Any], where: str) -> str | None:
    """The text one chunk's choice adds: `delta.content` (chat) or `text` (completions)."""
    if "delta" not in choice:
        return None if choice.get("text") is None else _text(choice["text"], f"{where}.text")
    delta = choice["delta"]
    if delta is None:
        return None
    if not isinstance(delta, dict):
        raise RecordError(f"{where}.delta: not an object")
    return None if delta.get("content") is None else _text(delta["content"], f"{where}.delta.content")


def _stream_choice(chunk: dict[str, Any], where: str) -> tuple[dict[str, Any], str] | None:
    """Choice 0 of one chunk: the choice whose index is 0 (or that has none); a stream interleaves the
    choices of n > 1, and the last chunk may carry no choice (usage)."""
    choices = chunk.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list):
        raise RecordError(f"{where}.choices: expected a list, got {type(choices).__name__}")
    for index, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise RecordError(f"{where}.choices[{index}]: not an object")
        if choice.get("index") in (0, None):
            return choice, f"{where}.choices[{index}]"
    return None


def finish_reason(value: Any) -> str | None:
    """A known finish label, or None: the value is free input text (or vLLM's stop token id), so
    anything outside FINISH_REASONS and its aliases is dropped rather than stored or quarantined."""
    if not isinstance(value, str) or len(value) > 32:
        return None
    label = value.strip().lower()
    label = _FINISH_ALIASES.get(label, label)
    return label if label in FINISH_REASONS else None


def _request_max_tokens(request: dict[str, Any]) -> int | None:
    """The completion cap: `max_completion_tokens` (newer chat API) before `max_tokens`."""
    if request.get("max_completion_tokens") is not None:
        return _max_tokens(request["max_completion_tokens"], "request.max_completion_tokens")
    return _max_tokens(request.get("max_tokens"), "request.max_tokens")


def _max_tokens(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where}: expected an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_TOKENS_LIMIT:
        raise RecordError(f"{where}: outside [1, {MAX_TOKENS_LIMIT}]")
    return value


def _first_ids(places: list[tuple[dict[str, Any], str]], names: tuple[str, ...]) -> list[int] | None:
    """The first of `names` present (not null) in the first place that has one, checked."""
    for place, where in places:
        for name in names:
            if place.get(name) is not None:
                return token_ids(place[name], f"{where}.{name}")
    return None


def token_ids(value: Any, where: str) -> list[int] | None:
    """A list of token ids (integers in [0, 2^31)), None when absent or empty, or RecordError."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RecordError(f"{where}: expected a list of token ids, got {type(value).__name__}")
    if len(value) > MAX_TOKEN_IDS:
        raise RecordError(f"{where}: {len(value)} token ids, over the limit of {MAX_TOKEN_IDS}")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_TOKENS_LIMIT:
            raise RecordError(f"{where}[{index}]: not a token id (an integer in [0, {MAX_TOKENS_LIMIT}])")
    return list(value) or None


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: must be a non-empty list")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise RecordError(f"{where}[{index}]: not an object")
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
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
        return _storable("\n".join(texts), where)  # type: ignore[arg-type]
    return _text(value, where)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a string, got {type(value).__name__}")
    return _storable(value, where)


def _storable(text: str, where: str) -> str:
    """The text, unless it holds a NUL or an unpaired surrogate (JSON's \\ud800 without its pair)."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return text
    what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
    raise RecordError(f"{where}: contains {what} at character {found.start()}")


def _digits(value: int, where: str) -> str:
    try:
        return str(value)
    except ValueError:  # over sys.get_int_max_str_digits
        raise RecordError(f"{where}: integer with too many digits") from None


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
    text = _text(value, where) if isinstance(value, str) else _digits(value, where)
    if not text or len(text) > 256:
        raise RecordError(f"{where}: must be 1 to 256 characters")
    return text


def _temperature(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: expected a number, got {type(value).__name__}")
    if not 0 <= value <= 10:
        raise RecordError(f"{where}: outside [0, 10]")
    return float(value)


def _timestamp(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{where}: expected ISO 8601 text or epoch seconds, got bool")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        except (OverflowError, OSError, ValueError):
            raise RecordError(f"{where}: not a valid epoch time") from None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(_text(value, where).replace("Z", "+00:00"))
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise RecordError(f"{where}: text is not ISO 8601 (or not in years 1-9999 UTC)") from None
    raise RecordError(f"{where}: expected ISO 8601 text or epoch seconds, got {type(value).__name__}")


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
    metadata = {}
    for index, (key, item) in enumerate(value.items()):
        # the key is the sender's text and may be PII: a reason names the entry by its place only
        entry = f"{where} entry #{index + 1}"
        metadata[_text(key, f"{entry} key")] = _metadata_value(item, entry)
    return metadata


def _metadata_value(value: Any, where: str) -> str:
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return _digits(value, where)
    if isinstance(value, float):
        return str(value)
    raise RecordError(f"{where}: expected a string or number, got {type(value).__name__}")
