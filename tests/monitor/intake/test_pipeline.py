import json
import logging
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from monitor.base.config import Config, SamplingConfig, SamplingRule, Secret
from monitor.base.db import IntakeCounter, IntakeCursor, QuarantinedRecord, Sample
from monitor.base.failures import is_database_unreachable, is_permanent_database_error
from monitor.intake.pipeline import CursorAdvance, IntakePipeline, IntakeRefused, RawRecord
from tests.monitor.intake.traffic import line, record

SALT = Secret("test-salt")


def pipeline_for(config: Config, engine: Engine, **sampling: Any) -> IntakePipeline:
    if sampling:
        intake = config.intake.model_copy(update={"sampling": SamplingConfig(**sampling)})
        config = config.model_copy(update={"intake": intake})
    return IntakePipeline(config, engine, SALT)


def raws(values: list[dict[str, Any]]) -> list[RawRecord]:
    return [
        RawRecord(position=f"line {i + 1}", data=json.dumps(v, ensure_ascii=False).encode())
        for i, v in enumerate(values)
    ]


def samples(engine: Engine) -> list[Sample]:
    with Session(engine) as session:
        return list(session.scalars(select(Sample).order_by(Sample.id)))


def all_stored_text(engine: Engine) -> str:
    chunks = []
    with engine.connect() as connection:
        for table in ("samples", "quarantine", "intake_counters", "intake_cursors", "sampling_buckets"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                chunks.append(" ".join(str(value) for value in row))
    return "\n".join(chunks)


def test_stores_redacted_segmented_sample(config: Config, engine: Engine) -> None:
    value = record(1, "zh", route="/v1/chat")
    value["messages"][0]["content"] = "我的邮箱是 li.wei@example.com，手机13812345678"
    value["metadata"]["user"] = "user-777"
    report = pipeline_for(config, engine).ingest("test", raws([value]))
    assert (report.stored, report.quarantined) == (1, 0)
    [sample] = samples(engine)
    assert "li.wei@example.com" not in sample.messages[0]["content"]
    assert "13812345678" not in sample.messages[0]["content"]
    assert sample.redactions == {"EMAIL": 1, "PHONE": 1}
    assert sample.language == "zh"
    tenant_hash = sample.attributes["tenant"]
    assert tenant_hash.startswith("h:") and "acme" not in tenant_hash
    assert sample.attributes["user"].startswith("h:")
    assert sample.segment == f"tenant={tenant_hash}/region=sg/route=%2Fv1%2Fchat/lang=zh"


def test_no_original_pii_reaches_the_database(config: Config, engine: Engine) -> None:
    pii = ["ana@corp.example", "+65 9123 4567", "4111 1111 1111 1111", "11010519491231002X", "203.0.113.9"]
    value = record(2)
    value["messages"][0]["content"] = "contact " + ", ".join(pii)
    value["completion"] = f"noted {pii[0]} and {pii[4]}"
    broken = b'{"id": "x", "messages": [{"role": "user", "content": "card 4111 1111 1111 1111 mail ana@corp.example"'
    batch = [*raws([value]), RawRecord(position="line 9", data=broken)]
    report = pipeline_for(config, engine).ingest("test", batch)
    assert (report.stored, report.quarantined) == (1, 1)
    stored = all_stored_text(engine)
    for original in [*pii, "acme"]:
        assert original not in stored


def test_same_records_twice_are_stored_once(config: Config, engine: Engine) -> None:
    pipeline = pipeline_for(config, engine)
    batch = raws([record(i) for i in range(5)] + [record(0)])
    first = pipeline.ingest("test", batch)
    assert (first.stored, first.duplicates) == (5, 1)
    second = pipeline.ingest("test", batch)
    assert (second.stored, second.duplicates) == (0, 6)
    assert len(samples(engine)) == 5


def test_records_without_id_are_keyed_by_content(config: Config, engine: Engine) -> None:
    values = [record(i) for i in range(3)]
    for value in values:
        del value["id"]
    pipeline = pipeline_for(config, engine)
    pipeline.ingest("test", raws(values))
    report = pipeline.ingest("test", raws(values))
    assert report.duplicates == 3
    assert len({s.sample_key for s in samples(engine)}) == 3


def test_bad_records_are_quarantined_and_the_rest_stored(config: Config, engine: Engine) -> None:
    batch = [
        RawRecord(position="line 1", data=line(1).rstrip()),
        RawRecord(position="line 2", data=b"{not json"),
        RawRecord(position="line 3", data=b'{"completion": "x", "messages": "\xff\xfe"}'),
        RawRecord(position="line 4", data=json.dumps(record(4) | {"completion": ""}).encode()),
        RawRecord(position="line 5", data=json.dumps(record(5) | {"temperature": "warm"}).encode()),
        RawRecord(position="line 6", data=b"x" * (config.intake.max_record_bytes + 1)),
        RawRecord(position="item 7", value=[1, 2, 3]),
        RawRecord(position="line 8", data=line(8).rstrip()),
    ]
    report = pipeline_for(config, engine).ingest("file:/var/log/gw.jsonl", batch)
    assert (report.records, report.stored, report.quarantined) == (8, 2, 6)
    with Session(engine) as session:
        rows = list(session.scalars(select(QuarantinedRecord).order_by(QuarantinedRecord.id)))
        counters = session.get(IntakeCounter, "file:/var/log/gw.jsonl")
    assert [row.position for row in rows] == ["line 2", "line 3", "line 4", "line 5", "line 6", "item 7"]
    reasons = [row.reason for row in rows]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1].startswith("invalid UTF-8")
    assert "empty completion" in reasons[2]
    assert "temperature" in reasons[3]
    assert "over the" in reasons[4]
    assert "must be a JSON object" in reasons[5]
    assert rows[4].record_bytes == config.intake.max_record_bytes + 1
    assert len(rows[4].excerpt) <= 2000
    assert counters is not None and (counters.records, counters.stored, counters.quarantined) == (8, 2, 6)


