import json
from datetime import UTC, datetime

import pytest

from monitor.intake.records import RecordError, decode_line, detect_format, parse_record


def specwatch_record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": "req-1",
        "timestamp": "2026-11-28T10:00:00Z",
        "messages": [{"role": "user", "content": "hello"}],
        "completion": "hi there",
        "model": "qwen2.5-7b",
        "temperature": 0.0,
        "metadata": {"tenant": "acme", "region": "sg", "route": "chat"},
    }
    record.update(overrides)
    return record


def openai_record() -> dict[str, object]:
    return {
        "request": {
            "model": "gpt-x",
            "temperature": 0.7,
            "user": "u-42",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "什么是"}, {"type": "text", "text": "KV cache"}],
                },
            ],
        },
        "response": {
            "id": "chatcmpl-9",
            "created": 1764324000,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "缓存"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        },
    }


def test_specwatch_format() -> None:
    record = parse_record(specwatch_record())
    assert record.id == "req-1"
    assert record.timestamp == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert record.messages == [{"role": "user", "content": "hello"}]
    assert record.completion == "hi there"
    assert record.metadata == {"tenant": "acme", "region": "sg", "route": "chat"}


def test_prompt_instead_of_messages() -> None:
    value = specwatch_record(prompt="2+2?")
    del value["messages"]
    assert parse_record(value).messages == [{"role": "user", "content": "2+2?"}]


def test_openai_format() -> None:
    record = parse_record(openai_record())
    assert record.format == "openai"
    assert record.id == "chatcmpl-9"
    assert record.messages[1]["content"] == "什么是\nKV cache"
    assert record.completion == "缓存"
    assert record.temperature == 0.7
    assert record.metadata["user"] == "u-42"
    assert record.timestamp == datetime.fromtimestamp(1764324000, UTC)


def test_format_is_detected_per_record() -> None:
    assert detect_format(specwatch_record()) == "specwatch"
    assert detect_format(openai_record()) == "openai"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        ({"foo": 1}, "unknown format"),
        (specwatch_record(completion=""), "empty completion"),
        (specwatch_record(completion="   \n"), "empty completion"),
        (specwatch_record(completion=7), "completion: expected a string"),
        (specwatch_record(messages=[]), "messages: must be a non-empty list"),
        (specwatch_record(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (specwatch_record(temperature="hot"), "temperature: expected a number"),
        (specwatch_record(timestamp="yesterday"), "not ISO 8601"),
        (specwatch_record(metadata={"tenant": {"a": 1}}), "metadata entry #1: expected a string or number"),
        (specwatch_record(id=""), "id: must be 1 to 256"),
    ],
)
def test_bad_records_say_why(value: object, reason: str) -> None:
    with pytest.raises(RecordError, match=None) as caught:
        parse_record(value)
    assert reason in str(caught.value)


def test_missing_completion() -> None:
    value = specwatch_record()
    del value["completion"]
    with pytest.raises(RecordError, match="missing field: completion"):
        parse_record(value)


def test_openai_without_choices() -> None:
    value = openai_record()
    value["response"] = {"choices": []}
    with pytest.raises(RecordError, match=r"response\.choices"):
        parse_record(value)


def test_decode_line_errors() -> None:
    with pytest.raises(RecordError, match="invalid UTF-8 at byte 2"):
        decode_line(b'{"\xff": 1}', 1000)
    with pytest.raises(RecordError, match="malformed JSON"):
        decode_line(b'{"id": ', 1000)
    with pytest.raises(RecordError, match="over the 10-byte limit"):
        decode_line(json.dumps(specwatch_record()).encode(), 10)
    with pytest.raises(RecordError, match="nested too deeply"):
        decode_line(b"[" * 100_000, 1_000_000)


