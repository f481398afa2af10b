"""`vllm-medusa`: directories laid out as vLLM's MedusaModel loads them compute vLLM's function
(tests/decoder/vllm_reference.py); export/import round trips; hostile directories are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from decoder import Draft, DraftFormatError, TargetModel, TokenizerMismatchError, draft_version
from decoder.drafts import MedusaHeads
from decoder.formats import FORMATS, detect_format
from decoder.reference import train_tokenizer
from tests.decoder import vllm_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEDUSA = FORMATS["vllm-medusa"]
TOLERANCE = 1e-5


def write_vllm_medusa(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(directory / "model.safetensors"))
    return directory


def random_medusa_tensors(
    target: TargetModel, heads: int, layers: int, bias: bool, shared: bool, seed: int
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden, vocab = target.hidden_size, target.vocab_size
    tensors = {}
    for head in range(heads):
        for layer in range(layers):
            tensors[f"blocks.{head}.layers.{layer}.weight"] = 0.05 * torch.randn(hidden, hidden, generator=generator)
            if bias:
                tensors[f"blocks.{head}.layers.{layer}.bias"] = 0.05 * torch.randn(hidden, generator=generator)
    for head in range(1 if shared else heads):
        tensors[f"lm_heads.{head}.weight"] = 0.2 * torch.randn(vocab, hidden, generator=generator)
    return tensors


def medusa_config(target: TargetModel, **fields: Any) -> dict[str, Any]:
    return {
        "architectures": ["MedusaModel"],
        "model_type": "medusa",
        "hidden_size": target.hidden_size,
        "vocab_size": target.vocab_size,
        **fields,
    }


def our_logits(draft: Draft, hidden: torch.Tensor) -> list[torch.Tensor]:
    assert isinstance(draft, MedusaHeads)
    with torch.no_grad():
        return [draft.proposal_logits(draft.head_states(hidden, i), i) for i in range(draft.max_draft_tokens)]


def target_states(target: TargetModel) -> torch.Tensor:
    ids = torch.tensor([target.encode_chat([{"role": "user", "content": "What is your favourite book?"}])])
    with torch.no_grad():
        return target.forward(ids).hidden[0]


VARIANTS = {
    "per-head LM heads, biased blocks, two layers": (
        {"num_heads": 3, "num_hidden_layers": 2, "medusa_fc_bias": True},
        {"heads": 3, "layers": 2, "bias": True, "shared": False},
    ),
    "one original LM head, bias-free": (
        {"num_heads": 2, "num_hidden_layers": 1, "original_lm_head": True},
        {"heads": 2, "layers": 1, "bias": False, "shared": True},
    ),
    "Medusa repo keys, biases vLLM ignores": (
        {"medusa_num_heads": 4, "medusa_num_layers": 1},
        {"heads": 4, "layers": 1, "bias": True, "shared": False},
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_vllm_directory_computes_vllms_medusa(variant: str, tmp_path: Path, target: TargetModel) -> None:
    fields, shape = VARIANTS[variant]
    tensors = random_medusa_tensors(target, seed=len(variant), **shape)
    if fields.get("original_lm_head"):
        tensors["lm_head.weight"] = tensors.pop("lm_heads.0.weight")
    directory = write_vllm_medusa(tmp_path / "medusa", medusa_config(target, **fields), tensors)
    assert detect_format(directory) is MEDUSA
    draft = MEDUSA.load(directory, target)
    hidden = target_states(target)
    config = vllm_reference_config(fields)
    truth = vllm_reference.medusa_logits(config, tensors, hidden)
    ours = our_logits(draft, hidden)
    assert len(ours) == len(truth) == config["num_heads"]
    assert max(float((a.double() - b).abs().max()) for a, b in zip(ours, truth, strict=True)) <= TOLERANCE


def vllm_reference_config(fields: dict[str, Any]) -> dict[str, Any]:
    """The config as vLLM's MedusaConfig.from_pretrained renames it (medusa_num_heads -> num_heads ...)."""
    renamed = {"medusa_num_heads": "num_heads", "medusa_num_layers": "num_hidden_layers"}
    return {renamed.get(key, key): value for key, value in fields.items()}