def test_sampling_is_deterministic_by_sample_id(config: Config, engine: Engine, tmp_path: Any) -> None:
    batch = raws([record(i) for i in range(400)])
    pipeline_for(config, engine, rate=0.25).ingest("test", batch)
    kept = {s.sample_key for s in samples(engine)}
    assert 60 < len(kept) < 140
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM samples"))
    pipeline_for(config, engine, rate=0.25).ingest("test", list(reversed(batch)))
    assert {s.sample_key for s in samples(engine)} == kept


def test_hourly_cap_is_per_segment_and_keeps_rare_segments(config: Config, engine: Engine) -> None:
    loud = [record(i, "en") for i in range(50)]
    rare = [record(1000 + i, "zh") for i in range(2)]
    for value in loud + rare:
        value["timestamp"] = "2026-11-28T10:15:00Z"
    pipeline = pipeline_for(config, engine, rate=1.0, hourly_cap=5)
    first = pipeline.ingest("test", raws(loud[:30] + rare))
    second = pipeline.ingest("test", raws(loud[30:]))
    languages = [s.language for s in samples(engine)]
    assert languages.count("en") == 5 and languages.count("zh") == 2
    assert first.sampled_out + second.sampled_out == 45


def test_sampling_rules_override_per_segment(config: Config, engine: Engine) -> None:
    rules = [SamplingRule(match=["lang=zh"], rate=1.0)]
    batch = raws([record(i, "en") for i in range(20)] + [record(100 + i, "zh") for i in range(20)])
    pipeline_for(config, engine, rate=0.0, rules=rules).ingest("test", batch)
    assert {s.language for s in samples(engine)} == {"zh"}
    assert len(samples(engine)) == 20


def test_cursor_commits_with_the_batch(config: Config, engine: Engine) -> None:
    cursor = CursorAdvance(fingerprint="f" * 64, path="/logs/a.jsonl", offset=1234, line=7)
    pipeline_for(config, engine).ingest("test", raws([record(1)]), cursor)
    with Session(engine) as session:
        stored = session.get(IntakeCursor, "f" * 64)
    assert stored is not None and (stored.offset, stored.line) == (1234, 7)


