"""Fuzz intake with generated hostile records (tests/monitor/intake/hostile.py), on SQLite and
PostgreSQL: through the follower and through `ingest` (import_logs), and as NDJSON bodies through the
real HTTP server, a good record after each hostile one. Nothing crashes; every record is stored once or
quarantined with a reason; every good record is stored; no seeded PII reaches any column or the log.
About 10,000 hostile records per backend and path."""

from __future__ import annotations

import itertools
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from monitor.base.config import Config, FollowConfig, HttpIntakeConfig, Secret
from monitor.base.db import QuarantinedRecord, Sample
from monitor.intake.follow import FileFollower, import_logs
from monitor.intake.http import IntakeHTTPServer
from monitor.intake.pipeline import IngestReport, IntakePipeline
from tests.monitor.intake.hostile import HostileRecord, good_line, hostile_records, seeded_pii_in

MAX_RECORD_BYTES = 4096
RECORDS_PER_EXAMPLE = 100
EXAMPLES = int(os.environ.get("SPECWATCH_FUZZ_EXAMPLES", "100"))
TABLES = ("samples", "quarantine", "intake_counters", "intake_cursors", "sampling_buckets")


def hostile_batches(test: Callable[[list[HostileRecord]], None]) -> Callable[[], None]:
    """`test` run on EXAMPLES lists of RECORDS_PER_EXAMPLE hostile records, without shrinking (shrinking
    100-record lists would take many minutes)."""
    batches = st.lists(hostile_records(MAX_RECORD_BYTES), min_size=RECORDS_PER_EXAMPLE, max_size=RECORDS_PER_EXAMPLE)
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )(given(batches)(test))


def fuzz_config(config: Config) -> Config:
    return config.model_copy(update={"intake": config.intake.model_copy(update={"max_record_bytes": MAX_RECORD_BYTES})})


def write_cases(path: Path, cases: list[HostileRecord], tags: itertools.count[int], first_line: int) -> dict[int, str]:
    """Each case then a good record, appended to `path`; returns line number -> expectation."""
    expected: dict[int, str] = {}
    with path.open("ab") as handle:
        for offset, case in enumerate(cases):
            tag = str(next(tags))
            handle.write(case.render(tag) + b"\n" + good_line(tag) + b"\n")
            expected[first_line + 2 * offset] = case.expect
            expected[first_line + 2 * offset + 1] = "stored"
    return expected


def line_of(position: str) -> int:
    """The line number in a position: `line N (byte B)` from files, `request R line N` from HTTP."""
    words = position.split()
    return int(words[words.index("line") + 1])


def check_report(report: IngestReport, expected: dict[int, str]) -> None:
    assert report.records == len(expected)
    assert (report.duplicates, report.sampled_out) == (0, 0)
    assert report.stored + report.quarantined == report.records
    quarantined = {line_of(position): reason for position, reason in report.problems}
    assert all(reason.strip() for reason in quarantined.values())
    for line_number, expect in expected.items():
        if expect == "stored":
            assert line_number not in quarantined, (line_number, quarantined.get(line_number))
        elif expect == "quarantined":
            assert line_number in quarantined, line_number


def stored_text(engine: Engine) -> str:
    with engine.connect() as connection:
        return "\n".join(
            " ".join(str(value) for value in row)
            for table in TABLES
            for row in connection.execute(text(f"SELECT * FROM {table}"))
        )


def test_hostile_records_through_file_intake(
    config: Config, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = fuzz_config(config)
    follow = FollowConfig(paths=[tmp_path / "followed.jsonl"], batch_lines=150)
    follower = FileFollower(IntakePipeline(config, engine, Secret("fuzz-salt")), engine, follow)
    tags = itertools.count()
    totals = IngestReport()
    followed = [0]  # lines written to the followed file so far

    @hostile_batches
    def feed(cases: list[HostileRecord]) -> None:
        if next(tags) % 2:  # the follower, on one growing file
            expected = write_cases(follow.paths[0], cases, tags, followed[0] + 1)
            followed[0] += len(expected)
            report = follower.poll_once()
        else:  # `specwatch ingest`: a new file read once to its end
            path = tmp_path / f"import-{next(tags)}.jsonl"
            expected = write_cases(path, cases, tags, 1)
            report = import_logs(config, engine, [path])
        check_report(report, expected)
        totals.add(report)

    with caplog.at_level(logging.INFO):
        feed()
    check_database(engine, totals)
    assert seeded_pii_in(caplog.text) == []


def check_database(engine: Engine, totals: IngestReport) -> None:
    """Counts in the tables equal the reports' totals; no reason is empty; no seeded PII anywhere."""
    assert totals.records >= 2 * RECORDS_PER_EXAMPLE * EXAMPLES  # 10,000 hostile + 10,000 good by default
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Sample)) == totals.stored
        assert session.scalar(select(func.count()).select_from(QuarantinedRecord)) == totals.quarantined
        assert session.scalar(select(func.count()).where(QuarantinedRecord.reason == "")) == 0
    assert seeded_pii_in(stored_text(engine)) == []


def post_ndjson(url: str, body: bytes) -> IngestReport:
    """One NDJSON request; the reply as a report (positions `request R line N`)."""
    request = urllib.request.Request(f"{url}/v1/samples", data=body, method="POST")
    request.add_header("Content-Type", "application/x-ndjson")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            reply = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"HTTP {error.code}: {error.read()[:500]!r}") from None
    assert reply.get("problems_omitted", 0) == 0
    return IngestReport(
        records=reply["records"],
        stored=reply["stored"],
        duplicates=reply["duplicates"],
        sampled_out=reply["sampled_out"],
        quarantined=reply["quarantined"],
        problems=[(problem["position"], problem["reason"]) for problem in reply["problems"]],
    )


def test_hostile_records_through_http_intake(
    config: Config, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = fuzz_config(config)
    server = IntakeHTTPServer(HttpIntakeConfig(port=0), IntakePipeline(config, engine, Secret("fuzz-salt")), None)
    server.start()
    tags = itertools.count()
    totals = IngestReport()

    @hostile_batches
    def feed(cases: list[HostileRecord]) -> None:
        body = tmp_path / "body.ndjson"
        body.unlink(missing_ok=True)
        expected = write_cases(body, cases, tags, 1)
        report = post_ndjson(server.url, body.read_bytes())
        check_report(report, expected)
        totals.add(report)

    try:
        with caplog.at_level(logging.INFO):
            feed()
    finally:
        server.stop()
    check_database(engine, totals)
    assert seeded_pii_in(caplog.text) == []