def test_reasons_never_echo_field_values() -> None:
    pii = "ana@corp.example +65 9123 4567"
    for value in (specwatch_record(messages=[{"role": pii, "content": "x"}]), specwatch_record(timestamp=pii)):
        with pytest.raises(RecordError) as caught:
            parse_record(value)
        assert "ana@corp" not in str(caught.value) and "9123" not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"completion": "x", "prompt": "y", "id": ' + b"7" * 5000 + b"}", "a number with too many digits"),
        (b'{"completion": "x", "prompt": "y", "temperature": ' + b"1" * 4400 + b"}", "too many digits"),
    ],
)
def test_numbers_too_long_for_int_are_a_record_error(line: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_line(line, 1_000_000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (specwatch_record(completion="ok \ud800"), "completion: contains an unpaired surrogate at character 3"),
        (specwatch_record(messages=[{"role": "user", "content": "\udfff"}]), "messages[0].content: contains an"),
        (specwatch_record(model="m\x00"), "model: contains a NUL character"),
        (specwatch_record(id="r\ud83d"), "id: contains an unpaired surrogate"),
        (specwatch_record(metadata={"region": "sg\x00"}), "metadata entry #1: contains a NUL"),
        (specwatch_record(metadata={"k\ud800": "v"}), "metadata entry #1 key: contains an unpaired surrogate"),
        (specwatch_record(messages=[{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]), "surrogate"),
        (specwatch_record(messages=[{"role": {"a": 1}, "content": "x"}]), "messages[0].role: not one of"),
        (specwatch_record(id=int("9" * 4000) * 10**400), "id: integer with too many digits"),
        (specwatch_record(metadata={"n": int("9" * 4000) * 10**400}), "metadata entry #1: integer with too many"),
        (specwatch_record(timestamp=int("9" * 400)), "timestamp: not a valid epoch time"),
        (specwatch_record(timestamp="0001-01-01T00:00:00+01:00"), "timestamp: text is not ISO 8601"),
    ],
)
def test_values_no_column_can_hold_are_refused_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_record(value)
    assert reason in str(caught.value)


def test_a_surrogate_pair_is_one_character_not_an_error() -> None:
    record = parse_record(json.loads(json.dumps(specwatch_record(completion="ok \U0001f600"))))
    assert record.completion == "ok \U0001f600"


def test_reasons_never_echo_metadata_keys_or_numbers() -> None:
    cases = [
        specwatch_record(metadata={"ana@corp.example": {"nested": 1}}),
        specwatch_record(metadata={"ok": "1", "+65 9123 4567": [1]}),
        specwatch_record(temperature=91234567),
        specwatch_record(timestamp=-91234567891234567),
    ]
    for value in cases:
        with pytest.raises(RecordError) as caught:
            parse_record(value)
        assert "ana@corp" not in str(caught.value) and "9123" not in str(caught.value)


def completions_api_record(**choice: object) -> dict[str, object]:
    return {
        "request": {"model": "gpt-x", "prompt": "def add(a, b):", "max_tokens": 16},
        "response": {"id": "cmpl-1", "created": 1764324000, "choices": [{"text": " return a + b", **choice}]},
    }


def test_a_prompt_is_marked_raw_and_messages_are_not() -> None:
    value = specwatch_record(prompt="2+2?")
    del value["messages"]
    assert parse_record(value).raw_prompt
    assert not parse_record(specwatch_record()).raw_prompt
    assert parse_record(completions_api_record()).raw_prompt
    assert not parse_record(openai_record()).raw_prompt


def test_finish_reason_and_max_tokens_of_the_completions_api() -> None:
    record = parse_record(completions_api_record(finish_reason="length"))
    assert (record.finish_reason, record.max_tokens) == ("length", 16)
    assert parse_record(completions_api_record(stop_reason="max_tokens")).finish_reason == "length"
    assert parse_record(completions_api_record(finish_reason="stop", stop_reason=128001)).finish_reason == "stop"
    assert parse_record(completions_api_record()).finish_reason is None


def test_max_completion_tokens_comes_before_max_tokens() -> None:
    value = openai_record()
    value["request"].update({"max_tokens": 99, "max_completion_tokens": 7})  # type: ignore[attr-defined]
    assert parse_record(value).max_tokens == 7
    assert parse_record(openai_record()).max_tokens is None


def test_specwatch_finish_reason_and_max_tokens() -> None:
    record = parse_record(specwatch_record(finish_reason="Length", max_tokens=32))
    assert (record.finish_reason, record.max_tokens) == ("length", 32)
    assert parse_record(specwatch_record()).finish_reason is None


@pytest.mark.parametrize("reason", ["banana", "x" * 500, 7, ["stop"], "", "stop\x00"])
def test_an_unknown_finish_reason_is_dropped_not_stored(reason: object) -> None:
    assert parse_record(specwatch_record(finish_reason=reason)).finish_reason is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "outside"),
        (2**31, "outside"),
        ("16", "expected an integer"),
        (True, "expected an integer"),
        (1.5, "expected an integer"),
    ],
)
def test_a_bad_max_tokens_is_quarantined(value: object, reason: str) -> None:
    with pytest.raises(RecordError, match=f"max_tokens: {reason}"):
        parse_record(specwatch_record(max_tokens=value))


def test_vllm_chat_token_ids() -> None:
    """vLLM with return_token_ids: the chat prompt's ids on the response, the generated ids on the choice."""
    value = openai_record()
    value["response"]["prompt_token_ids"] = [1, 2, 3]  # type: ignore[index]
    value["response"]["choices"][0]["token_ids"] = [7, 8, 2]  # type: ignore[index]
    record = parse_record(value)
    assert (record.prompt_token_ids, record.completion_token_ids) == ([1, 2, 3], [7, 8, 2])


def test_vllm_completions_token_ids_sit_on_the_choice() -> None:
    record = parse_record(completions_api_record(prompt_token_ids=[5, 6], token_ids=[9]))
    assert (record.prompt_token_ids, record.completion_token_ids) == ([5, 6], [9])


@pytest.mark.parametrize("name", ["output_ids", "response_token_ids"])
def test_sglang_output_ids(name: str) -> None:
    assert parse_record(completions_api_record(**{name: [4, 4]})).completion_token_ids == [4, 4]
    value = completions_api_record()
    value["response"][name] = [3]  # type: ignore[index]
    assert parse_record(value).completion_token_ids == [3]


def test_specwatch_token_ids_and_their_absence() -> None:
    record = parse_record(specwatch_record(prompt_token_ids=[1], completion_token_ids=[2, 3]))
    assert (record.prompt_token_ids, record.completion_token_ids) == ([1], [2, 3])
    plain = parse_record(specwatch_record(completion_token_ids=[]))
    assert (plain.prompt_token_ids, plain.completion_token_ids) == (None, None)


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ("1 2 3", "expected a list of token ids, got str"),
        ([1, -1], r"completion_token_ids\[1\]: not a token id"),
        ([1, True], r"completion_token_ids\[1\]: not a token id"),
        ([1.0], r"completion_token_ids\[0\]: not a token id"),
        ([2**31], r"completion_token_ids\[0\]: not a token id"),
        ([[1]], r"completion_token_ids\[0\]: not a token id"),
        (list(range(2**20 + 1)), "over the limit"),
    ],
)
def test_bad_token_ids_are_quarantined_with_the_place(ids: object, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        parse_record(specwatch_record(completion_token_ids=ids))
    with pytest.raises(RecordError, match=r"response\.choices\[0\]\.token_ids"):
        parse_record(completions_api_record(token_ids=ids))