def test_metadata_language_label_wins_over_detection(config: Config, engine: Engine) -> None:
    value = record(3, "en")
    value["metadata"]["language"] = "ja"
    pipeline_for(config, engine).ingest("test", raws([value]))
    assert samples(engine)[0].segment.endswith("/lang=ja")


def test_configured_languages_label_segments(config: Config, engine: Engine) -> None:
    texts = {
        "vi": ("Cho mình hỏi cách nấu phở bò ngon tại nhà với.", "Bạn cần xương bò, quế, hồi và gừng nướng."),
        "th": ("ทำต้มยำกุ้งยังไงให้อร่อย", "ใช้กุ้งสด ข่า ตะไคร้ ใบมะกรูด และพริกขี้หนู"),
        "pt": ("Como faço um bolo de cenoura?", "Bata as cenouras com ovos e óleo, depois misture a farinha."),
    }
    values = [
        record(index) | {"messages": [{"role": "user", "content": ask}], "completion": answer}
        for index, (ask, answer) in enumerate(texts.values())
    ]
    pipeline_for(config, engine).ingest("test", raws(values))
    assert [s.segment.rsplit("/", 1)[1] for s in samples(engine)] == ["lang=vi", "lang=th", "lang=pt"]
    router_alone = config.model_copy(update={"intake": config.intake.model_copy(update={"languages": []})})
    moved = [value | {"id": f"again-{value['id']}"} for value in values]
    pipeline_for(router_alone, engine).ingest("test", raws(moved))
    assert [s.language for s in samples(engine)][3:] == ["other", "other", "other"]


def good(index: int) -> RawRecord:
    return RawRecord(position=f"line {index}", data=line(index).rstrip())


def poison_lines() -> list[tuple[bytes, str]]:
    """(line, expected reason) for lines that once crashed intake or reached the database."""
    with_id = record(900)
    return [
        (b'{"id": ' + b"7" * 5000 + b', "prompt": "p", "completion": "c"}', "too many digits"),
        (b'{"prompt": "p", "completion": "c", "note": "\\ud800"}', ""),  # an unread field: stored by content key
        (json.dumps(with_id | {"completion": "ok \ud800"}).encode(), "unpaired surrogate"),
        (json.dumps(record(901) | {"completion": "nul \x00 here"}).encode(), "NUL"),
        (json.dumps(record(902) | {"model": "m" * 300}).encode(), "model: 300 characters, over the 255"),
        (json.dumps(record(903, route="r" * 300)).encode(), "segment: "),
        (json.dumps(record(904) | {"timestamp": "0001-01-01T00:00:00+01:00"}).encode(), "timestamp"),
        (json.dumps(record(905) | {"messages": [{"role": [], "content": "x"}]}).encode(), "role"),
    ]


def test_poison_lines_are_quarantined_and_the_records_after_them_stored(config: Config, engine: Engine) -> None:
    batch = [good(1)]
    for index, (data, _) in enumerate(poison_lines()):
        batch += [RawRecord(position=f"poison {index}", data=data), good(10 + index)]
    report = pipeline_for(config, engine).ingest("test", batch)
    expected = {f"poison {i}": reason for i, (_, reason) in enumerate(poison_lines()) if reason}
    assert (report.quarantined, report.stored) == (len(expected), len(batch) - len(expected))
    with Session(engine) as session:
        rows = list(session.scalars(select(QuarantinedRecord).order_by(QuarantinedRecord.id)))
    assert [row.position for row in rows] == list(expected)
    for row in rows:
        assert expected[row.position] in row.reason
    goods = [1, *range(10, 10 + len(poison_lines()))]
    assert {record(i)["completion"] for i in goods} <= {sample.completion for sample in samples(engine)}


