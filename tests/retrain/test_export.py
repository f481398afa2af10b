"""Exporting the tiny reference heads: eagle3 losslessly in both engine formats, with an honest
vllm_loadable; eagle and the other kinds refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from decoder import draft_version
from retrain.export import REPORT_FILE, ExportError, export_sglang, export_speculators


def test_speculators_export_of_the_reference_eagle3_head(reference_models: Path, tmp_path: Path) -> None:
    head, target = reference_models / "drafts" / "eagle3", reference_models / "target"
    report = export_speculators(head, target, tmp_path / "first", speculative_tokens=3)
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3"
    assert config["speculators_config"]["verifier"]["name_or_path"] == str(target.resolve())
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    assert report.source_version == draft_version(head)
    assert report.engine_loadable["speculators"] is True
    # the 2-layer tiny target has no three distinct aux ids vLLM collects (ids 1..1): not loadable, and said why
    assert report.vllm_loadable is False and any("vLLM collects ids 1..1" in reason for reason in report.reasons)
    assert json.loads((tmp_path / "first" / REPORT_FILE).read_text()) == json.loads(json.dumps(report.to_dict()))
    assert "loadable by vLLM as-is: no" in report.to_markdown()
    export_speculators(head, target, tmp_path / "second", speculative_tokens=3)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_sglang_export_of_the_reference_eagle3_head(reference_models: Path, tmp_path: Path) -> None:
    report = export_sglang(reference_models / "drafts" / "eagle3", reference_models / "target", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert report.format == "sglang" and report.vllm_loadable is False and report.engine_loadable == {"sglang": False}


def test_an_eagle_head_is_refused_with_the_reason(reference_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot be mapped to EAGLE-3 exactly.*eagle3"):
        export_speculators(reference_models / "drafts" / "eagle", reference_models / "target", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["medusa", "draft_model"])
def test_other_kinds_are_refused(kind: str, reference_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=f"is a {kind} draft; the engine formats here hold eagle3 heads"):
        export_sglang(reference_models / "drafts" / kind, reference_models / "target", tmp_path / "out")


def test_bad_inputs(reference_models: Path, tmp_path: Path) -> None:
    head = reference_models / "drafts" / "eagle3"
    with pytest.raises(ExportError, match="speculative_tokens"):
        export_speculators(head, reference_models / "target", tmp_path / "out", speculative_tokens=0)
    with pytest.raises(ExportError, match="no config"):
        export_speculators(head, tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="no config"):
        export_speculators(tmp_path, reference_models / "target", tmp_path / "out")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copyfile(head / "config.json", no_weights / "config.json")
    with pytest.raises(ExportError, match=r"no model\.safetensors"):
        export_speculators(no_weights, reference_models / "target", tmp_path / "out")
