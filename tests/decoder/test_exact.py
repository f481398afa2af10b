"""Exact mode: greedy output equals the target's own; sampling follows the target's distribution."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from decoder import Draft, TargetModel, TokenizedSample, exact_generate, generate
from decoder.drafts import Proposal
from decoder.exact import evaluate_acceptance
from decoder.samples import fit_prompt
from tests.decoder.conftest import IMPORTED, KINDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("kind", KINDS + IMPORTED)
@pytest.mark.parametrize("window", [1, 3, 6])
def test_greedy_output_equals_target_greedy(
    kind: str,
    window: int,
    target: TargetModel,
    imported_drafts: dict[str, Draft],
    greedy_samples: list[TokenizedSample],
) -> None:
    """Natural stopping rule: the cap the samples were generated under, and the EOS. Every kind, and
    the heads imported from engine formats."""
    for sample in greedy_samples:
        result = exact_generate(
            target, imported_drafts[kind], sample.prompt_ids, window=window, max_new_tokens=sample.max_new_tokens
        )
        assert result.tokens == sample.completion_ids
        assert result.target_only is not None and result.target_only.tokens == sample.completion_ids
        counts = result.counts
        # every verify step emits its accepted tokens plus the target's own token, except one
        # whose accepted drafts reach the EOS: it ends there
        assert counts.accepted + counts.steps - counts.eos_ended == len(sample.completion_ids) - 1
        assert counts.rejected <= counts.steps
        assert result.speedup is not None and result.speedup > 0
    assert any(sample.completion_ids[-1] == target.eos_token_id for sample in greedy_samples)


def test_a_step_that_accepts_the_eos_ends_there(target: TargetModel, drafts: dict[str, Draft]) -> None:
    """A draft that proposes past the EOS: the step ends at the accepted EOS, drafted = accepted,
    no rejection, no target token after it, and tau counts emitted tokens per verify step."""
    prompt = target.encode_chat([{"role": "user", "content": "Hello"}])
    natural = generate(target, None, prompt, window=0, max_new_tokens=None).tokens
    assert natural[-1] == target.eos_token_id and len(natural) >= 3
    result = exact_generate(target, drafts["draft_model"], prompt, window=8, max_new_tokens=None)
    assert result.tokens == natural
    generation = result.speculative
    assert generation.step_eos_ended[-1] and generation.step_drafted[-1] == generation.step_accepted[-1]
    counts = result.counts
    assert counts.eos_ended == 1
    assert counts.tau == pytest.approx((len(natural) - 1) / counts.steps)


def test_a_prompt_longer_than_the_context_is_fitted_as_scored_mode_fits_it(
    target: TargetModel, drafts: dict[str, Draft], greedy_samples: list[TokenizedSample]
) -> None:
    long_prompt = greedy_samples[0].prompt_ids * 60
    assert len(long_prompt) > target.context_length
    generation = generate(target, drafts["eagle"], long_prompt, window=3, max_new_tokens=None, stop_at_eos=False)
    fitted = fit_prompt(long_prompt, target.context_length)
    assert generation.prompt_tokens == len(fitted.prompt_ids) < target.context_length
    assert generation.truncated_prompt_tokens == len(long_prompt) - len(fitted.prompt_ids)
    assert generation.prompt_tokens + len(generation.tokens) == target.context_length
    alone = generate(target, None, fitted.prompt_ids, window=0, max_new_tokens=None, stop_at_eos=False)
    assert generation.tokens == alone.tokens


def test_greedy_runs_past_eos_when_told(target: TargetModel, drafts: dict[str, Draft]) -> None:
    prompt = target.encode_chat([{"role": "user", "content": "Hello"}])
    result = exact_generate(
        target, drafts["eagle"], prompt, window=3, max_new_tokens=40, stop_at_eos=False, compare_target_only=False
    )
    baseline = generate(target, None, prompt, window=0, max_new_tokens=40, stop_at_eos=False)
    assert result.tokens == baseline.tokens
    assert len(result.tokens) == 40
    assert result.target_only is None and result.speedup is None


def test_acceptance_rule_reproduces_target_distribution() -> None:
    """Draw x ~ q, apply the rule; the emitted token must follow p (Leviathan et al. 2023)."""
    p = torch.tensor([0.5, 0.2, 0.2, 0.1, 0.0])
    q = torch.tensor([0.1, 0.1, 0.3, 0.3, 0.2])
    target_logits = torch.log(torch.stack([p, p]).clamp(min=1e-30))
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    emitted = Counter()
    drafted_tokens = torch.multinomial(q, draws, replacement=True, generator=generator)
    for token in drafted_tokens.tolist():
        proposal = Proposal(tokens=torch.tensor([token]), probs=q[None])
        accepted, next_token = evaluate_acceptance(proposal, target_logits, 1.0, generator)
        emitted[token if accepted == 1 else next_token] += 1
    observed = torch.tensor([emitted[i] / draws for i in range(5)])
    assert 0.5 * float((observed - p).abs().sum()) < 0.02
    assert emitted[4] == 0  # never emits a token the target gives probability 0


def two_sample_chi_square_p_value(first: Counter[tuple[int, ...]], second: Counter[tuple[int, ...]]) -> float:
    """Homogeneity test of two equal-size samples; categories seen fewer than 10 times in all are
    pooled into one. Wilson-Hilferty approximation of the chi-square tail (no scipy needed)."""
    statistic, categories = 0.0, 0
    rest_first, rest_second = 0, 0
    for key in set(first) | set(second):
        a, b = first[key], second[key]
        if a + b < 10:
            rest_first, rest_second = rest_first + a, rest_second + b
            continue
        statistic += (a - b) ** 2 / (a + b)
        categories += 1
    if rest_first + rest_second > 0:
        statistic += (rest_first - rest_second) ** 2 / (rest_first + rest_second)
        categories += 1
    freedom = max(1, categories - 1)
    z = ((statistic / freedom) ** (1 / 3) - (1 - 2 / (9 * freedom))) / math.sqrt(2 / (9 * freedom))
    return 0.5 * math.erfc(z / math.sqrt(2))


def sampled_prefixes(
    target: TargetModel, draft: Draft | None, prompt: list[int], runs: int, first_seed: int
) -> Counter[tuple[int, ...]]:
    found: Counter[tuple[int, ...]] = Counter()
    for seed in range(first_seed, first_seed + runs):
        generation = generate(
            target, draft, prompt, window=2, max_new_tokens=4, temperature=0.8, seed=seed, stop_at_eos=False
        )
        found[tuple(generation.tokens[1:3])] += 1
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["draft_model", "eagle"])
def test_speculative_sampling_follows_target_distribution(
    kind: str, target: TargetModel, drafts: dict[str, Draft]
) -> None:
    """Tokens 2-3 come from a verify step (token 1 from the prefill). Their joint distribution
    under speculative sampling must match target-only sampling; draft-only sampling must not."""
    prompt = target.encode_chat([{"role": "user", "content": "What is your name?"}])
    runs = 1200
    speculative = sampled_prefixes(target, drafts[kind], prompt, runs, first_seed=0)
    target_only = sampled_prefixes(target, None, prompt, runs, first_seed=100_000)
    assert two_sample_chi_square_p_value(speculative, target_only) > 1e-3


def test_statistical_test_detects_a_wrong_sampler(target: TargetModel, drafts: dict[str, Draft]) -> None:
    """Power check of the test above: sampling from the draft alone (on Chinese, which the draft
    never saw) is told apart from sampling from the target."""
    prompt = target.encode_chat([{"role": "user", "content": "你好吗?"}])
    draft = drafts["draft_model"]
    session_tokens: Counter[tuple[int, ...]] = Counter()
    generator = torch.Generator().manual_seed(1)
    first = generate(target, None, prompt, window=0, max_new_tokens=1, temperature=0.8, seed=0).tokens
    tokens = torch.tensor(prompt + first)
    with torch.inference_mode():
        prefill = target.forward(tokens[:-1][None]).positions(0, len(prompt))
    for _ in range(600):
        session = draft.start_session(target)
        with torch.inference_mode():
            session.update(tokens, prefill)
            proposal = session.propose(tokens, 2, 0.8, generator)
        session_tokens[tuple(proposal.tokens.tolist())] += 1
    target_only: Counter[tuple[int, ...]] = Counter()
    for seed in range(600):
        generation = generate(
            target, None, prompt + first, window=0, max_new_tokens=2, temperature=0.8, seed=seed, stop_at_eos=False
        )
        target_only[tuple(generation.tokens)] += 1
    assert two_sample_chi_square_p_value(session_tokens, target_only) < 1e-3
