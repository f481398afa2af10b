"""The HTML report on a realistic history: three days of English, code and Japanese traffic, then a shift
to mostly Chinese; draft A (MEDUSA heads) live from the start, draft B (an independent draft model) deployed
six hours ago. Both replay everything, on SQLite and on PostgreSQL."""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts
from monitor.base.config import Config, DriftConfig, ModelsConfig, ReplayConfig, Secret, StatsConfig, StorageConfig
from monitor.base.db import ReplayResult, create_db_engine, upgrade, utcnow
from monitor.base.results import HISTOGRAM_ESTIMATE, PER_STEP
from monitor.base.stats import LIVE, SampleResult
from monitor.evaluation.evaluate import evaluate
from monitor.evaluation.findings_store import latest_findings
from monitor.evaluation.status import GPU_FREE_NOTE
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.live_models import LiveModels, load_live_models
from monitor.replay.replayer import Replayer
from monitor.service.demo_traffic import traffic
from monitor.service.report import (
    LIVE_COLOUR,
    ReportData,
    build_report,
    hourly_alpha,
    render_html,
    time_ticks,
    write_report,
)
from tests.conftest import BACKENDS, POSTGRES_URL, fresh_postgres_schema
from tests.monitor.stored_counts import HIGH, LOW, store_engine_reports, store_traffic

# The tiny reference drafts reach alpha of roughly 0.3-0.6 on English and code; draft A about 0 on
# Chinese: the line goes at 0.2, as in test_evaluate.
TINY_THRESHOLD = 0.2
REPLAY_DELAY = timedelta(seconds=20)
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I)


@dataclass(frozen=True)
class History:
    config: Config
    url: str
    old: str  # draft A's version
    live: str  # draft B's version
    live_dir: Path
    deployed: datetime  # when B went live


@pytest.fixture(scope="module", params=BACKENDS)
def history_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per backend for the whole module (building the history replays ~400 samples)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('report-db') / 'specwatch.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("SPECWATCH_TEST_DATABASE_URL not set")
    with fresh_postgres_schema() as url:
        yield url


def models(reference: Path, draft: str) -> LiveModels:
    return load_live_models(ModelsConfig(target=reference / "target", draft=reference / "drafts" / draft, device="cpu"))


def report_config(data_dir: Path, url: str) -> Config:
    config = Config(storage=StorageConfig(data_dir=data_dir, database_url=url))
    return config.model_copy(
        update={
            "intake": config.intake.model_copy(update={"segment_keys": ["route"]}),
            "replay": ReplayConfig(samples_per_round=256, exact_fraction=0.0),
            "stats": StatsConfig(windows=["1h", "24h"], resamples=200),
            "drift": DriftConfig(threshold=TINY_THRESHOLD, min_samples=20, input_min_rows=20),
        }
    )


def ingest(config: Config, engine: Engine, count: int, mix: dict[str, float], start: datetime, hours: float) -> None:
    values = traffic(count, mix, seed=count, start=start, spacing_s=hours * 3600 / count, first_index=count * 1000)
    records = [RawRecord(position=f"item {i}", value=value) for i, value in enumerate(values)]
    IntakePipeline(config, engine, Secret("salt")).ingest("gateway", records)


def replay_as_if_live(config: Config, engine: Engine, live: LiveModels, since: datetime) -> None:
    """Replay everything pending, then date each result as a daemon running since `since` would have:
    traffic from before it when the version went live, later traffic moments after it happened.
    (The test compresses days of live replay into seconds; only replayed_at needs to move.)"""
    Replayer(engine, live.target, live.draft, live.versions, config.replay).replay_all()
    with Session(engine) as session, session.begin():
        for result in session.scalars(select(ReplayResult).where(ReplayResult.draft_version == live.versions.draft)):
            result.replayed_at = max(result.occurred_at, since) + REPLAY_DELAY


