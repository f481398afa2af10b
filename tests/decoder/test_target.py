"""The target wrapper: fingerprints, chat encoding, cache rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from decoder import TargetModel, load_target, target_fingerprint
from decoder.batching import PackedLayout
from decoder.samples import pack_rows
from decoder.target import crop_cache, run_base_model


def test_fingerprint_is_stable_across_loads_and_dtypes(reference_dir: Path, target: TargetModel) -> None:
    again = load_target(reference_dir / "target", device="cpu")
    assert again.fingerprint == target.fingerprint
    as_bfloat16 = load_target(reference_dir / "target", device="cpu", dtype=torch.bfloat16)
    assert as_bfloat16.fingerprint == target.fingerprint
    assert len(target.fingerprint) == 16


def test_fingerprint_changes_with_the_weights(reference_dir: Path, target: TargetModel) -> None:
    other = load_target(reference_dir / "target", device="cpu")
    with torch.no_grad():
        next(other.model.get_decoder().layers[-1].parameters()).add_(0.5)
    assert target_fingerprint(other.model, other.tokenizer) != target.fingerprint


def test_encode_chat_renders_the_template(target: TargetModel) -> None:
    ids = target.encode_chat([{"role": "user", "content": "Hello there"}])
    text = target.tokenizer.decode(ids)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    completion = target.encode_completion("General Kenobi")
    assert completion[-1] == target.eos_token_id


def test_cache_rollback_matches_a_fresh_forward(target: TargetModel) -> None:
    ids = torch.tensor([target.encode_chat([{"role": "user", "content": "Good morning"}])])
    with torch.inference_mode():
        cache = target.new_cache()
        target.forward(ids, cache=cache)
        target.forward(torch.tensor([[5, 6, 7]]), cache=cache)
        crop_cache(cache, 3)
        crop_cache(cache, 0)  # a no-op, never crop(0)
        assert cache.get_seq_length() == ids.shape[1]
        extended = target.forward(torch.tensor([[9]]), cache=cache).hidden[0, -1]
        fresh = target.forward(torch.cat([ids, torch.tensor([[9]])], dim=1)).hidden[0, -1]
    assert torch.allclose(extended, fresh, atol=1e-5)


def test_feature_layers_are_decoder_layer_outputs(target: TargetModel) -> None:
    ids = torch.tensor([[10, 11, 12, 13]])
    with torch.inference_mode():
        output = target.forward(ids, feature_layers=(0, target.num_layers - 1))
        reference = target.model.get_decoder()(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(output.features[0], reference[1], atol=1e-6)
    assert torch.allclose(output.hidden, reference[-1], atol=1e-6)


@pytest.mark.parametrize("device", ["auto", None, "cpu"])
def test_cpu_loads_in_float32(reference_dir: Path, device: str | None) -> None:
    if torch.cuda.is_available() and device != "cpu":
        pytest.skip("a GPU is present")
    assert load_target(reference_dir / "target", device=device).dtype == torch.float32


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_sequences_get_the_states_they_get_alone(attention: str) -> None:
    """Three sequences packed in one row (and the padding closing it) through a real Qwen2 model: each
    sequence's hidden states equal a forward of that sequence alone, under either attention."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
    sequences = [torch.randint(1, 64, (length,)) for length in (7, 4, 5)]
    layout = PackedLayout(width=18, num_rows=1, rows=(0, 0, 0), starts=(0, 7, 11))
    batch = pack_rows([(s.tolist(), []) for s in sequences], layout, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        packed = run_base_model(model, batch.input_ids, batch.attention_mask, position_ids=batch.position_ids)
        for sequence, start in zip(sequences, layout.starts, strict=True):
            alone = run_base_model(model, sequence[None])
            assert torch.allclose(packed[0, start : start + len(sequence)], alone[0], atol=1e-5)
