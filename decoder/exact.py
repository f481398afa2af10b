"""Exact mode: the real draft-then-verify loop with KV-cache rollback (batch 1).

Each step follows the stage names of Medusa/EAGLE:

    propose  -> the draft drafts d = draft_budget(k, ...) tokens after the fixed tokens
    verify   -> one target forward over [last emitted token, drafted tokens]: d + 1 predictions
    evaluate_acceptance -> greedy: longest prefix equal to the target's argmax, then the
                target's token; sampling: accept x with probability min(1, p(x)/q(x)), on the first
                rejection resample from norm(max(0, p - q)), after d acceptances a bonus token from p
    end_at_eos -> accepted drafts that reach the EOS end the step there: a = d = tokens up to the
                EOS, no rejection, no target token (E counts these steps)
    update   -> crop the target's cache by the d - a rejected tokens, append the accepted tokens
                and the target's token, tell the draft what was verified

The natural stopping rule: generation stops at an emitted EOS or at max_new_tokens = M tokens;
each step drafts d = draft_budget(k, max_draft, M - emitted), so near an EOS the draft proposes
past it. The prompt is fitted into the target's context and M capped at the room left
(`samples.fit_prompt`, the rule scored mode uses), so a generation never passes the context.
The target's prefill emits the first token (no drafting: medusa and eagle need target states),
so a generation of n tokens has n - 1 tokens from verify steps: A + S - E = n - 1.

    result = exact_generate(target, draft, prompt_ids, window=4, max_new_tokens=64)
    result.counts.alpha, result.speedup
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from decoder.drafts import Draft, DraftSession, Proposal
from decoder.metrics import AcceptCounts, draft_budget
from decoder.samples import fit_prompt
from decoder.sampling import choose_tokens, is_greedy, probabilities
from decoder.target import TargetModel, TargetOutput, crop_cache

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One run of the loop: the emitted tokens and, with a draft, its per-step counts.
    `prompt_tokens` were kept of the prompt (`truncated_prompt_tokens` dropped to fit the context)."""

    tokens: list[int]
    seconds: float
    step_drafted: list[int] = field(default_factory=list)
    step_accepted: list[int] = field(default_factory=list)
    step_eos_ended: list[bool] = field(default_factory=list)
    target_forwards: int = 0
    prompt_tokens: int = 0
    truncated_prompt_tokens: int = 0

    @property
    def counts(self) -> AcceptCounts:
        counts = AcceptCounts()
        for drafted, accepted, eos_ended in zip(
            self.step_drafted, self.step_accepted, self.step_eos_ended, strict=True
        ):
            counts.add_step(drafted, accepted, eos_ended)
        return counts

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExactResult:
    """Speculative generation, and optionally the same generation by the target alone."""

    speculative: Generation
    target_only: Generation | None

    @property
    def tokens(self) -> list[int]:
        return self.speculative.tokens

    @property
    def counts(self) -> AcceptCounts:
        return self.speculative.counts

    @property
    def speedup(self) -> float | None:
        """Target-only wall time / speculative wall time."""
        if self.target_only is None or self.speculative.seconds <= 0:
            return None
        return self.target_only.seconds / self.speculative.seconds


@dataclass
class Verification:
    """Target predictions for [last token, drafted tokens] and its states (batch of one) there."""

    logits: torch.Tensor
    states: TargetOutput


def propose(
    session: DraftSession | None,
    tokens: torch.Tensor,
    count: int,
    temperature: float,
    generator: torch.Generator | None,
) -> Proposal:
    if session is None or count == 0:
        return Proposal.empty(tokens.device)
    return session.propose(tokens, count, temperature, generator)


def verify(
    target: TargetModel,
    cache: DynamicCache,
    last_token: torch.Tensor,
    proposal: Proposal,
    feature_layers: Sequence[int],
) -> Verification:
    fed = torch.cat([last_token.view(1), proposal.tokens]).to(target.device)[None]
    output = target.forward(fed, cache=cache, feature_layers=feature_layers)
    return Verification(logits=target.logits(output.hidden[0]), states=output)


