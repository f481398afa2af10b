"""The head as the engine loads it: the format a deploy picks, the export written once before the switch,
and the exported directory read back by transformers itself (the loader an engine's draft-model path
uses), on the tiny reference models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoder import DraftModel, TargetModel, draft_version, load_draft
from decoder.formats.causal_lm import export_causal_lm
from monitor.base.config import DeployConfig
from retrain.registry import HeadRegistry, RegistryError
from retrain.serving import export_dir, prepare_served_head, serving_format, stored_format

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def registry(tmp_path: Path) -> HeadRegistry:
    return HeadRegistry(tmp_path / "heads")


def no_target() -> TargetModel:
    raise AssertionError("the export exists: the target must not be loaded")


def test_a_draft_model_deploys_as_a_causal_lm_directory_transformers_loads(
    registry: HeadRegistry, reference_models: Path, target: TargetModel
) -> None:
    seed = registry.ensure_seed(reference_models / "drafts" / "draft_model")
    assert stored_format(registry.draft_dir(seed.version)) == "specwatch"
    assert serving_format(DeployConfig(), registry, seed.version) == "causal-lm"

    served = prepare_served_head(DeployConfig(), registry, seed.version, lambda: target)
    assert served.format == "causal-lm" and served.export_dir == export_dir(registry, seed.version, "causal-lm")
    assert served.head_dir == registry.draft_dir(seed.version)
    engine_lm = AutoModelForCausalLM.from_pretrained(served.export_dir, dtype=torch.float32)
    engine_tokenizer = AutoTokenizer.from_pretrained(served.export_dir)
    assert engine_tokenizer.get_vocab() == target.tokenizer.get_vocab()
    ids = torch.tensor([target.encode_prompt("def parse(line):\n    return line.split(',')")])
    ours = load_draft(registry.draft_dir(seed.version), target)
    assert isinstance(ours, DraftModel)
    with torch.no_grad():
        expected = ours.lm(input_ids=ids).logits
        torch.testing.assert_close(engine_lm(input_ids=ids).logits, expected, rtol=0, atol=1e-5)

    again = prepare_served_head(DeployConfig(), registry, seed.version, no_target)
    assert again == served  # written once; a rollback finds it


def test_export_round_trips_and_its_version_is_stable(
    reference_models: Path, target: TargetModel, tmp_path: Path
) -> None:
    draft = load_draft(reference_models / "drafts" / "draft_model", target)
    first = export_causal_lm(draft, target, tmp_path / "first").out_dir
    imported = load_draft(first, target)
    second = export_causal_lm(imported, target, tmp_path / "second").out_dir
    assert stored_format(first) == "causal-lm"
    assert draft_version(first) == draft_version(second)
    ids = torch.tensor([target.encode_prompt("hello there")])
    assert isinstance(imported, DraftModel) and isinstance(draft, DraftModel)
    with torch.no_grad():
        torch.testing.assert_close(imported.lm(input_ids=ids).logits, draft.lm(input_ids=ids).logits, rtol=0, atol=0)


def test_a_lineage_keeps_the_format_it_was_imported_in(
    registry: HeadRegistry, reference_models: Path, target: TargetModel, tmp_path: Path
) -> None:
    draft = load_draft(reference_models / "drafts" / "draft_model", target)
    imported = export_causal_lm(draft, target, tmp_path / "served-by-the-engine").out_dir
    seed = registry.ensure_seed(imported)
    assert serving_format(DeployConfig(), registry, seed.version) == "causal-lm"
    served = prepare_served_head(DeployConfig(), registry, seed.version, no_target)
    assert served.export_dir == served.head_dir == registry.draft_dir(seed.version)  # stored so: no export

    retrained_dir = tmp_path / "retrained"
    shutil.copytree(reference_models / "drafts" / "draft_model", retrained_dir)
    child = registry.register(retrained_dir, parent=seed.version, source="retrain job 1")
    assert stored_format(registry.draft_dir(child.version)) == "specwatch"
    assert serving_format(DeployConfig(), registry, child.version) == "causal-lm"


def test_an_explicit_format_must_hold_the_heads_kind(registry: HeadRegistry, reference_models: Path) -> None:
    seed = registry.ensure_seed(reference_models / "drafts" / "eagle")
    with pytest.raises(RegistryError, match="cannot hold a head of kind eagle"):
        serving_format(DeployConfig(format="causal-lm"), registry, seed.version)
    served = prepare_served_head(DeployConfig(format="specwatch"), registry, seed.version, no_target)
    assert served.format == "specwatch" and served.export_dir == served.head_dir


def test_an_unknown_format_is_refused_in_config() -> None:
    with pytest.raises(
        ValueError,
        match="unknown head format 'vllm'; known formats: auto, specwatch, speculators, sglang, vllm-medusa",
    ):
        DeployConfig(format="vllm")


def test_an_eagle3_lineage_deploys_in_the_speculators_format(
    registry: HeadRegistry, reference_models: Path, target: TargetModel
) -> None:
    from decoder.formats import detect_format

    seed = registry.ensure_seed(reference_models / "drafts" / "eagle3")
    assert serving_format(DeployConfig(), registry, seed.version) == "speculators"
    served = prepare_served_head(DeployConfig(), registry, seed.version, lambda: target)
    engine_format = detect_format(served.export_dir)
    assert engine_format is not None and engine_format.name == "speculators"
    ours, exported = load_draft(served.head_dir, target), load_draft(served.export_dir, target)
    ids = torch.tensor([target.encode_prompt("def parse(line):")])
    with torch.no_grad():
        features = target.forward(ids, feature_layers=ours.feature_layers)
        aux = torch.cat(list(features.features), dim=-1)
        torch.testing.assert_close(exported(aux, ids), ours(aux, ids), rtol=0, atol=1e-5)

    imported = registry.register(served.export_dir, parent=seed.version, source="import: the export")
    assert imported.kind == "eagle3" and stored_format(registry.draft_dir(imported.version)) == "speculators"
    again = prepare_served_head(DeployConfig(), registry, imported.version, no_target)
    assert again.export_dir == again.head_dir  # stored in the engine's format: handed over as is
    sglang = prepare_served_head(DeployConfig(format="sglang"), registry, seed.version, lambda: target)
    assert stored_format(sglang.export_dir) == "sglang"


def test_export_says_which_engines_are_proven_to_load_it_and_refuses_an_eagle_head_with_the_reason(
    registry: HeadRegistry, reference_models: Path, target: TargetModel, tmp_path: Path
) -> None:
    from retrain.serving import export_head

    eagle3 = registry.register(reference_models / "drafts" / "eagle3", parent=None, source="test")
    result = export_head(registry, eagle3.version, "speculators", tmp_path / "speculators", lambda: target)
    assert result.engine_loadable["speculators"] is True
    assert result.engine_loadable["vllm"] is (target.num_layers >= 4)  # three distinct aux ids in 1..N-1
    assert result.details["vllm_reasons"] or result.engine_loadable["vllm"]

    eagle = registry.register(reference_models / "drafts" / "eagle", parent=None, source="test")
    with pytest.raises(RegistryError, match="cannot hold a head of kind eagle: an eagle head cannot be mapped"):
        export_head(registry, eagle.version, "speculators", tmp_path / "refused", no_target)
    assert not (tmp_path / "refused").exists()
