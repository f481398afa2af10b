"""The verify loop over an acceptance matrix, simulated once so both replay modes count steps with the same
rule (`draft_budget`); the counts it adds up and the metrics derived from them are `decoder.counts`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoder.counts import AcceptCounts


def draft_budget(window: int, max_draft_tokens: int | None, remaining: int) -> int:
    """Tokens the draft proposes in a step: at most the window, what the draft can propose,
    and one less than the tokens the cap still allows (the target always emits one more).
    `remaining` counts down to the length cap (max_new_tokens), never to an EOS: near an EOS
    the draft proposes past it, as a serving engine does."""
    budget = min(window, remaining - 1)
    if max_draft_tokens is not None:
        budget = min(budget, max_draft_tokens)
    return max(budget, 0)


@dataclass
class _StepPlan:
    """What each sample's step starting with `emitted` tokens drafts, and where its chain stops."""

    budget: torch.Tensor
    """d: tokens drafted (as `draft_budget` decides, from the cap)"""
    chain_length: torch.Tensor
    """proposals that can count: d, or up to and including the EOS when it lies within d"""
    eos_in_reach: torch.Tensor
    """the step drafts the completion's EOS: accepting it ends the step and the generation"""


def _plan_step(
    emitted: int, lengths: torch.Tensor, caps: torch.Tensor, ends_with_eos: torch.Tensor, draft_cap: int
) -> _StepPlan:
    budget = (caps - emitted - 1).clamp(min=0, max=draft_cap)
    eos_offset = lengths - 1 - emitted  # chain index of the proposal for the EOS token
    eos_in_reach = ends_with_eos & (eos_offset < budget)
    chain_length = torch.where(eos_in_reach, eos_offset + 1, budget).clamp(min=0)
    return _StepPlan(budget, chain_length, eos_in_reach)


def simulate_verify_loop(
    acceptance: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    max_draft_tokens: int | None = None,
    *,
    ends_with_eos: torch.Tensor | None = None,
    max_new_tokens: torch.Tensor | None = None,
) -> list[AcceptCounts]:
    """Replays the verify loop over known continuations and returns each sample's counts.

    acceptance[b, c, i]: probability (0/1 in greedy mode) that the draft's (i+1)-th proposal in a
    step is accepted, given the earlier ones in that step were, when that proposal is for
    completion token c of sample b. lengths[b]: completion tokens of sample b.
    ends_with_eos[b] (default: none): the completion's last token is the target's EOS, a natural
    stop. max_new_tokens[b]: the cap M the generation ran under (default and for completions
    without EOS: the completion's length, which is where it was cut).

    This is exact mode's loop (`exact.generate`) with its natural stopping rule. The first
    completion token comes from the target's prefill; each step drafts
    d = draft_budget(k, max_draft_tokens, M - emitted) tokens, so near an EOS the draft
    proposes past it. A chain that breaks at or before the EOS is a rejection after d drafted
    tokens; a chain that accepts the EOS ends the step there: a = d = tokens up to the EOS,
    no rejection, counted in E. With 0/1 acceptance this walks the single path exact mode takes;
    with probabilities it returns expected counts, computed by carrying the probability of
    reaching each start forward (no sampling noise).
    """
    batch, max_length, depth = acceptance.shape
    window = min(window, depth)
    if window < 1 or batch == 0:
        return [AcceptCounts() for _ in range(batch)]
    acceptance = acceptance.detach().to(torch.float64).cpu()
    lengths = lengths.detach().cpu().to(torch.long)
    eos_rows = torch.zeros(batch, dtype=torch.bool) if ends_with_eos is None else ends_with_eos.detach().cpu().bool()
    caps = lengths if max_new_tokens is None else max_new_tokens.detach().cpu().to(torch.long)
    if bool((caps < lengths).any()):
        raise ValueError("max_new_tokens must be at least the completion's length")
    caps = torch.where(eos_rows, caps, lengths)
    rows = torch.arange(batch)
    depth_index = torch.arange(window)
    reach = torch.zeros(batch, max_length + window + 2, dtype=torch.float64)
    reach[:, 1] = 1.0
    accepted = torch.zeros(batch, dtype=torch.float64)
    rejected = torch.zeros_like(accepted)
    drafted = torch.zeros_like(accepted)
    steps = torch.zeros_like(accepted)
    eos_ended = torch.zeros_like(accepted)
    histogram = torch.zeros(batch, window + 1, dtype=torch.float64)
    per_position = torch.zeros(batch, window, dtype=torch.float64)
    draft_cap = window if max_draft_tokens is None else min(window, max_draft_tokens)
    for emitted in range(1, max_length):
        active = emitted < lengths
        if not bool(active.any()):
            break
        probability = torch.where(active, reach[:, emitted], torch.zeros_like(accepted))
        plan = _plan_step(emitted, lengths, caps, eos_rows, draft_cap)
        # proposal i of a step that starts with `emitted` tokens is for completion token emitted+i
        token_index = (emitted + depth_index).clamp(max=max_length - 1)
        chain = acceptance[rows[:, None], token_index[None, :], depth_index[None, :]]
        chain = torch.where(depth_index[None, :] < plan.chain_length[:, None], chain, torch.zeros_like(chain))
        at_least = torch.cumprod(chain, dim=1)  # P(a >= i+1)
        at_least_padded = torch.cat([torch.ones(batch, 1, dtype=torch.float64), at_least], dim=1)
        exactly = at_least_padded[:, :-1] - at_least_padded[:, 1:]  # P(a == j), j < window
        exactly = torch.cat([exactly, at_least[:, -1:]], dim=1)  # P(a == window)
        chain_accepted = at_least_padded[rows, plan.chain_length]
        eos_accepted = torch.where(plan.eos_in_reach, chain_accepted, torch.zeros_like(accepted))
        steps += probability
        drafted += probability * (plan.budget - eos_accepted * (plan.budget - plan.chain_length))
        accepted += probability * at_least.sum(dim=1)
        rejected += probability * torch.where(plan.budget > 0, 1.0 - chain_accepted, torch.zeros_like(accepted))
        eos_ended += probability * eos_accepted
        histogram += probability[:, None] * exactly
        per_position += probability[:, None] * at_least
        # a step accepting a tokens emits a + 1; one ending at the EOS ends the generation
        reach[:, emitted + 1 : emitted + window + 2] += probability[:, None] * exactly
    return [
        AcceptCounts(
            accepted=_clean(accepted[b]),
            rejected=_clean(rejected[b]),
            drafted=_clean(drafted[b]),
            steps=_clean(steps[b]),
            eos_ended=_clean(eos_ended[b]),
            accept_histogram=_trimmed(histogram[b]),
            accepted_per_position=_trimmed(per_position[b]),
        )
        for b in range(batch)
    ]


def _trimmed(values: torch.Tensor) -> list[float]:
    """Without trailing zeros, the shape `add_step` builds, so both modes compare equal."""
    cleaned = [_clean(x) for x in values]
    while cleaned and cleaned[-1] == 0.0:
        cleaned.pop()
    return cleaned


def _clean(value: torch.Tensor) -> float:
    """Exact integers stay exact (greedy mode); expectations keep their fraction."""
    number = float(value)
    rounded = round(number)
    return float(rounded) if abs(number - rounded) < 1e-9 else number
