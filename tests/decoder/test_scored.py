"""Scored mode: greedy counts equal exact mode's on the target's own greedy output; bad input."""

from __future__ import annotations

import pytest
import torch

from decoder import AcceptCounts, Draft, TargetModel, TokenizedSample, exact_generate, generate, score_batch
from decoder.batching import plan_batches
from tests.decoder.conftest import IMPORTED, KINDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("kind", KINDS + IMPORTED)
def test_scored_counts_equal_exact_counts(
    kind: str, target: TargetModel, imported_drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    draft = imported_drafts[kind]
    for window in (1, 2, 3, 5):
        scores = score_batch(target, draft, greedy_samples, window=window, batch_size=4)
        for sample, score in zip(greedy_samples, scores, strict=True):
            exact = exact_generate(
                target,
                draft,
                sample.prompt_ids,
                window=window,
                max_new_tokens=sample.max_new_tokens,
                compare_target_only=False,
            )
            assert score.counts == exact.counts, (kind, window, sample.sample_id)
            assert score.ends_with_eos == (sample.completion_ids[-1] == target.eos_token_id)
            assert score.target_agreement == 1.0
            assert score.skipped is None and score.truncated_tokens == 0


def test_some_drafts_are_accepted_and_some_rejected(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    """Guards the equality test above against a trivial pass (all accepted or none)."""
    totals = [
        AcceptCounts.total(s.counts for s in score_batch(target, drafts[kind], greedy_samples, window=3))
        for kind in KINDS
    ]
    assert all(total.accepted > 0 for total in totals)
    assert all(total.rejected > 0 for total in totals)


def test_batching_does_not_change_results(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    batched = score_batch(target, drafts["eagle"], greedy_samples, window=3, batch_size=16)
    single = score_batch(target, drafts["eagle"], greedy_samples, window=3, batch_size=1)
    assert [s.counts for s in batched] == [s.counts for s in single]
    assert [s.sample_id for s in batched] == [s.sample_id for s in greedy_samples]


@pytest.mark.parametrize("kind", KINDS)
def test_packed_rows_score_like_one_sample_per_row(
    kind: str, target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    """Short samples share a row (checked) and see only themselves: at temperature 1, where every
    depth of every token is computed, acceptance equals one sample per row's up to float rounding.
    (Greedy, the packed batches of the test above equal exact mode.)"""
    lengths = [sample.num_tokens for sample in greedy_samples]
    assert not all(batch.layout.one_per_row for batch in plan_batches(lengths, batch_size=len(lengths)))
    scoring = {"window": 3, "temperature": 1.0, "batch_size": len(lengths)}
    packed = score_batch(target, drafts[kind], greedy_samples, **scoring)
    alone = score_batch(target, drafts[kind], greedy_samples, pack=False, **scoring)
    for one, other in zip(packed, alone, strict=True):
        assert one.sample_id == other.sample_id and one.target_agreement == other.target_agreement
        assert torch.allclose(torch.tensor(one.acceptance), torch.tensor(other.acceptance), atol=1e-4), one.sample_id


def test_agreement_labels_a_continuation_the_target_would_not_produce(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    sample = greedy_samples[0]
    reversed_sample = TokenizedSample("reversed", sample.prompt_ids, sample.completion_ids[::-1])
    [score] = score_batch(target, drafts["draft_model"], [reversed_sample], window=2)
    assert score.target_agreement is not None and score.target_agreement < 0.5


def test_empty_continuation_is_skipped_with_a_reason(target: TargetModel, drafts: dict[str, Draft]) -> None:
    samples = [
        TokenizedSample("empty", target.encode_chat([{"role": "user", "content": "Hi"}]), []),
        TokenizedSample("no-prompt", [], [5, 6, 7]),
    ]
    empty, no_prompt = score_batch(target, drafts["medusa"], samples, window=2)
    assert empty.skipped == "empty continuation"
    assert no_prompt.skipped is not None and "prompt" in no_prompt.skipped
    assert empty.counts == AcceptCounts()


def test_sequences_longer_than_the_context_are_truncated_and_counted(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    sample = greedy_samples[0]
    long_completion = [token for token in sample.completion_ids if token != target.eos_token_id] * 60
    samples = [
        TokenizedSample("long-completion", sample.prompt_ids, long_completion),
        TokenizedSample("long-prompt", sample.prompt_ids * 60, sample.completion_ids),
    ]
    context = target.context_length
    long_completion_score, long_prompt_score = score_batch(target, drafts["eagle"], samples, window=3)
    assert long_completion_score.prompt_tokens + long_completion_score.completion_tokens == context
    assert long_completion_score.truncated_tokens == len(sample.prompt_ids) + len(long_completion) - context
    assert long_prompt_score.prompt_tokens + long_prompt_score.completion_tokens <= context
    assert long_prompt_score.truncated_tokens > 0
    assert long_prompt_score.completion_tokens > 0 and long_prompt_score.counts.steps > 0


def test_a_completion_cut_at_the_context_loses_its_eos_and_matches_exact_mode(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    """An engine with a longer context served more than fits here: scored mode keeps the room left
    (length-ended, its EOS gone) and exact mode, capped at the same room, generates exactly that."""
    room = 6
    for source in greedy_samples:
        prompt = (source.prompt_ids * 60)[-(target.context_length - room) :]
        served = generate(target, None, prompt, window=0, max_new_tokens=None).tokens
        if served[-1] != target.eos_token_id:
            break
    assert len(served) == room
    beyond = [token for token in source.completion_ids if token != target.eos_token_id] + [target.eos_token_id]
    sample = TokenizedSample("served-longer", prompt, served + beyond)
    [score] = score_batch(target, drafts["medusa"], [sample], window=4)
    exact = exact_generate(target, drafts["medusa"], prompt, window=4, max_new_tokens=None, compare_target_only=False)
    assert exact.tokens == served
    assert not score.ends_with_eos and score.completion_tokens == room
    assert score.truncated_tokens == len(beyond)
    assert score.counts == exact.counts
