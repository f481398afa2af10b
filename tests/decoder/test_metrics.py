"""The acceptance metrics on hand-computed examples, and the verify-loop simulation."""

from __future__ import annotations

import pytest
import torch

from decoder.metrics import AcceptCounts, draft_budget, simulate_verify_loop


def counts_of(steps: list[tuple[int, int]]) -> AcceptCounts:
    counts = AcceptCounts()
    for drafted, accepted in steps:
        counts.add_step(drafted, accepted)
    return counts


def test_rates_on_hand_computed_steps() -> None:
    # k = 3: (d, a) = (3, 3), (3, 1), (3, 0), (2, 2)
    counts = counts_of([(3, 3), (3, 1), (3, 0), (2, 2)])
    assert (counts.accepted, counts.rejected, counts.drafted, counts.steps) == (6, 2, 11, 4)
    assert counts.alpha == pytest.approx(6 / 8)
    assert counts.tau == pytest.approx(1 + 6 / 4)
    assert counts.draft_acceptance_rate == pytest.approx(6 / 11)
    assert counts.accept_histogram == [1, 1, 1, 1]
    assert counts.accepted_per_position == [3, 2, 1]
    assert counts.per_position_rates == pytest.approx([3 / 4, 2 / 4, 1 / 4])


def test_empty_counts_have_no_rates() -> None:
    counts = AcceptCounts()
    assert counts.alpha is None and counts.tau is None and counts.draft_acceptance_rate is None
    assert counts.per_position_rates == []


def test_step_without_draft_is_not_a_rejection() -> None:
    counts = counts_of([(0, 0), (2, 0)])
    assert (counts.accepted, counts.rejected, counts.drafted, counts.steps) == (0, 1, 2, 2)
    assert counts.alpha == 0.0
    assert counts.tau == 1.0


def test_add_step_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        AcceptCounts().add_step(drafted=2, accepted=3)


def test_counts_sum_across_samples_and_round_trip() -> None:
    first = counts_of([(3, 3), (3, 1)])
    second = counts_of([(2, 0)])
    total = AcceptCounts.total([first, second])
    assert total == counts_of([(3, 3), (3, 1), (2, 0)])
    assert total.alpha == pytest.approx(4 / 6)
    assert AcceptCounts.from_dict(total.to_dict()) == total


def test_draft_budget() -> None:
    assert draft_budget(4, None, remaining=10) == 4
    assert draft_budget(4, 2, remaining=10) == 2
    assert draft_budget(4, None, remaining=3) == 2
    assert draft_budget(4, None, remaining=1) == 0


def simulate(rows: list[list[float]], window: int, max_draft: int | None = None) -> AcceptCounts:
    matrix = torch.tensor([rows], dtype=torch.float32)
    return simulate_verify_loop(matrix, torch.tensor([len(rows)]), window, max_draft)[0]


def test_simulated_greedy_path_by_hand() -> None:
    # 7 completion tokens; token 0 comes from the prefill. acceptance[c][i]: proposal i for token c.
    # depth-1 outcome per token c=1..6: 1 1 0 1 1 1; deeper proposals accepted everywhere.
    first = [0, 1, 1, 0, 1, 1, 1]
    rows = [[float(f), 1.0, 1.0] for f in first]
    # k=1: steps start with 1..6 emitted: d=1 until the last token -> (1,1),(1,1),(1,0)->... walk:
    # emitted=1: propose token1 ok -> a=1, emit 2 -> emitted=3; token3 rejected -> a=0 -> emitted=4;
    # token4 ok -> emitted=6; remaining 1 -> d=0 -> emitted=7.
    assert simulate(rows, window=1) == counts_of([(1, 1), (1, 0), (1, 1), (0, 0)])
    # k=3: emitted=1: d=3, tokens 1,2,3 via depths 1,2,3 -> token1 ok (depth1), token2 depth2 ok,
    # token3 depth3 ok -> a=3, emitted=5; d=min(3, 7-5-1)=1: token5 depth1 ok -> a=1, emitted=7.
    assert simulate(rows, window=3) == counts_of([(3, 3), (1, 1)])
    # a draft limited to 2 proposals per step: tokens 1,2 (depths 1,2) then tokens 4,5
    assert simulate(rows, window=3, max_draft=2) == counts_of([(2, 2), (2, 2)])


def test_simulated_expected_counts_by_hand() -> None:
    # 3 tokens, k = 1, every proposal accepted with probability 0.5:
    # emitted=1: d=1, with 1/2 accept (-> emitted 3, done), with 1/2 reject (-> emitted 2, then a d=0 step).
    rows = [[0.5], [0.5], [0.5]]
    counts = simulate(rows, window=1)
    assert counts.steps == pytest.approx(1.5)
    assert counts.accepted == pytest.approx(0.5)
    assert counts.rejected == pytest.approx(0.5)
    assert counts.drafted == pytest.approx(1.0)
    assert counts.accept_histogram == pytest.approx([1.0, 0.5])
    assert counts.alpha == pytest.approx(0.5)


def test_simulation_conserves_tokens() -> None:
    torch.manual_seed(0)
    matrix = (torch.rand(4, 30, 5) > 0.3).float()
    lengths = torch.tensor([30, 17, 2, 9])
    for counts, length in zip(simulate_verify_loop(matrix, lengths, 5), lengths.tolist(), strict=True):
        # the prefill emits one token; each step emits accepted + 1
        assert counts.accepted + counts.steps == length - 1
