"""The tiny reference build: layout, report, and the blind spot the drafts are built to have."""

from __future__ import annotations

import json
from pathlib import Path

from decoder import load_draft, load_target
from decoder.reference import REFERENCE_SPECS, ReferenceReport
from tests.decoder.conftest import KINDS


def test_layout_and_report(reference: tuple[Path, ReferenceReport]) -> None:
    out, report = reference
    assert (out / "target" / "config.json").is_file()
    assert (out / "target" / "tokenizer.json").is_file()
    for kind in KINDS:
        assert (out / "drafts" / kind / "model.safetensors").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["size"] == "tiny" and set(saved["drafts"]) == set(KINDS)
    assert set(report.heldout_loss) == {"en", "zh", "code"}
    assert set(report.heldout_loss_before_chat_tuning) == set(report.heldout_loss)
    assert all(0 < loss < 8 for loss in report.heldout_loss.values())
    lines = report.summary_lines()
    assert any("held-out loss" in line for line in lines)
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert {"en", "zh", "code"} <= {record["language"] for record in heldout}


def test_english_is_accepted_more_than_chinese(reference: tuple[Path, ReferenceReport]) -> None:
    """Drafts are trained on English and code only: Chinese traffic is their blind spot."""
    _, report = reference
    for kind in KINDS:
        en, zh = report.drafts[kind]["en"], report.drafts[kind]["zh"]
        assert en.alpha is not None and zh.alpha is not None
        assert en.alpha > zh.alpha, kind
        assert en.target_agreement == 1.0


def test_saved_models_load(reference_dir: Path) -> None:
    target = load_target(reference_dir / "target", device="cpu")
    assert target.context_length == REFERENCE_SPECS["tiny"].context_length
    for kind in KINDS:
        assert load_draft(reference_dir / "drafts" / kind, target).kind == kind
