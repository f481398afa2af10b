"""The engine's own per-request acceptance through intake: stored for every record that carries it (sampled
out of replay or not) or only for sampled ones, linked to its sample, once per record key; a payload that
is present but wrong is refused with its reason while the sample is kept."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.config import Config, SamplingConfig, Secret
from monitor.base.db import IntakeCounter, LiveResult, QuarantinedRecord, Sample
from monitor.intake.pipeline import IntakePipeline, RawRecord
from tests.monitor.engine_side import vllm_spec_metrics
from tests.monitor.intake.traffic import record

SALT = Secret("live-intake-salt")
PER_STEP_ACCEPTED = [3, 1, 0, 2, 3, 1]
PER_STEP_DRAFTED = [3, 3, 3, 3, 3, 1]


def with_engine_counts(index: int, *, detailed: bool = True, language: str = "en") -> dict[str, Any]:
    value = record(index, language)
    value["engine_acceptance"] = {
        "engine": "vllm",
        "method": "eagle3",
        **vllm_spec_metrics(PER_STEP_DRAFTED, PER_STEP_ACCEPTED, 3, detailed=detailed),
    }
    return value


def take_in(config: Config, engine: Engine, values: list[dict[str, Any]], **settings: Any) -> Any:
    intake = config.intake.model_copy(update=settings)
    pipeline = IntakePipeline(config.model_copy(update={"intake": intake}), engine, SALT)
    lines = [RawRecord(f"line {i + 1}", json.dumps(v, ensure_ascii=False).encode()) for i, v in enumerate(values)]
    return pipeline.ingest("gateway", lines)


def live_rows(engine: Engine) -> list[LiveResult]:
    with Session(engine) as session:
        return list(session.scalars(select(LiveResult).order_by(LiveResult.id)))


def test_engine_counts_are_stored_with_their_sample(config: Config, engine: Engine) -> None:
    report = take_in(config, engine, [with_engine_counts(1), with_engine_counts(2, detailed=False), record(3)])
    assert (report.stored, report.live, report.live_refused) == (3, 2, 0)
    exact, estimated = live_rows(engine)
    with Session(engine) as session:
        keys = {s.id: s.sample_key for s in session.scalars(select(Sample))}
    assert keys[exact.sample_id] == exact.sample_key and keys[estimated.sample_id] == estimated.sample_key
    assert (exact.steps, exact.drafted, exact.accepted, exact.rejected) == (6, 16, 10, 3)
    assert exact.rejected_basis == "per_step" and exact.engine == "vllm" and exact.method == "eagle3"
    assert (estimated.rejected, estimated.rejected_basis) == (6 - 2, "histogram"), "S - hist[k] = 6 - 2"
    assert exact.segment == estimated.segment and exact.language == "en"
    assert exact.counts["accept_histogram"] == [1, 2, 1, 2]
    assert exact.counts["accepted_per_position"] == [5, 3, 2]


def test_records_sampled_out_of_replay_keep_their_engine_counts_unless_told(config: Config, engine: Engine) -> None:
    config = config.model_copy(
        update={"intake": config.intake.model_copy(update={"sampling": SamplingConfig(rate=0.0)})}
    )
    values = [with_engine_counts(i) for i in range(5)]
    report = take_in(config, engine, values)
    assert (report.stored, report.sampled_out, report.live) == (0, 5, 5)
    assert all(row.sample_id is None for row in live_rows(engine))
    again = take_in(config, engine, [with_engine_counts(i) for i in range(5, 8)], live_counts="sampled")
    assert (again.stored, again.live) == (0, 0)


def test_a_record_sent_again_adds_no_second_count_and_a_late_payload_links_to_the_stored_sample(
    config: Config, engine: Engine
) -> None:
    take_in(config, engine, [record(1)])
    report = take_in(config, engine, [with_engine_counts(1), with_engine_counts(1)])
    assert (report.stored, report.duplicates, report.live) == (0, 2, 1)
    [row] = live_rows(engine)
    with Session(engine) as session:
        [sample] = session.scalars(select(Sample))
    assert row.sample_id == sample.id


def test_a_wrong_payload_is_refused_with_its_reason_and_the_sample_kept(config: Config, engine: Engine) -> None:
    broken = with_engine_counts(1)
    broken["engine_acceptance"]["num_accepted_draft_tokens"] = 99  # more accepted than drafted
    report = take_in(config, engine, [broken, with_engine_counts(2)])
    assert (report.stored, report.quarantined, report.live, report.live_refused) == (2, 0, 1, 1)
    with Session(engine) as session:
        [refused] = session.scalars(select(QuarantinedRecord))
        [counter] = session.scalars(select(IntakeCounter))
    assert refused.position == "line 1 (engine_acceptance)"
    assert refused.reason.startswith("engine_acceptance refused, the sample itself kept:")
    assert "num_accepted_draft_tokens" in refused.reason and "99" not in refused.reason
    assert (counter.stored, counter.quarantined, counter.live, counter.live_refused) == (2, 0, 1, 1)
