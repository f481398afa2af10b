"""Draft kinds: save/load round trip, the registry, and refusing drafts that do not belong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from decoder import (
    DRAFT_KINDS,
    Draft,
    DraftConfig,
    DraftFormatError,
    DraftTargetMismatchError,
    TargetModel,
    TokenizedSample,
    TokenizerMismatchError,
    create_draft,
    kind_objective,
    load_draft,
    load_target,
    read_manifest,
    save_draft,
    score_batch,
)
from decoder.reference import train_tokenizer
from tests.decoder.conftest import KINDS


def test_all_kinds_are_registered() -> None:
    # registration order is the reference build's training order (tests/decoder/conftest.KINDS)
    assert list(DRAFT_KINDS) == ["draft_model", "medusa", "eagle", "eagle3", "mtp"]
    assert tuple(DRAFT_KINDS) == KINDS


def test_the_manifest_config_union_covers_the_registry() -> None:
    members = get_args(get_args(DraftConfig)[0])
    assert {member.model_fields["kind"].default for member in members} == set(DRAFT_KINDS)
    assert {kind: cls.config_class for kind, cls in DRAFT_KINDS.items()} == {
        member.model_fields["kind"].default: member for member in members
    }


def test_every_kind_names_its_training_objective() -> None:
    assert kind_objective("draft_model") == "KL(target || draft) per position"
    assert all(kind_objective(kind) for kind in DRAFT_KINDS)
    with pytest.raises(KeyError):
        kind_objective("nonesuch")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(
    kind: str,
    tmp_path: Path,
    target: TargetModel,
    drafts: dict[str, Draft],
    greedy_samples: list[TokenizedSample],
) -> None:
    draft = drafts[kind]
    save_draft(draft, tmp_path / kind, training={"note": "round trip", "steps": 3})
    manifest = json.loads((tmp_path / kind / "config.json").read_text())
    assert manifest["draft"]["kind"] == kind
    assert manifest["target_fingerprint"] == target.fingerprint
    assert manifest["training"] == {"note": "round trip", "steps": 3}
    assert (tmp_path / kind / "model.safetensors").is_file()

    loaded = load_draft(tmp_path / kind, target)
    assert type(loaded) is type(draft)
    assert loaded.training_metadata == {"note": "round trip", "steps": 3}
    for name, value in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    before = score_batch(target, draft, greedy_samples[:4], window=3)
    after = score_batch(target, loaded, greedy_samples[:4], window=3)
    assert [s.acceptance for s in before] == [s.acceptance for s in after]


def test_reference_drafts_record_how_they_were_trained(reference_dir: Path) -> None:
    manifest = read_manifest(reference_dir / "drafts" / "eagle")
    assert manifest.training["languages"] == ["en", "code"]
    assert manifest.training["steps"] > 0


def test_draft_for_another_target_is_refused_with_both_fingerprints(
    tmp_path: Path, target: TargetModel, reference_dir: Path
) -> None:
    other_dir = tmp_path / "other-target"
    other = load_target(reference_dir / "target", device="cpu")
    with torch.no_grad():
        other.model.get_input_embeddings().weight.mul_(1.5)  # e.g. a fine-tuned copy
    other.model.save_pretrained(other_dir)
    other.tokenizer.save_pretrained(other_dir)
    other = load_target(other_dir, device="cpu")
    assert other.fingerprint != target.fingerprint

    with pytest.raises(DraftTargetMismatchError) as raised:
        load_draft(reference_dir / "drafts" / "medusa", other)
    assert target.fingerprint in str(raised.value) and other.fingerprint in str(raised.value)
    warm_start = load_draft(reference_dir / "drafts" / "medusa", other, check_target=False)
    assert warm_start.target_fingerprint == target.fingerprint


def other_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(["completely different text " * 50, "another vocabulary entirely"], 300)


def test_draft_with_another_tokenizer_is_refused(tmp_path: Path, target: TargetModel, reference_dir: Path) -> None:
    manifest_path = reference_dir / "drafts" / "draft_model" / "config.json"
    copy = tmp_path / "draft_model"
    copy.mkdir()
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer_fingerprint"] = "0123456789abcdef"
    (copy / "config.json").write_text(json.dumps(manifest))
    (copy / "model.safetensors").write_bytes((manifest_path.parent / "model.safetensors").read_bytes())
    with pytest.raises(TokenizerMismatchError, match="different tokenizer"):
        load_draft(copy, target)


def test_plain_causal_lm_directory_loads_as_draft_model_only_with_the_same_tokenizer(
    tmp_path: Path, target: TargetModel, drafts: dict[str, Draft]
) -> None:
    lm = drafts["draft_model"].lm  # type: ignore[union-attr]
    same = tmp_path / "same-tokenizer"
    lm.save_pretrained(same)
    target.tokenizer.save_pretrained(same)
    loaded = load_draft(same, target)
    assert loaded.kind == "draft_model"

    different = tmp_path / "different-tokenizer"
    lm.save_pretrained(different)
    other_tokenizer().save_pretrained(different)
    with pytest.raises(TokenizerMismatchError):
        load_draft(different, target)


def test_missing_or_foreign_directory_is_a_format_error(tmp_path: Path, target: TargetModel) -> None:
    with pytest.raises(DraftFormatError):
        load_draft(tmp_path, target)
    (tmp_path / "config.json").write_text(json.dumps({"format": "specwatch-draft", "draft": {"kind": "nope"}}))
    with pytest.raises(DraftFormatError):
        load_draft(tmp_path, target)


def test_create_draft_rejects_unknown_kind(target: TargetModel) -> None:
    with pytest.raises(DraftFormatError, match="unknown draft kind"):
        create_draft("lookahead", target)