def evaluate_acceptance(
    proposal: Proposal, target_logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[int, int]:
    """(accepted count a, the target's next token) for one step; target_logits has d + 1 rows."""
    drafted = proposal.tokens.to(target_logits.device)
    count = drafted.shape[0]
    if is_greedy(temperature):
        predicted = target_logits.argmax(dim=-1)
        matches = (predicted[:count] == drafted).int()
        accepted = int(matches.cumprod(dim=0).sum()) if count else 0
        return accepted, int(predicted[accepted])
    target_probs = probabilities(target_logits, temperature)
    if count:
        if proposal.probs is None:
            raise ValueError("sampling needs the draft's distributions")
        draft_probs = proposal.probs.to(target_probs.device)
        rows = torch.arange(count, device=target_probs.device)
        p = target_probs[rows, drafted]
        q = draft_probs[rows, drafted]
        uniform = torch.rand(count, device=target_probs.device, generator=generator)
        rejected = (uniform * q > p).nonzero()
        if rejected.numel():
            first = int(rejected[0])
            residual = (target_probs[first] - draft_probs[first]).clamp(min=0.0)
            residual = residual / residual.sum() if float(residual.sum()) > 0 else target_probs[first]
            return first, int(torch.multinomial(residual, 1, generator=generator))
    return count, int(torch.multinomial(target_probs[count], 1, generator=generator))


def end_at_eos(emitted: list[int], eos: int | None) -> tuple[list[int], bool]:
    """A step's emitted tokens cut after an accepted EOS (the target's own token is not emitted),
    and whether that happened."""
    if eos is None or eos not in emitted[:-1]:
        return emitted, False
    return emitted[: emitted.index(eos) + 1], True


def update(
    cache: DynamicCache,
    session: DraftSession | None,
    tokens: torch.Tensor,
    proposal: Proposal,
    verification: Verification,
    accepted: int,
    emitted: list[int],
) -> torch.Tensor:
    """Rolls the target's cache back to the last token and the accepted drafts, appends the
    emitted tokens and tells the draft what was verified; returns all fixed tokens."""
    crop_cache(cache, proposal.tokens.shape[0] - accepted)
    tokens = torch.cat([tokens, torch.tensor(emitted, dtype=torch.long, device=tokens.device)])
    if session is not None:
        session.update(tokens, verification.states.positions(0, accepted + 1))
    return tokens


@torch.inference_mode()
def generate(
    target: TargetModel,
    draft: Draft | None,
    prompt_ids: Sequence[int],
    *,
    window: int,
    max_new_tokens: int | None,
    temperature: float = 0.0,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> Generation:
    """One generation; `draft=None` (or window 0) is the target alone, one token per forward.
    The prompt is fitted into the context and `max_new_tokens` (None: no cap of its own) capped
    at the room left, as scored mode does (`fit_prompt`)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    fitted = fit_prompt(prompt_ids, target.context_length, max_new_tokens)
    prompt_ids, max_new_tokens = fitted.prompt_ids, fitted.max_new_tokens
    device = target.device
    generator = torch.Generator(device=device).manual_seed(seed)
    feature_layers = draft.feature_layers if draft is not None else ()
    eos = target.eos_token_id if stop_at_eos else None
    started = time.perf_counter()
    cache = target.new_cache()
    tokens = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    prefill = target.forward(tokens[None], cache=cache, feature_layers=feature_layers)
    first, _ = choose_tokens(target.logits(prefill.hidden[0, -1:]), temperature, generator)
    tokens = torch.cat([tokens, first])
    session = draft.start_session(target) if draft is not None and window > 0 else None
    if session is not None:
        session.update(tokens, prefill.positions(0, len(prompt_ids)))
    result = Generation(
        tokens=[int(first)],
        seconds=0.0,
        target_forwards=1,
        prompt_tokens=len(prompt_ids),
        truncated_prompt_tokens=fitted.dropped_tokens,
    )
    while len(result.tokens) < max_new_tokens and not (eos is not None and result.tokens[-1] == eos):
        budget = 0
        if session is not None and draft is not None:
            budget = draft_budget(window, draft.max_draft_tokens, max_new_tokens - len(result.tokens))
        proposal = propose(session, tokens, budget, temperature, generator)
        verification = verify(target, cache, tokens[-1], proposal, feature_layers)
        accepted, next_token = evaluate_acceptance(proposal, verification.logits, temperature, generator)
        emitted, eos_ended = end_at_eos([*proposal.tokens[:accepted].tolist(), next_token], eos)
        if eos_ended:
            accepted = budget = len(emitted)
        tokens = update(cache, session, tokens, proposal, verification, accepted, emitted)
        result.tokens.extend(emitted)
        result.target_forwards += 1
        if session is not None:
            result.step_drafted.append(budget)
            result.step_accepted.append(accepted)
            result.step_eos_ended.append(eos_ended)
    result.seconds = time.perf_counter() - started
    return result


def exact_generate(
    target: TargetModel,
    draft: Draft,
    prompt_ids: Sequence[int],
    *,
    window: int,
    max_new_tokens: int | None,
    temperature: float = 0.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    compare_target_only: bool = True,
) -> ExactResult:
    """Speculative generation with per-step counts, and the target-only run for the speedup."""
    speculative = generate(
        target,
        draft,
        prompt_ids,
        window=window,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        stop_at_eos=stop_at_eos,
    )
    target_only = None
    if compare_target_only:
        target_only = generate(
            target,
            None,
            prompt_ids,
            window=0,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            stop_at_eos=stop_at_eos,
        )
    return ExactResult(speculative=speculative, target_only=target_only)