def test_poison_values_from_http_are_quarantined(config: Config, engine: Engine) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    values = [
        record(1),
        {"prompt": "p", "completion": "c", "extra": "\ud800"},  # unread field, no id: keyed by content
        record(2) | {"completion": "\udc00"},
        {"prompt": "p", "completion": "c", "extra": deep},
        {"prompt": "p", "completion": "c", "n": int("9" * 4000) * 10**400},
        record(3),
    ]
    batch = [RawRecord(position=f"item {i}", value=value) for i, value in enumerate(values)]
    report = pipeline_for(config, engine).ingest("http", batch)
    assert (report.stored, report.quarantined) == (3, 3)
    assert [position for position, _ in report.problems] == ["item 2", "item 3", "item 4"]
    assert "unpaired surrogate" in report.problems[0][1]
    assert {s.completion for s in samples(engine)} >= {record(1)["completion"], record(3)["completion"]}


def test_language_override_only_from_known_labels(config: Config, engine: Engine) -> None:
    overrides = {"ZH": "zh", "code": "code", "ana@corp.example": "en", "x" * 40: "en", "français": "en", "VI": "vi"}
    overrides |= {"it": "en"}  # a language lingua knows, but not configured
    values = [record(i, "en") | {"metadata": {"language": label}} for i, label in enumerate(overrides)]
    report = pipeline_for(config, engine).ingest("test", raws(values))
    assert report.stored == len(values)
    assert [s.language for s in samples(engine)] == list(overrides.values())


