"""The speculators EAGLE-3 format: lossless round trip, stable re-export, the config vLLM reads,
and clear refusals of heads that do not fit the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from decoder import TargetModel, draft_version, load_draft
from decoder.drafts import Eagle3Head
from decoder.errors import DraftFormatError, TokenizerMismatchError
from decoder.formats import FORMATS, detect_format
from decoder.formats.speculators import export_speculators_head
from tests.decoder.formats.conftest import LAYERS, fixed_inputs, random_eagle3
from tests.decoder.random_models import word_tokenizer

HEADS = [
    pytest.param({}, id="llama"),
    pytest.param({"norm_before_residual": True, "draft_vocab_size": 21}, id="norm-before-residual-reduced"),
    pytest.param({"layer_style": "qwen3", "own_embedding": True}, id="qwen3-own-embedding"),
]


@pytest.mark.parametrize("config", HEADS)
def test_round_trip_keeps_logits_and_re_export_is_byte_identical(
    config: dict[str, object], random_target: TargetModel, tmp_path: Path
) -> None:
    head = random_eagle3(random_target, **config)
    first = export_speculators_head(head, random_target, tmp_path / "first", speculative_tokens=4)
    assert detect_format(tmp_path / "first") is FORMATS["speculators"]
    loaded = load_draft(tmp_path / "first", random_target)
    assert isinstance(loaded, Eagle3Head) and loaded.config == head.config
    aux, tokens = fixed_inputs(random_target)
    assert (loaded(aux, tokens) - head(aux, tokens)).abs().max() <= 1e-5
    export_speculators_head(loaded, random_target, tmp_path / "second", speculative_tokens=4)
    assert draft_version(tmp_path / "first") == draft_version(tmp_path / "second")
    assert first.engine_loadable == {"vllm": config.get("layer_style") != "qwen3", "speculators": True}


def test_config_carries_what_vllm_reads(random_target: TargetModel, target_dir: Path, tmp_path: Path) -> None:
    head = random_eagle3(random_target, norm_before_residual=False, draft_vocab_size=21)
    export_speculators_head(head, random_target, tmp_path / "out", speculative_tokens=5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3" and config["architectures"] == ["Eagle3Speculator"]
    assert config["norm_before_residual"] is False  # written, not left to vLLM's default of true
    assert config["draft_vocab_size"] == 21
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    spec = config["speculators_config"]
    assert spec["algorithm"] == "eagle3" and spec["default_proposal_method"] == "greedy"
    assert spec["proposal_methods"][0] == {
        "proposal_type": "greedy",
        "speculative_tokens": 5,
        "verifier_accept_k": 1,
        "accept_tolerance": 0.0,
    }
    assert spec["verifier"] == {"name_or_path": str(target_dir.resolve()), "architectures": ["Qwen2ForCausalLM"]}
    layer = config["transformer_layer_config"]
    assert (layer["model_type"], layer["num_hidden_layers"], layer["vocab_size"]) == (
        "llama",
        1,
        random_target.vocab_size,
    )


def test_a_missing_norm_before_residual_reads_as_vllm_reads_it(random_target: TargetModel, tmp_path: Path) -> None:
    export_speculators_head(random_eagle3(random_target), random_target, tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    config = json.loads(path.read_text())
    del config["norm_before_residual"]
    path.write_text(json.dumps(config))
    loaded = load_draft(tmp_path / "out", random_target)
    assert isinstance(loaded, Eagle3Head) and loaded.eagle3_config.norm_before_residual is True


def edited_export(random_target: TargetModel, tmp_path: Path, **changes: object) -> Path:
    out = tmp_path / "edited"
    export_speculators_head(random_eagle3(random_target), random_target, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("layer_"):
            config["transformer_layer_config"][key.removeprefix("layer_")] = value
        else:
            config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_hidden_size": 64}, "states of size 64; the target's hidden size is 32"),
        ({"target_hidden_size": 64}, "target's hidden size is 32"),
        ({"layer_vocab_size": 100}, "vocabulary of 100 tokens; the target has 48"),
        ({"eagle_aux_hidden_state_layer_ids": [1, 2, LAYERS + 1]}, r"ids within \[0, 4\]"),
        ({"eagle_aux_hidden_state_layer_ids": [1, 1, 2]}, "three distinct"),
        ({"layer_model_type": "qwen2"}, "model_type 'qwen2'"),
        ({"layer_hidden_act": "gelu"}, "hidden_act"),
        ({"norm_before_fc": True}, "norm_before_fc"),
    ],
)
def test_heads_that_do_not_fit_the_target_are_refused(
    changes: dict[str, object], message: str, random_target: TargetModel, tmp_path: Path
) -> None:
    with pytest.raises(DraftFormatError, match=message):
        load_draft(edited_export(random_target, tmp_path, **changes), random_target)


def test_a_tokenizer_saved_with_the_head_must_be_the_targets(random_target: TargetModel, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_speculators_head(random_eagle3(random_target), random_target, out)
    random_target.tokenizer.save_pretrained(out)
    assert isinstance(load_draft(out, random_target), Eagle3Head)
    other = word_tokenizer(eos=1)
    other.add_tokens(["extra"])
    other.save_pretrained(out)
    with pytest.raises(TokenizerMismatchError):
        load_draft(out, random_target)


def test_only_eagle3_heads_export(random_target: TargetModel, tmp_path: Path) -> None:
    from decoder import create_draft

    with pytest.raises(DraftFormatError, match="holds eagle3 heads; this draft is a eagle draft"):
        export_speculators_head(create_draft("eagle", random_target), random_target, tmp_path / "out")
    with pytest.raises(DraftFormatError, match=r"aux layer ids \[1, 1, 2\] repeat"):
        export_speculators_head(random_eagle3(random_target, aux_layer_ids=(1, 1, 2)), random_target, tmp_path / "out")
    with pytest.raises(DraftFormatError, match="speculative_tokens"):
        export_speculators_head(random_eagle3(random_target), random_target, tmp_path / "out", speculative_tokens=0)


def test_tensors_are_the_native_names(random_target: TargetModel, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    head = random_eagle3(random_target, draft_vocab_size=21)
    export_speculators_head(head, random_target, tmp_path / "out")
    stored = load_file(str(tmp_path / "out" / "model.safetensors"))
    native = head.state_dict()
    assert set(stored) == set(native) | {"embed_tokens.weight"}  # the shared embedding, for speculators
    assert all(torch.equal(stored[name], native[name]) for name in native)
    assert torch.equal(stored["embed_tokens.weight"], random_target.input_embeddings().weight)
    export_speculators_head(head, random_target, tmp_path / "lean", include_embedding=False)
    assert set(load_file(str(tmp_path / "lean" / "model.safetensors"))) == set(native)
    assert isinstance(load_draft(tmp_path / "lean", random_target), Eagle3Head)
    assert stored["d2t"].dtype == torch.int64 and stored["t2d"].dtype == torch.bool
