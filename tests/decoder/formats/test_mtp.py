"""`mtp` format: the reference target carries its MTP layer (model.layers.{N}.*) and still loads with
transformers; the layer read from the checkpoint computes vLLM's function on the checkpoint's own
tensors; MTP-only export/import round trips; hostile directories are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from decoder import Draft, DraftFormatError, TargetModel, TokenizerMismatchError, draft_version, load_draft
from decoder.drafts import DraftInputs, MtpHead
from decoder.formats import FORMATS, detect_format
from decoder.formats.mtp import load_target_mtp
from decoder.reference import train_tokenizer
from tests.decoder import vllm_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MTP = FORMATS["mtp"]
TOLERANCE = 1e-5
LAYER = "model.layers.2."  # the tiny reference target has 2 decoder layers


def checkpoint_layer(target_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as handle:
        return {name.removeprefix(LAYER): handle.get_tensor(name) for name in handle.keys() if name.startswith(LAYER)}  # noqa: SIM118


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[name], other[name]) for name in one)


def test_the_reference_target_carries_its_mtp_layer_and_still_loads(reference_dir: Path, target: TargetModel) -> None:
    target_dir = reference_dir / "target"
    config = json.loads((target_dir / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 1 and config["num_hidden_layers"] == 2
    assert detect_format(target_dir) is MTP
    assert target.num_layers == 2  # transformers ignored the extra layer
    layer = checkpoint_layer(target_dir)
    assert torch.equal(layer["shared_head.head.weight"], target.output_embeddings().weight)
    assert torch.equal(layer["embed_tokens.weight"], target.input_embeddings().weight)
    # the drafts record the fingerprint of the checkpoint as finally written
    assert load_draft(reference_dir / "drafts" / "mtp", target).target_fingerprint == target.fingerprint
    from_target = load_target_mtp(target_dir, target)
    trained = load_draft(reference_dir / "drafts" / "mtp", target)
    assert same_weights(from_target, trained)


def test_the_checkpoints_layer_computes_vllms_mtp_function(reference_dir: Path, target: TargetModel) -> None:
    head = load_target_mtp(reference_dir / "target", target)
    ids = torch.tensor([target.encode_chat([{"role": "user", "content": "Do you like music?"}])])
    states = target.forward(ids)
    with torch.no_grad():
        ours = head.proposal_logits(
            head.teacher_forced_proposals(DraftInputs(ids, torch.ones_like(ids), states), 1)[0][0, 1:], 0
        )
    layer = checkpoint_layer(reference_dir / "target")
    config = target.config
    shape = {
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "eps": config.rms_norm_eps,
        "theta": config.rope_parameters["rope_theta"],
    }
    time = ids.shape[1]
    output, _ = vllm_reference.mtp_forward(
        layer, layer["embed_tokens.weight"], ids[0, 1:], states.hidden[0, : time - 1], torch.arange(time - 1), shape
    )
    truth = vllm_reference.mtp_logits(layer, layer["shared_head.head.weight"], output, config.rms_norm_eps)
    assert (ours.double() - truth).abs().max() <= TOLERANCE


def test_export_then_import_is_the_same_head_and_re_exports_byte_identically(
    tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]
) -> None:
    first = MTP.export(drafts["mtp"], target, tmp_path / "first").out_dir
    assert detect_format(first) is MTP
    assert all(name.startswith(LAYER) for name in load_file(str(first / "model.safetensors")))
    imported = MTP.load(first, target)
    assert same_weights(imported, drafts["mtp"])
    second = MTP.export(imported, target, tmp_path / "second").out_dir
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    assert draft_version(first) == draft_version(second)


def copy_target(reference_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference_dir / "target", tmp_path / "target"))


def rewrite_weights(directory: Path, keep: str) -> None:
    """Keeps only the tensors whose names do (or, with keep="trunk", do not) start with the MTP prefix."""
    tensors = load_file(str(directory / "model.safetensors"))
    kept = {n: t for n, t in tensors.items() if n.startswith(LAYER) != (keep == "trunk")}
    save_file(kept, str(directory / "model.safetensors"), {"format": "pt"})


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_a_target_without_its_mtp_weights_is_refused_by_name(
    reference_dir: Path, tmp_path: Path, target: TargetModel
) -> None:
    directory = copy_target(reference_dir, tmp_path)
    rewrite_weights(directory, keep="trunk")
    with pytest.raises(
        DraftFormatError, match=r"declares num_nextn_predict_layers: 1 but its weights hold no model\.layers\.2\.\*"
    ):
        load_target_mtp(directory, target)


def test_a_target_without_mtp_layers_is_not_an_mtp_head(
    reference_dir: Path, tmp_path: Path, target: TargetModel
) -> None:
    directory = copy_target(reference_dir, tmp_path)
    edit_config(directory, num_nextn_predict_layers=0)
    detected = detect_format(directory)
    assert detected is not None and detected.name == "causal-lm"  # a plain causal LM, not an MTP head
    with pytest.raises(DraftFormatError, match=r'models\.draft = "mtp" needs a target'):
        load_target_mtp(directory, target)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_nextn_predict_layers": 2}, "exactly one MTP layer"),
        ({"hidden_size": 64}, "hidden_size 64, but the target's is 96"),
        ({"vocab_size": 600}, "vocab_size 600, but the target's is 512"),
        ({"model_type": "deepseek_v3"}, "model_type 'deepseek_v3' are not supported"),
    ],
)
def test_an_mtp_layer_that_does_not_fit_is_refused_by_name(
    changes: dict[str, object], message: str, reference_dir: Path, tmp_path: Path, target: TargetModel
) -> None:
    directory = copy_target(reference_dir, tmp_path)
    edit_config(directory, **changes)
    with pytest.raises(DraftFormatError, match=message):
        MTP.load(directory, target)


def test_truncated_weights_are_refused_by_name(reference_dir: Path, tmp_path: Path, target: TargetModel) -> None:
    directory = copy_target(reference_dir, tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(DraftFormatError, match="truncated"):
        MTP.load(directory, target)


def test_an_mtp_only_directory_with_another_tokenizer_is_refused(
    tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]
) -> None:
    directory = MTP.export(drafts["mtp"], target, tmp_path / "mtp").out_dir
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (directory / name).unlink(missing_ok=True)
    train_tokenizer(["another corpus entirely, another vocabulary"] * 20, vocab_size=300).save_pretrained(directory)
    with pytest.raises(TokenizerMismatchError):
        MTP.load(directory, target)


def test_only_mtp_heads_export(tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]) -> None:
    with pytest.raises(DraftFormatError, match="not a medusa draft"):
        MTP.export(drafts["medusa"], target, tmp_path / "medusa")
    assert isinstance(drafts["mtp"], MtpHead)