def test_export_then_import_is_the_same_head_and_re_exports_byte_identically(
    tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]
) -> None:
    medusa = drafts["medusa"]
    first = MEDUSA.export(medusa, target, tmp_path / "first").out_dir
    assert detect_format(first) is MEDUSA
    imported = MEDUSA.load(first, target)
    hidden = target_states(target)
    assert all(torch.equal(a, b) for a, b in zip(our_logits(imported, hidden), our_logits(medusa, hidden), strict=True))
    second = MEDUSA.export(imported, target, tmp_path / "second").out_dir
    for name in ("config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert draft_version(first) == draft_version(second)


def test_a_bias_free_shared_head_directory_re_exports_as_it_came(tmp_path: Path, target: TargetModel) -> None:
    tensors = random_medusa_tensors(target, heads=2, layers=1, bias=False, shared=True, seed=5)
    tensors["lm_head.weight"] = tensors.pop("lm_heads.0.weight")
    fields = {"num_heads": 2, "num_hidden_layers": 1, "original_lm_head": True}
    source = write_vllm_medusa(tmp_path / "source", medusa_config(target, **fields), tensors)
    exported = MEDUSA.export(MEDUSA.load(source, target), target, tmp_path / "exported").out_dir
    written = json.loads((exported / "config.json").read_text())
    assert written["medusa_fc_bias"] is False and written["original_lm_head"] is True
    assert written["num_heads"] == 2 and written["num_hidden_layers"] == 1
    again = MEDUSA.load(exported, target)
    hidden = target_states(target)
    truth = vllm_reference.medusa_logits(fields, tensors, hidden)
    assert max(float((a.double() - b).abs().max()) for a, b in zip(our_logits(again, hidden), truth, strict=True)) <= (
        TOLERANCE
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 64}, "hidden_size 64, but the target's is 96"),
        ({"vocab_size": 500}, "vocab_size 500, but the target's is 512"),
        ({"truncated_vocab_size": 100}, "reduced vocabulary"),
        ({"num_hidden_layers": 2}, "missing"),
        ({"num_heads": 0}, "outside what the medusa kind holds"),
    ],
)
def test_a_directory_that_does_not_fit_the_target_is_refused_by_name(
    change: dict[str, Any], message: str, tmp_path: Path, target: TargetModel
) -> None:
    tensors = random_medusa_tensors(target, heads=2, layers=1, bias=True, shared=False, seed=7)
    config = medusa_config(target, num_heads=2, num_hidden_layers=1, medusa_fc_bias=True) | change
    directory = write_vllm_medusa(tmp_path / "medusa", config, tensors)
    with pytest.raises(DraftFormatError, match=message):
        MEDUSA.load(directory, target)


def test_a_directory_with_another_tokenizer_is_refused(tmp_path: Path, target: TargetModel) -> None:
    tensors = random_medusa_tensors(target, heads=2, layers=1, bias=True, shared=False, seed=8)
    fields = {"num_heads": 2, "num_hidden_layers": 1, "medusa_fc_bias": True}
    directory = write_vllm_medusa(tmp_path / "medusa", medusa_config(target, **fields), tensors)
    train_tokenizer(["another corpus entirely, another vocabulary"] * 20, vocab_size=300).save_pretrained(directory)
    with pytest.raises(TokenizerMismatchError):
        MEDUSA.load(directory, target)


def test_truncated_weights_are_refused_by_name(tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]) -> None:
    directory = MEDUSA.export(drafts["medusa"], target, tmp_path / "medusa").out_dir
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DraftFormatError, match="truncated"):
        MEDUSA.load(directory, target)


def test_only_medusa_heads_export(tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]) -> None:
    with pytest.raises(DraftFormatError, match="not a eagle draft"):
        MEDUSA.export(drafts["eagle"], target, tmp_path / "eagle")
