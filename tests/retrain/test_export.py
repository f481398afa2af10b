"""Speculators (EAGLE-3) export of the tiny reference eagle head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from decoder import draft_version
from retrain.export import COMPATIBILITY, REPORT_FILE, ExportError, export_speculators

H, V, FFN = 96, 512, 256  # the tiny reference: hidden size, vocabulary, MLP width
EXPECTED_SHAPES = {
    "fc.weight": (H, 3 * H),
    "layers.0.input_layernorm.weight": (H,),
    "layers.0.hidden_norm.weight": (H,),
    "layers.0.self_attn.o_proj.weight": (H, H),
    "layers.0.post_attention_layernorm.weight": (H,),
    "layers.0.mlp.gate_proj.weight": (FFN, H),
    "layers.0.mlp.up_proj.weight": (FFN, H),
    "layers.0.mlp.down_proj.weight": (H, FFN),
    "norm.weight": (H,),
    "lm_head.weight": (V, H),
    "d2t": (V,),
    "t2d": (V,),
}


@pytest.fixture
def exported(reference_models: Path, tmp_path: Path) -> tuple[Path, Any]:
    out = tmp_path / "speculator"
    report = export_speculators(
        reference_models / "drafts" / "eagle", reference_models / "target", out, speculative_tokens=3
    )
    return out, report


def vllm_config_checks(config: dict[str, Any]) -> int:
    """The structure vLLM's SpeculatorsConfig validates before it builds a speculative config."""
    spec = config["speculators_config"]
    assert config["speculators_model_type"] in ("eagle", "eagle3")
    assert spec["verifier"]["name_or_path"]
    assert isinstance(config["transformer_layer_config"], dict)
    return int(spec["proposal_methods"][0]["speculative_tokens"])


def test_config_has_the_speculators_keys(exported: tuple[Path, Any], reference_models: Path) -> None:
    from transformers import LlamaConfig

    out, report = exported
    config = json.loads((out / "config.json").read_text())
    assert vllm_config_checks(config) == 3
    assert config["architectures"] == ["Eagle3Speculator"]
    assert config["draft_vocab_size"] == V and config["norm_before_residual"] is False
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 2]  # feature_layers (0, 1, 1) + 1
    spec = config["speculators_config"]
    assert spec["algorithm"] == "eagle3" and spec["default_proposal_method"] == "greedy"
    assert spec["proposal_methods"][0]["proposal_type"] == "greedy"
    assert spec["verifier"] == {
        "name_or_path": str((reference_models / "target").resolve()),
        "architectures": ["Qwen2ForCausalLM"],
    }
    layer = LlamaConfig(**config["transformer_layer_config"])
    assert (layer.hidden_size, layer.num_hidden_layers, layer.head_dim, layer.num_key_value_heads) == (H, 1, 24, 2)
    marker = config["specwatch_export"]
    assert marker["vllm_loadable"] is False and marker["source_version"] == report.source_version
    assert marker["missing_tensors"] == [f"layers.0.self_attn.{m}_proj.weight" for m in "qkv"]


def test_weights_have_vllm_names_and_shapes(exported: tuple[Path, Any], reference_models: Path) -> None:
    out, _ = exported
    with safe_open(str(out / "model.safetensors"), framework="np") as weights:
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    assert shapes == EXPECTED_SHAPES
    ours = load_file(str(reference_models / "drafts" / "eagle" / "model.safetensors"))
    target = load_file(str(reference_models / "target" / "model.safetensors"))
    exported_weights = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(exported_weights["fc.weight"], ours["fuse.weight"])
    np.testing.assert_array_equal(exported_weights["layers.0.hidden_norm.weight"], ours["feature_norm.weight"])
    np.testing.assert_array_equal(exported_weights["lm_head.weight"], target["lm_head.weight"])
    assert exported_weights["d2t"].dtype == np.int64 and not exported_weights["d2t"].any()
    assert exported_weights["t2d"].dtype == np.bool_ and exported_weights["t2d"].all()


def test_report_says_what_did_not_map(exported: tuple[Path, Any], reference_models: Path) -> None:
    out, report = exported
    assert report.source_version == draft_version(reference_models / "drafts" / "eagle")
    assert not report.vllm_loadable
    assert {entry.name for entry in report.mapped} == set(EXPECTED_SHAPES)
    assert {"input_proj.weight", "layer.attention_norm.weight", "layer.q_proj.weight"} <= {
        entry.name for entry in report.unmapped
    }
    assert [entry.shape for entry in report.missing] == [[H, 2 * H], [48, 2 * H], [48, 2 * H]]
    assert any("repeat a layer" in warning for warning in report.warnings)  # tiny fuses layer 1 twice
    assert any("last layer" in note for note in report.notes)
    assert json.loads((out / REPORT_FILE).read_text()) == json.loads(json.dumps(report.to_dict()))
    assert "input_proj.weight" in report.to_markdown() and "loadable by vLLM as-is: no" in report.to_markdown()
    assert "llama_eagle3.py" in COMPATIBILITY


def test_tied_target_uses_its_embedding(reference_models: Path, tmp_path: Path) -> None:
    target = tmp_path / "tied-target"
    target.mkdir()
    config = json.loads((reference_models / "target" / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": True}))
    weights = load_file(str(reference_models / "target" / "model.safetensors"))
    embedding = weights["model.embed_tokens.weight"]
    del weights["lm_head.weight"]
    save_file(weights, str(target / "model.safetensors"))
    export_speculators(reference_models / "drafts" / "eagle", target, tmp_path / "out")
    np.testing.assert_array_equal(load_file(str(tmp_path / "out" / "model.safetensors"))["lm_head.weight"], embedding)

    (target / "config.json").write_text(json.dumps(config))  # untied, and no lm_head: nothing to share
    with pytest.raises(ExportError, match="no LM head"):
        export_speculators(reference_models / "drafts" / "eagle", target, tmp_path / "out2")


@pytest.mark.parametrize("kind", ["medusa", "draft_model"])
def test_other_kinds_are_refused(kind: str, reference_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=f"supports eagle heads; .* is a {kind} draft"):
        export_speculators(reference_models / "drafts" / kind, reference_models / "target", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs(reference_models: Path, tmp_path: Path) -> None:
    eagle = reference_models / "drafts" / "eagle"
    with pytest.raises(ExportError, match="speculative_tokens"):
        export_speculators(eagle, reference_models / "target", tmp_path / "out", speculative_tokens=0)
    with pytest.raises(ExportError, match="no config"):
        export_speculators(eagle, tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="no config"):
        export_speculators(tmp_path, reference_models / "target", tmp_path / "out")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copyfile(eagle / "config.json", no_weights / "config.json")
    with pytest.raises(ExportError, match=r"no model\.safetensors"):
        export_speculators(no_weights, reference_models / "target", tmp_path / "out")