@pytest.fixture(scope="module")
def history(history_url: str, tmp_path_factory: pytest.TempPathFactory, reference_models: Path) -> History:
    config = report_config(tmp_path_factory.mktemp("report-data"), history_url)
    engine = create_db_engine(history_url)
    upgrade(engine)
    now = utcnow()
    start, shift, deployed = now - timedelta(hours=72), now - timedelta(hours=30), now - timedelta(hours=6)
    ingest(config, engine, 110, {"en": 0.45, "code": 0.4, "ja": 0.15}, start, hours=42)
    ingest(config, engine, 70, {"zh": 0.75, "en": 0.15, "code": 0.1}, shift, hours=30)
    old, new = models(reference_models, "medusa"), models(reference_models, "draft_model")
    replay_as_if_live(config, engine, old, start)
    evaluate(config, engine, old.versions.draft, now=deployed - timedelta(minutes=1))  # what A's watch found
    replay_as_if_live(config, engine, new, deployed)
    evaluate(config, engine, new.versions.draft, now=now)
    engine.dispose()
    draft_dir = reference_models / "drafts" / "draft_model"
    return History(config, history_url, old.versions.draft, new.versions.draft, draft_dir, deployed)


@pytest.fixture
def history_engine(history: History) -> Iterator[Engine]:
    engine = create_db_engine(history.url)
    yield engine
    engine.dispose()


def page_of(history: History, engine: Engine) -> tuple[ReportData, str]:
    data = build_report(history.config, engine, live_draft=history.live)
    return data, render_html(data, history.config.storage.data_dir / "reports")


def test_report_charts_every_segment_with_threshold_deploys_and_positions(
    history: History, history_engine: Engine
) -> None:
    data, page = page_of(history, history_engine)
    segments = [panel.segment for panel in data.panels]
    assert segments[0] == "*"
    assert {"route=chat/lang=zh", "route=chat/lang=en", "route=code-assist/lang=code"} <= set(segments)
    assert page.count('<svg class="alpha-chart"') == len(segments)
    assert page.count(f'class="threshold" data-threshold="{TINY_THRESHOLD}"') == len(segments)
    for version in (history.old, history.live):
        assert page.count(f'<g class="deploy-marker" data-version="{version}">') == len(segments)
    [b_deploy] = [d for d in data.deploys if d.draft_version == history.live]
    assert abs(b_deploy.at - history.deployed) < timedelta(minutes=1), "B went live when it was first replayed"

    zh = next(panel for panel in data.panels if panel.segment == "route=chat/lang=zh")
    assert set(zh.series) == {history.old, history.live}, "both versions replayed the Chinese traffic"
    assert zh.current is not None and zh.current.samples > 20 and zh.state == "breach"
    zh_html = page.split('data-segment="route=chat/lang=zh"')[1].split("</section>")[0]
    assert zh_html.count('class="position-bar"') == history.config.replay.window, "bars p_1..p_k"
    assert zh.positions[0] == pytest.approx(zh.current.per_position_rates[0])
    live_series = zh_html.split(f'<g class="version" data-version="{history.live}">')[1].split("</g>")[0]
    assert f'stroke="{LIVE_COLOUR}"' in live_series, "the live draft is drawn in its own colour"


def test_report_lists_findings_and_links_drift_reports(history: History, history_engine: Engine) -> None:
    _, page = page_of(history, history_engine)
    findings = latest_findings(history_engine, limit=20)
    assert any(f.detector == "threshold" and f.segment == "route=chat/lang=zh" for f in findings)
    for finding in findings:
        assert html.escape(finding.summary) in page
    reports = sorted((history.config.storage.data_dir / "reports").glob("input-drift-*.html"))
    assert reports, "input drift was checked when the traffic shifted"
    for report in reports:
        assert f'class="drift-report" href="{report.name}"' in page
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "<script" not in page and "<link" not in page