def test_no_pii_outside_message_text_reaches_storage_or_logs(
    config: Config, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    intake = config.intake.model_copy(update={"segment_keys": ["tenant", "region", "route"]})
    config = config.model_copy(update={"intake": intake})
    value = record(1, route="call +65 9123 4567", region="ana.lee@corp.example")
    value["metadata"] |= {"bob.ray@corp.example": "value", "note": "mail carol\u200b@corp.example"}
    value["messages"][0]["content"] = "write to dan\u200b.kim@corp\u2060.example or 138\u200b1234\u200b5678"
    value["model"] = "ft:base:eve@corp.example"
    bad_key = record(2)
    bad_key["metadata"] = {"fay@corp.example": {"nested": True}}
    escaped = b'{"prompt": "gil\\u0040corp.example", "completion": ' + b"7" * 5000 + b"}"
    batch = [*raws([value, bad_key]), RawRecord(position="line 3", data=escaped)]
    with caplog.at_level(logging.DEBUG):
        report = pipeline_for(config, engine).ingest("test", batch)
    assert (report.stored, report.quarantined) == (1, 2)
    [sample] = samples(engine)
    assert sample.segment.startswith(f"tenant={sample.attributes['tenant']}/region=<EMAIL>/route=call <PHONE>/lang=")
    stored = all_stored_text(engine)
    pii = ["ana.lee", "9123 4567", "bob.ray", "carol", "dan", "5678", "eve@", "fay@", "gil", "corp.example"]
    leaked = [text for text in pii if text in stored or text in caplog.text or text in str(report.problems)]
    assert leaked == []


@pytest.mark.slow
def test_more_than_65535_records_in_one_call(config: Config, engine: Engine) -> None:
    """PostgreSQL takes at most 65,535 bind parameters per statement: the duplicate lookup, the hourly
    cap's bucket lookup (one hour per record here) and the inserts go in chunks."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite here takes 250,000 parameters per statement")
    count = 66_000
    template = b'{"id": %d, "timestamp": %d, "prompt": "p", "completion": "c", "metadata": {"language": "en"}}'
    batch = [RawRecord(position=f"item {i}", data=template % (i, 1_700_000_000 + 3600 * i)) for i in range(count)]
    pipeline = pipeline_for(config, engine, rate=1.0, hourly_cap=10)
    report = pipeline.ingest("test", batch + batch[:10])
    assert (report.stored, report.duplicates, report.quarantined) == (count, 10, 0)


def refuse_model(engine: Engine, model: str) -> None:
    """A real database rule that refuses one value: a CHECK constraint, or a trigger on SQLite."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"ALTER TABLE samples ADD CONSTRAINT no_model CHECK (model <> '{model}')"))
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER no_model BEFORE INSERT ON samples WHEN NEW.model = "
                    f"'{model}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )


def test_a_record_the_database_refuses_is_quarantined_and_the_rest_stored(config: Config, engine: Engine) -> None:
    refuse_model(engine, "refused-model")
    values = [record(1), record(2) | {"model": "refused-model"}, record(3)]
    cursor = CursorAdvance(fingerprint="f" * 64, path="/logs/a.jsonl", offset=300, line=3)
    report = pipeline_for(config, engine).ingest("test", raws(values), cursor)
    assert (report.records, report.stored, report.quarantined) == (3, 2, 1)
    assert report.problems == [("line 2", report.problems[0][1])]
    assert report.problems[0][1].startswith("refused by the database (")
    with Session(engine) as session:
        stored_cursor = session.get(IntakeCursor, "f" * 64)
        counters = session.get(IntakeCounter, "test")
    assert stored_cursor is not None and stored_cursor.offset == 300
    assert counters is not None and (counters.records, counters.stored, counters.quarantined) == (3, 2, 1)


def test_a_database_that_refuses_even_the_quarantine_raises_intake_refused(config: Config, engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE quarantine ADD CONSTRAINT no_rows CHECK (record_bytes < 0)"))
        else:
            connection.execute(
                text("CREATE TRIGGER no_rows BEFORE INSERT ON quarantine BEGIN SELECT RAISE(ABORT, 'refused'); END")
            )
    batch = [*raws([record(1)]), RawRecord(position="line 2", data=b"{broken")]
    with pytest.raises(IntakeRefused) as refused:
        pipeline_for(config, engine).ingest("test", batch)
    assert is_permanent_database_error(refused.value) and not is_database_unreachable(refused.value)
    assert samples(engine) == []


def test_stores_raw_prompt_finish_reason_and_max_tokens(config: Config, engine: Engine) -> None:
    completions_api = {
        "request": {"model": "m", "prompt": "def add(a, b):", "max_tokens": 5},
        "response": {
            "id": "cmpl-1",
            "created": 1764324000,
            "choices": [{"text": " return", "finish_reason": "length"}],
        },
    }
    odd_reason = {**record(2), "finish_reason": "x" * 40}
    report = pipeline_for(config, engine).ingest("test", raws([completions_api, odd_reason, record(3)]))
    assert report.stored == 3
    stored = [(s.raw_prompt, s.finish_reason, s.max_tokens) for s in samples(engine)]
    assert stored == [(True, "length", 5), (False, None, None), (False, None, None)]
    assert samples(engine)[0].messages == [{"role": "user", "content": "def add(a, b):"}]


def test_token_ids_are_stored_only_when_redaction_left_the_text_as_it_was(config: Config, engine: Engine) -> None:
    """Logged ids decode to the text as sent: a sample whose text lost PII to redaction keeps no ids."""
    clean = {**record(1), "prompt_token_ids": [1, 2], "completion_token_ids": [3, 4, 5]}
    with_pii = {
        **record(2),
        "messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}],
        "prompt_token_ids": [6, 7],
        "completion_token_ids": [8],
    }
    report = pipeline_for(config, engine).ingest("test", raws([clean, with_pii, record(3)]))
    assert report.stored == 3
    kept, withheld, plain = samples(engine)
    assert (kept.prompt_token_ids, kept.completion_token_ids) == ([1, 2], [3, 4, 5])
    assert "token_ids_withheld" not in kept.redactions
    assert (withheld.prompt_token_ids, withheld.completion_token_ids) == (None, None)
    assert withheld.redactions["token_ids_withheld"] == 1
    assert "jane.doe" not in all_stored_text(engine)
    assert (plain.prompt_token_ids, plain.completion_token_ids) == (None, None)
    assert "token_ids_withheld" not in plain.redactions
