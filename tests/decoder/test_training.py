"""fit_draft: loss goes down, runs are reproducible from the seed, warm starts continue."""

from __future__ import annotations

import pytest
import torch

from decoder import FitConfig, TargetModel, create_draft, fit_draft, pack_token_batches
from decoder.reference import encode_documents
from decoder.reference_corpus import dialog_documents, split
from tests.decoder.conftest import KINDS


@pytest.fixture(scope="module")
def english_batches(target: TargetModel) -> list:
    documents = split(dialog_documents("en"))[0][:200]
    return pack_token_batches(encode_documents(target.tokenizer, documents), sequence_length=48, batch_size=8)


def small_draft(kind: str, target: TargetModel):
    overrides = {"draft_model": {"hidden_size": 32, "num_layers": 1}, "medusa": {"num_heads": 2}}
    return create_draft(kind, target, **overrides.get(kind, {}))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_goes_down_and_seed_reproduces(kind: str, target: TargetModel, english_batches: list) -> None:
    config = FitConfig(steps=25, learning_rate=3e-3, warmup_steps=2, seed=3)
    torch.manual_seed(0)
    first = fit_draft(target, small_draft(kind, target), english_batches, config)
    torch.manual_seed(0)
    second = fit_draft(target, small_draft(kind, target), english_batches, config)
    assert first.losses == second.losses
    assert sum(first.losses[-5:]) / 5 < sum(first.losses[:5]) / 5
    assert first.metadata()["steps"] == 25 and first.tokens_seen == 25 * 8 * 48


def test_warm_start_continues_from_the_trained_weights(target: TargetModel, english_batches: list) -> None:
    draft = small_draft("medusa", target)
    config = FitConfig(steps=20, learning_rate=3e-3, warmup_steps=2, seed=0)
    first = fit_draft(target, draft, english_batches, config)
    second = fit_draft(target, draft, english_batches, config)
    assert second.losses[0] < first.losses[0]


def test_empty_batches_are_refused(target: TargetModel) -> None:
    with pytest.raises(ValueError):
        fit_draft(target, small_draft("medusa", target), [], FitConfig(steps=1))


def test_config_bounds_are_enforced() -> None:
    with pytest.raises(ValueError):
        FitConfig(steps=0)
