import json
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from monitor.config import Config, SamplingConfig, SamplingRule, Secret
from monitor.db import IntakeCounter, IntakeCursor, QuarantinedRecord, Sample
from monitor.intake.pipeline import CursorAdvance, IntakePipeline, RawRecord
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
