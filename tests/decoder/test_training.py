"""fit_draft: loss goes down, runs are reproducible from the seed, warm starts continue, and a
killed run resumed from its checkpoint ends with the weights of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from decoder import FitConfig, TargetModel, create_draft, fit_draft, pack_token_batches
from decoder.reference import encode_documents
from decoder.reference.corpus import dialog_documents, split
from decoder.training import CheckpointError, CheckpointMismatchError, FitCheckpoint
from tests.decoder.conftest import KINDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def english_batches(target: TargetModel) -> list:
    documents = split(dialog_documents("en"))[0][:200]
    return pack_token_batches(encode_documents(target.tokenizer, documents), sequence_length=48, batch_size=8)


@pytest.fixture(scope="module")
def small_batches(target: TargetModel) -> list:
    """A few small batches: the checkpoint tests check equality, not learning."""
    documents = split(dialog_documents("en"))[0][:30]
    return pack_token_batches(encode_documents(target.tokenizer, documents), sequence_length=24, batch_size=2)[:5]


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


class Killed(Exception):
    """Stands in for a SIGKILL halfway through a run."""


def kill_after(step: int):
    def on_step(done: int, total: int, loss: float) -> None:
        if done == step:
            raise Killed

    return on_step


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_a_kill_ends_with_the_uninterrupted_weights(
    kind: str, target: TargetModel, small_batches: list, tmp_path
) -> None:
    config = FitConfig(steps=8, learning_rate=3e-3, warmup_steps=2, seed=5)
    torch.manual_seed(0)
    uninterrupted = small_draft(kind, target)
    full = fit_draft(target, uninterrupted, small_batches, config)

    torch.manual_seed(0)
    draft = small_draft(kind, target)
    path = tmp_path / "checkpoint.pt"
    saved: list[int] = []

    def save(checkpoint: FitCheckpoint) -> None:
        checkpoint.save(path)
        saved.append(checkpoint.step)

    with pytest.raises(Killed):
        fit_draft(target, draft, small_batches, config, checkpoint_every=3, on_checkpoint=save, on_step=kill_after(5))
    assert saved == [3]
    torch.manual_seed(0)
    restarted = small_draft(kind, target)
    steps_run: list[int] = []
    resumed = fit_draft(
        target,
        restarted,
        small_batches,
        config,
        resume=FitCheckpoint.load(path),
        on_step=lambda done, total, loss: steps_run.append(done),
        checkpoint_every=3,
        on_checkpoint=save,
    )
    assert steps_run == [4, 5, 6, 7, 8] and saved == [3, 6, 8]
    assert resumed.resumed_from_step == 3 and resumed.metadata()["resumed_from_step"] == 3
    assert resumed.losses == full.losses and resumed.tokens_seen == full.tokens_seen
    expected = uninterrupted.state_dict()
    for name, tensor in restarted.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_checkpoint_of_another_run_is_refused(target: TargetModel, small_batches: list, tmp_path) -> None:
    config = FitConfig(steps=3, learning_rate=3e-3, warmup_steps=1, seed=0)
    torch.manual_seed(0)
    checkpoints: list[FitCheckpoint] = []
    fit_draft(
        target,
        small_draft("medusa", target),
        small_batches,
        config,
        checkpoint_every=2,
        on_checkpoint=checkpoints.append,
        labels={"corpus": "abc"},
    )
    assert [c.step for c in checkpoints] == [2, 3]
    checkpoint = FitCheckpoint.load(checkpoints[0].save(tmp_path / "c.pt"))
    torch.manual_seed(0)
    draft = small_draft("medusa", target)
    before = {name: tensor.clone() for name, tensor in draft.state_dict().items()}
    other = config.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(CheckpointMismatchError, match="config"):
        fit_draft(target, draft, small_batches, other, resume=checkpoint, labels={"corpus": "abc"})
    with pytest.raises(CheckpointMismatchError, match="labels"):
        fit_draft(target, draft, small_batches, config, resume=checkpoint, labels={"corpus": "xyz"})
    with pytest.raises(CheckpointMismatchError, match="batches"):
        fit_draft(target, draft, small_batches[1:], config, resume=checkpoint, labels={"corpus": "abc"})
    assert all(torch.equal(tensor, before[name]) for name, tensor in draft.state_dict().items()), "left unchanged"


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        FitCheckpoint.load(tmp_path / "missing.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        FitCheckpoint.load(tmp_path / "torn.pt")
