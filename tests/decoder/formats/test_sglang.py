"""The SGLang / SpecForge EAGLE-3 layout, checked against SGLang's published layer
(sglang/srt/models/llama_eagle3.py, 0.5.23) written out here over the `midlayer.*` tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from decoder import TargetModel, draft_version, load_draft
from decoder.drafts import Eagle3Head
from decoder.errors import DraftFormatError
from decoder.formats import FORMATS, detect_format
from decoder.formats.sglang import export_sglang_head
from tests.decoder.eagle3_reference import rms, rope
from tests.decoder.formats.conftest import fixed_inputs, random_eagle3


def sglang_logits(aux: torch.Tensor, tokens: torch.Tensor, w: dict[str, torch.Tensor], config: dict) -> torch.Tensor:
    """LlamaForCausalLMEagle3 for one sequence: fc, the input layer (`residual = hidden_states`, then
    hidden_norm and input_layernorm, cat [embeds, hidden]), attention, the fused add-and-norm
    `post_attention_layernorm(hidden, residual)`, MLP, the final fused `norm(hidden, residual)`;
    draft logits go to target ids `d2t + arange` (hot_token_id)."""
    eps, heads, kv_heads = config["rms_norm_eps"], config["num_attention_heads"], config["num_key_value_heads"]
    dim, time = config["head_dim"], tokens.shape[0]
    hidden_states = F.linear(aux, w["fc.weight"])
    embeds = F.embedding(tokens, w["embed_tokens.weight"])
    residual = hidden_states
    hidden_states = rms(hidden_states, w["midlayer.hidden_norm.weight"], eps)
    embeds = rms(embeds, w["midlayer.input_layernorm.weight"], eps)
    hidden_states = torch.cat([embeds, hidden_states], dim=-1)
    q, k, v = (
        F.linear(hidden_states, w[f"midlayer.self_attn.{name}_proj.weight"]).view(time, count, dim).transpose(0, 1)
        for name, count in (("q", heads), ("k", kv_heads), ("v", kv_heads))
    )
    q, k = rope(q, config["rope_theta"]), rope(k, config["rope_theta"])
    k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
    scores = (q @ k.transpose(1, 2) / math.sqrt(dim)).masked_fill(torch.ones(time, time).triu(1).bool(), -math.inf)
    hidden_states = F.linear(
        (scores.softmax(-1) @ v).transpose(0, 1).reshape(time, -1), w["midlayer.self_attn.o_proj.weight"]
    )
    residual = hidden_states + residual
    hidden_states = rms(residual, w["midlayer.post_attention_layernorm.weight"], eps)
    gate, up = (F.linear(hidden_states, w[f"midlayer.mlp.{n}_proj.weight"]) for n in ("gate", "up"))
    hidden_states = F.linear(F.silu(gate) * up, w["midlayer.mlp.down_proj.weight"])
    draft = F.linear(rms(hidden_states + residual, w["norm.weight"], eps), w["lm_head.weight"])
    full = torch.full((time, config["vocab_size"]), -math.inf)
    full[:, w["d2t"] + torch.arange(w["d2t"].numel())] = draft
    return full


@pytest.mark.parametrize("draft_vocab_size", [48, 19])
def test_export_matches_sglang_layer_and_round_trips(
    draft_vocab_size: int, random_target: TargetModel, tmp_path: Path
) -> None:
    head = random_eagle3(random_target, draft_vocab_size=draft_vocab_size)
    export_sglang_head(head, random_target, tmp_path / "first")
    assert detect_format(tmp_path / "first") is FORMATS["sglang"]
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == draft_vocab_size
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]  # SGLang adds 1: vLLM ids 1, 2, 3
    weights = load_file(str(tmp_path / "first" / "model.safetensors"))
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "midlayer.hidden_norm.weight"} <= set(weights)

    aux, tokens = fixed_inputs(random_target)
    weights["embed_tokens.weight"] = random_target.input_embeddings().weight.detach()  # SGLang shares it
    expected = sglang_logits(aux[0], tokens[0], weights, config)
    loaded = load_draft(tmp_path / "first", random_target)
    assert isinstance(loaded, Eagle3Head)
    features = loaded.fc(torch.cat([aux[0], torch.zeros(1, aux.shape[2])])[None])
    outputs = loaded.chain_outputs(features, torch.cat([tokens[0, :1], tokens[0]])[None], torch.ones(1, 12), 1)
    ours = loaded.proposal_logits(outputs[0][0, :-1], 0)
    finite = expected.isfinite()
    assert torch.equal(ours.isfinite(), finite) and (ours[finite] - expected[finite]).abs().max() <= 1e-5
    assert (loaded(aux, tokens) - head(aux, tokens)).abs().max() <= 1e-5

    export_sglang_head(loaded, random_target, tmp_path / "second")
    assert draft_version(tmp_path / "first") == draft_version(tmp_path / "second")


@pytest.mark.parametrize("config", [{"norm_before_residual": True}, {"layer_style": "qwen3"}])
def test_heads_sglang_cannot_compute_are_not_exported(
    config: dict[str, object], random_target: TargetModel, tmp_path: Path
) -> None:
    with pytest.raises(DraftFormatError, match="SGLang's EAGLE-3 layer is Llama's"):
        export_sglang_head(random_eagle3(random_target, **config), random_target, tmp_path / "out")


def test_sglang_loader_requirements(random_target: TargetModel, tmp_path: Path) -> None:
    export_sglang_head(random_eagle3(random_target), random_target, tmp_path / "out")
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    del weights["t2d"]
    save_file(weights, str(tmp_path / "out" / "model.safetensors"))
    with pytest.raises(DraftFormatError, match=r"missing \['t2d'\]"):
        load_draft(tmp_path / "out", random_target)
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"tie_word_embeddings": True}))
    with pytest.raises(DraftFormatError, match="tie_word_embeddings"):
        load_draft(tmp_path / "out", random_target)