def test_report_command_writes_default_path(
    history: History, reference_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.service.cli import main

    data_dir = history.config.storage.data_dir
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{data_dir}"\ndatabase_url = "{history.url}"\n'
        f'[models]\ntarget = "{reference_models / "target"}"\ndraft = "{history.live_dir}"\n'
        f'[intake]\nsegment_keys = ["route"]\n[drift]\nthreshold = {TINY_THRESHOLD}\n'
    )
    assert main(["report", "--config", str(path), "--top", "2"]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == data_dir / "reports" and re.fullmatch(r"specwatch-report-\d{8}T\d{6}Z\.html", written.name)
    page = written.read_text(encoding="utf-8")
    assert page.count('<svg class="alpha-chart"') == 3, "all traffic plus the top two segments"
    assert f'live draft <span class="mono">{history.live}</span>' in page
    for link in re.findall(r'class="drift-report" href="([^"]+)"', page):
        assert (written.parent / link).is_file()


def test_empty_database_says_nothing_was_replayed(
    config: Config, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.service.cli import main

    data = build_report(config, engine)
    assert data.empty and data.live_draft is None
    out = write_report(config, data, tmp_path / "empty.html")
    assert "Nothing replayed yet" in out.read_text(encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{config.storage.data_dir}"\ndatabase_url = "{config.database_url}"\n')
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "cli.html")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli.html")
    assert "Nothing replayed yet" in (tmp_path / "cli.html").read_text(encoding="utf-8")


def test_report_of_a_span_without_traffic_points_to_days(history: History, history_engine: Engine) -> None:
    data = build_report(history.config, history_engine, now=utcnow() + timedelta(days=30), days=7)
    assert data.empty and data.deploys
    assert "No replayed traffic in the last 7 days" in render_html(data, history.config.storage.data_dir)


def result(version: str, minute: int, accepted: int, rejected: int) -> SampleResult:
    """A sample of `rejected` + 1 verify steps (the last accepts everything) at 10:00 + `minute`."""
    moment = datetime(2026, 11, 28, 10, 0, tzinfo=UTC) + timedelta(minutes=minute)
    counts = AcceptCounts(accepted=accepted, rejected=rejected, drafted=accepted + rejected, steps=rejected + 1)
    return SampleResult(minute, "lang=zh" if minute % 2 else "lang=en", moment, counts, 10, version)


def test_hourly_alpha_pools_counts_per_version_and_hour() -> None:
    results = [result("a", 1, 3, 1), result("a", 3, 1, 3), result("a", 61, 2, 2), result("b", 5, 4, 0)]
    series = hourly_alpha(results, "lang=zh")
    assert [(p.hour.hour, p.alpha, p.samples) for p in series["a"]] == [(10, 0.5, 2), (11, 0.5, 1)]
    assert [(p.alpha, p.samples) for p in series["b"]] == [(1.0, 1)]
    assert hourly_alpha(results, "lang=en") == {}


def test_time_ticks_are_round_and_few() -> None:
    start = datetime(2026, 11, 25, 7, 30, tzinfo=UTC)
    ticks = time_ticks(start, start + timedelta(days=3))
    assert 3 <= len(ticks) <= 8 and all(t.minute == 0 and t.hour % 12 == 0 for t in ticks)


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def distinct_scanlines(png: bytes) -> int:
    """Distinct (filtered) pixel rows of a PNG: a blank page has a handful, a drawn one hundreds."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    data, offset = b"", 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        if png[offset + 4 : offset + 8] == b"IDAT":
            data += png[offset + 8 : offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(data)
    row = len(raw) // height
    assert row > width
    return len({raw[i * row : (i + 1) * row] for i in range(height)})


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(history: History, history_engine: Engine, tmp_path: Path) -> None:
    data = build_report(history.config, history_engine, live_draft=history.live)
    page = write_report(history.config, data, history.config.storage.data_dir / "reports" / "screenshot.html")
    screenshot = tmp_path / "report.png"
    command = [
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        f"--screenshot={screenshot}",
        "--window-size=1400,2400",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    png = screenshot.read_bytes()
    assert struct.unpack(">II", png[16:24]) == (1400, 2400)
    assert len(png) > 50_000 and distinct_scanlines(png) > 300


def side_by_side_config(config: Config) -> Config:
    return config.model_copy(
        update={
            "stats": StatsConfig(windows=["1h", "24h"], resamples=200),
            "drift": DriftConfig(min_samples=10, divergence_min_pairs=10, input_interval="1000d"),
        }
    )


def test_report_shows_live_beside_shadow_with_positions_and_divergence(config: Config, engine: Engine) -> None:
    config = side_by_side_config(config)
    now = utcnow()
    # the engine accepts far less of English than the replay of the live draft: they diverge
    store_traffic(engine, "lang=en", 12, now=now, shadow=HIGH, live=LOW, basis=HISTOGRAM_ESTIMATE)
    store_traffic(engine, "lang=zh", 12, now=now, shadow=LOW, live=LOW, basis=PER_STEP)
    store_engine_reports(engine, "lang=en", 2, now=now, steps=HIGH, basis=None)
    evaluate(config, engine, "draft-a", now=now - timedelta(minutes=5))
    evaluation = evaluate(config, engine, "draft-a", now=now)
    assert any(f.detector == "divergence" and f.segment == "*" for f in evaluation.findings)

    data = build_report(config, engine, live_draft="draft-a", now=now)
    everything = data.panels[0]
    assert everything.segment == "*" and data.primary == "shadow" and data.sources == ["shadow", "live"]
    assert everything.shadow is not None and everything.live is not None and everything.paired == 24
    assert data.live_without_alpha == 2
    page = render_html(data, config.storage.data_dir / "reports")
    summary = page.split('<table class="summary">')[1].split("</table>")[0]
    for column in ("shadow alpha", "live alpha", "A/D", "paired"):
        assert f'<th class="num">{column}</th>' in summary
    en_row = summary.split(">lang=en</a>")[1].split("</tr>")[0]
    assert '<td class="num">0.917</td>' in en_row, "shadow alpha of English"
    assert '<td class="num">~0.250</td>' in en_row, "live alpha of English, R estimated"
    assert '<td class="num">24</td>' in summary.split(">all traffic (*)</a>")[1].split("</tr>")[0]
    star_panel = page.split('data-segment="*"')[1].split("</section>")[0]
    assert "per-position acceptance, live against shadow" in star_panel
    assert star_panel.count("<tr>") == 1 + 4, "a header and p1..p4"
    zh_panel = page.split('data-segment="lang=zh"')[1].split("</section>")[0]
    assert "live against shadow" not in zh_panel, "the comparison is for all traffic"
    assert f'<g class="version" data-version="{LIVE}">' in zh_panel, "the engine's hourly alpha is charted"
    findings = page.split("<h2>Latest findings</h2>")[1].split("</section>")[0]
    assert "<td>divergence</td>" in findings
    head = findings.split("</tr>")[0]
    assert all(f'<th class="num">{name}' in head for name in ("first seen", "last seen", "times seen", "resolved"))
    [divergence] = [row for row in findings.split("</tr>") if "<td>divergence</td><td>*</td><td>24h</td>" in row]
    first, last = now - timedelta(minutes=5), now
    assert f'<td class="num">{first:%Y-%m-%d %H:%M}</td><td class="num">{last:%Y-%m-%d %H:%M}</td>' in divergence
    assert '<td class="num">2</td><td class="num">open</td>' in divergence, "evaluated twice: one row, seen twice"
    assert "2 engine reports in the last 24h lacked R" in page
    assert GPU_FREE_NOTE not in page


def test_report_in_gpu_free_mode_says_the_numbers_are_the_engines_own(config: Config, engine: Engine) -> None:
    config = side_by_side_config(config)
    now = utcnow()
    store_traffic(engine, "lang=en", 12, now=now, shadow=None, live=HIGH)
    data = build_report(config, engine, now=now)
    assert not data.empty and data.live_draft is None
    assert data.primary == "live" and data.sources == ["live"]
    assert data.panels[0].current is data.panels[0].live and data.panels[0].state == "ok"
    page = render_html(data, config.storage.data_dir / "reports")
    assert "Acceptance is the serving engine&#x27;s own (GPU-free mode: no replay)" in page
    assert "shadow alpha" not in page and '<th class="num">live alpha</th>' in page
    assert "Nothing replayed yet" not in page
