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


def test_tau_counts_emitted_tokens_per_verify_step() -> None:
    # (3, 3) then a step whose drafts reach the EOS after 2: it emits 2 tokens, not 3
    counts = AcceptCounts()
    counts.add_step(3, 3)
    counts.add_step(2, 2, eos_ended=True)
    assert (counts.accepted, counts.rejected, counts.drafted, counts.steps, counts.eos_ended) == (5, 0, 5, 2, 1)
    assert counts.emitted == 4 + 2
    assert counts.tau == pytest.approx(6 / 2)
    assert AcceptCounts.from_dict(counts.to_dict()) == counts


def test_counts_stored_before_eos_was_counted_load_with_none() -> None:
    stored = {"accepted": 4.0, "rejected": 1.0, "drafted": 6.0, "steps": 2.0}
    counts = AcceptCounts.from_dict(stored)
    assert counts.eos_ended == 0 and counts.tau == pytest.approx(3.0)


def test_an_eos_step_accepts_what_it_drafts() -> None:
    with pytest.raises(ValueError):
        AcceptCounts().add_step(drafted=3, accepted=1, eos_ended=True)
    with pytest.raises(ValueError):
        AcceptCounts().add_step(drafted=0, accepted=0, eos_ended=True)


def simulate_eos(rows: list[list[float]], window: int, cap: int, max_draft: int | None = None) -> AcceptCounts:
    matrix = torch.tensor([rows], dtype=torch.float32)
    return simulate_verify_loop(
        matrix,
        torch.tensor([len(rows)]),
        window,
        max_draft,
        ends_with_eos=torch.tensor([True]),
        max_new_tokens=torch.tensor([cap]),
    )[0]


def test_simulated_eos_by_hand() -> None:
    # 5 tokens (token 0 from the prefill), token 4 is the EOS; every proposal accepted.
    # k=3, cap 20: one step drafts tokens 1-3, accepts them, the target emits the EOS: (3, 3).
    # k=4: the draft reaches the EOS (token 4, depth 4): the step ends there, d = a = 4, E = 1.
    rows = [[0.0] * 4] + [[1.0] * 4] * 4
    assert simulate_eos(rows, window=3, cap=20) == counts_of([(3, 3)])
    expected = AcceptCounts()
    expected.add_step(4, 4, eos_ended=True)
    assert simulate_eos(rows, window=4, cap=20) == expected
    # k=8 drafts 8 tokens, past the EOS; accepting the EOS still ends the step at d = a = 4
    assert simulate_eos(rows, window=8, cap=20) == expected
    # under a cap of 5 the draft may propose only 3 (the target emits the 5th): no EOS step
    assert simulate_eos(rows, window=8, cap=5) == counts_of([(3, 3)])


def test_simulated_chain_breaking_at_the_eos_is_a_full_budget_rejection() -> None:
    # 3 tokens, EOS last; the draft misses the EOS (depth 2). k=4, cap 10: d=4, a=1, one rejection;
    # the target emits the EOS. Scoring that capped the budget at the EOS would say (1, 1).
    rows = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
    assert simulate_eos(rows, window=4, cap=10) == counts_of([(4, 1)])


def test_simulated_expected_counts_with_eos() -> None:
    # 2 tokens, EOS last, k=2, cap 10: one step, d=2, EOS (depth 1) accepted with probability 0.25:
    # then a = d = 1 and E; else a = 0 after 2 drafted, a rejection.
    rows = [[0.0, 0.0], [0.25, 0.5]]
    counts = simulate_eos(rows, window=2, cap=10)
    assert counts.steps == 1
    assert counts.eos_ended == pytest.approx(0.25)
    assert counts.accepted == pytest.approx(0.25)
    assert counts.drafted == pytest.approx(0.75 * 2 + 0.25 * 1)
    assert counts.rejected == pytest.approx(0.75)
    assert counts.emitted == pytest.approx(1.0)


def test_simulation_conserves_tokens_with_eos() -> None:
    torch.manual_seed(1)
    matrix = (torch.rand(4, 30, 6) > 0.2).float()
    lengths = torch.tensor([30, 17, 2, 9])
    eos = torch.tensor([True, False, True, True])
    caps = torch.tensor([40, 17, 2, 12])
    counts = simulate_verify_loop(matrix, lengths, 6, ends_with_eos=eos, max_new_tokens=caps)
    for item, length in zip(counts, lengths.tolist(), strict=True):
        assert item.accepted + item.steps - item.eos_ended == length - 1
        assert item.rejected <= item.steps
    assert sum(item.eos_ended for item in counts) >= 1


def test_a_cap_below_the_completion_is_refused() -> None:
    with pytest.raises(ValueError):
        simulate_verify_loop(torch.ones(1, 4, 2), torch.tensor([4]), 2, max_new_tokens=torch.tensor([3]))
