from pathlib import Path

import pytest

from monitor.demo import run_demo
from monitor.demo_traffic import traffic


def test_traffic_shifts_with_the_mix_and_is_seeded() -> None:
    english = [r["metadata"]["route"] for r in traffic(50, {"en": 1.0}, seed=3)]
    assert set(english) == {"chat"}
    assert list(traffic(5, {"zh": 0.5, "code": 0.5}, seed=3)) == list(traffic(5, {"zh": 0.5, "code": 0.5}, seed=3))
    code = next(iter(traffic(1, {"code": 1.0})))
    assert code["metadata"]["route"] == "code-assist"


def test_demo_ingests_shifting_traffic(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", per_phase=40, seed=1)
    assert result.intake.stored == 120
    assert result.intake.stored == 120
    assert result.intake.quarantined == 3
    assert result.samples_per_language.get("zh", 0) > 0
    assert (tmp_path / "demo" / "specwatch.db").exists()


def test_demo_replays_evaluates_and_reports(
    tmp_path: Path, reference_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_demo(tmp_path / "demo", per_phase=60, seed=2, models_dir=reference_models)
    out = capsys.readouterr().out
    assert result.intake.stored == 180
    assert "route=chat/lang=zh" in out and "breach" in out
    report = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    assert report.exists() and "<svg" in report.read_text()
