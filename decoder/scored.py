"""Scored mode: acceptance from teacher-forced forward passes over known continuations.

One batched target forward and one batched draft pass give, for every completion token c and
proposal depth i, the probability acceptance[c, i] that the draft's i-th proposal of a step is
accepted when that proposal is for token c, given the earlier ones of the step were. The verify
loop is then replayed over that matrix for window k (`metrics.simulate_verify_loop`) with exact
mode's natural stopping rule: a completion ending with the target's EOS stopped there, one without
EOS was cut at its length, and both modes fit the prompt into the context with `samples.fit_prompt`.

Greedy (temperature ~ 0): acceptance[c, i] is 1 when the draft's argmax equals the target's, else
0. Greedy and exact mode agree when the continuation is the target's own greedy output: in exact
mode every proposal conditions on verified tokens plus the draft's own earlier proposals of the
step, which equal the continuation whenever they were accepted, and the first rejection ends the
step, so only teacher-forced states are ever compared. Each draft kind computes its states the
way its exact session does (medusa: one target hidden state per step; eagle: target features for
verified positions, its own outputs for drafted ones).

Sampling (temperature T > 0): acceptance[c, i] = r = min(1, q_i(y_c) / p(y_c)), where y_c is
the observed token c, p the target's distribution for it and q_i the draft's depth-i proposal
distribution for it, both at T and teacher-forced as above (`posterior_acceptance`, in log
space). Why: speculative sampling accepts a proposal x with probability min(1, p(x)/q(x)),
resamples a rejected one from norm(max(0, p - q)) and adds a bonus token from p after d
acceptances, so a step starting at token s accepts exactly j drafts and emits y_s..y_s+j with
probability prod_{t<j} min(p_t, q_t)(y_s+t) * max(0, p_j - q_j)(y_s+j), or for j = d
prod_{t<d} min(p_t, q_t)(y_s+t) * p_d(y_s+d); the loop preserves the target's distribution, so it
emits those tokens at all with probability prod p(y). Dividing, given the continuation y each
proposal is accepted with probability r (given the earlier ones were) and the first rejection
ends the step: the verify loop over r, with the EOS and cap rules unchanged. The counts are then
E[counts | y], the posterior over this y's step structures (fractional, and A + S - E = n - 1
holds for them), and their mean over continuations drawn from the target at T is exact mode's
expected counts: scored mode is unbiased when the logged continuation was sampled from the target
at the scoring temperature, as greedy scoring is exact on the target's greedy output. On other
text (another model's output, another temperature, top-p/top-k or penalties) it is an estimate.
Greedy is the limit: on the target's greedy output r -> 1 where the draft's argmax is y, else 0.
`target_agreement`, the share of tokens equal to the target's argmax, labels how far a
continuation is from the target's greedy output.

    scores = score_batch(target, draft, samples, window=4)
    AcceptCounts.total(s.counts for s in scores if s.skipped is None).alpha
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoder.batching import PackedLayout, map_in_packed_batches
from decoder.drafts import Draft, DraftInputs
from decoder.metrics import AcceptCounts, simulate_verify_loop
from decoder.samples import FittedSample, TokenizedSample, fit_to_context, pack_rows
from decoder.sampling import is_greedy, log_probability_of
from decoder.target import TargetModel

log = logging.getLogger(__name__)

LOGITS_BYTES_PER_CHUNK = 2**30  # float32 logits per chunk of positions


@dataclass
class SampleScore:
    """Scored-mode result of one sample."""

    sample_id: str
    counts: AcceptCounts
    acceptance: list[list[float]] = field(default_factory=list)
    """[completion token c][depth i]: acceptance of the (i+1)-th proposal of a step when it is for
    token c, given the earlier ones were: 0/1 in greedy mode; sampling: min(1, q(y_c) / p(y_c)),
    the probability it was accepted given the continuation (exact when the continuation was
    drawn from the target at the scoring temperature, an estimate on other text); entries with
    c <= i belong to no step and are 0, and greedy, so are those the verify loop never reads
    (the same step rejected its proposal for c - 1): they are not computed"""
    target_agreement: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_tokens: int = 0
    ends_with_eos: bool = False
    """the scored completion ended with the target's EOS (a natural stop), not by a length cap"""
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def first_proposal_acceptance(self) -> list[float]:
        """Per completion token: acceptance of a step's first proposal for it."""
        return [row[0] for row in self.acceptance] if self.acceptance and self.acceptance[0] else []


def _skip(sample: TokenizedSample, reason: str, truncated: int = 0) -> SampleScore:
    return SampleScore(
        sample_id=sample.sample_id,
        counts=AcceptCounts(),
        prompt_tokens=len(sample.prompt_ids),
        truncated_tokens=truncated,
        skipped=reason,
    )


def score_batch(
    target: TargetModel,
    draft: Draft,
    samples: Sequence[TokenizedSample],
    *,
    window: int,
    temperature: float = 0.0,
    batch_size: int = 32,
    max_batch_tokens: int | None = 32768,
    max_length: int | None = None,
    pack: bool = True,
) -> list[SampleScore]:
    """Scores samples (prompt + known continuation); one result per sample, in order. Samples are
    fitted into `max_length` (default: the target's context) by `fit_to_context`, the dropped
    tokens counted; samples with an empty continuation or prompt are skipped with a reason. A
    forward pass takes at most `batch_size` rows and `max_batch_tokens` positions; short samples
    share a row, each attending only to itself (`decoder.batching`; `pack=False`: one sample per
    row, for a target whose state runs along the row). A pass that runs out of device memory is
    halved and retried."""
    if window < 1:
        raise ValueError("window must be at least 1")
    context = max_length or target.context_length
    results: dict[int, SampleScore] = {}
    fitted: list[tuple[int, FittedSample]] = []
    for index, sample in enumerate(samples):
        if not sample.completion_ids:
            results[index] = _skip(sample, "empty continuation")
        elif not sample.prompt_ids:
            results[index] = _skip(sample, "empty prompt: the first token needs a prompt to follow")
        else:
            fitted.append((index, fit_to_context(sample, context, target.eos_token_id)))

    def forward(chunk: Sequence[tuple[int, FittedSample]], layout: PackedLayout) -> list[SampleScore]:
        return _score_chunk(target, draft, [item for _, item in chunk], layout, window, temperature)

    scores = map_in_packed_batches(
        forward,
        fitted,
        [item.num_tokens for _, item in fitted],
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        pack=pack,
    )
    for (index, _), score in zip(fitted, scores, strict=True):
        results[index] = score
    return [results[index] for index in range(len(samples))]


def posterior_acceptance(draft_log_prob: torch.Tensor, target_log_prob: torch.Tensor) -> torch.Tensor:
    """r = min(1, q(y) / p(y)) from log q(y) and log p(y): the probability that a proposal for
    the observed token y was accepted, given the verify loop emitted y there (module docstring).

    A token the draft gives probability 0 gets r = 0 (it was never proposed). A token the target
    gives probability 0 (or a NaN anywhere) also gets r = 0: the target never accepts a proposal
    it cannot emit, and such a token cannot come from the target, so the continuation is not one
    scored mode is exact on."""
    ratio = torch.exp((draft_log_prob - target_log_prob).clamp(max=0.0))
    valid = torch.isfinite(target_log_prob) & ~torch.isnan(ratio)
    return torch.where(valid, ratio, torch.zeros_like(ratio))


@torch.inference_mode()
def _score_chunk(
    target: TargetModel,
    draft: Draft,
    fitted: Sequence[FittedSample],
    layout: PackedLayout,
    window: int,
    temperature: float,
) -> list[SampleScore]:
    started = time.perf_counter()
    depth = window if draft.max_draft_tokens is None else min(window, draft.max_draft_tokens)
    pad_id = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0
    batch = pack_rows([(f.prompt_ids, f.completion_ids) for f in fitted], layout, pad_id, target.device)
    output = target.forward(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        feature_layers=draft.feature_layers,
    )
    inputs = DraftInputs(batch.input_ids, batch.attention_mask, output, batch.position_ids)
    states = draft.teacher_forced_proposals(inputs, depth)

    # one entry per completion token c of each sample: the target position P - 1 + c of the
    # sample's run in its row predicts it
    samples = torch.repeat_interleave(torch.arange(len(fitted), device=target.device), batch.completion_lengths)
    firsts = torch.cumsum(batch.completion_lengths, 0) - batch.completion_lengths
    completion_index = torch.arange(samples.shape[0], device=target.device) - firsts[samples]
    rows = batch.rows[samples]
    positions = batch.starts[samples] + batch.prompt_lengths[samples] - 1 + completion_index
    continuation = batch.input_ids[rows, positions + 1]
    acceptance = torch.zeros(rows.shape[0], depth, device=target.device)
    agreement = torch.zeros(rows.shape[0], dtype=torch.bool, device=target.device)
    greedy = is_greedy(temperature)
    chunk = max(1, LOGITS_BYTES_PER_CHUNK // (4 * target.vocab_size))
    for begin in range(0, rows.shape[0], chunk):
        index = torch.arange(begin, min(begin + chunk, rows.shape[0]), device=target.device)
        hidden = output.hidden[rows[index], positions[index]]
        if greedy:
            target_choice = target.greedy_tokens(hidden)
        else:
            target_logits = target.logits(hidden)
            target_choice = target_logits.argmax(dim=-1)
            target_log_prob = log_probability_of(target_logits, continuation[index], temperature)
        agreement[index] = target_choice == continuation[index]
        for level in range(depth):
            # the step holding the depth-i proposal for token c started after token c - i; greedy,
            # the verify loop reads it only when the same step accepted its proposal for c - 1
            read = completion_index[index] > level
            if greedy and level > 0:
                read &= acceptance[index - 1, level - 1] > 0
            chosen = index[read]
            if level > 0 and states[level] is states[0]:
                acceptance[chosen, level] = acceptance[chosen, 0]
                continue
            level_states = states[level][rows[chosen], positions[chosen]]
            if greedy:
                proposed = draft.proposal_tokens(level_states, level)
                acceptance[chosen, level] = (proposed == target_choice[chosen - begin]).float()
            else:
                draft_log_prob = draft.proposal_log_probability(level_states, level, continuation[chosen], temperature)
                acceptance[chosen, level] = posterior_acceptance(draft_log_prob, target_log_prob[chosen - begin])

    longest = int(batch.completion_lengths.max())
    matrix = torch.zeros(len(fitted), longest, depth, device=target.device)
    matrix[samples, completion_index] = acceptance
    counts = simulate_verify_loop(
        matrix,
        batch.completion_lengths,
        window,
        draft.max_draft_tokens,
        ends_with_eos=torch.tensor([f.ends_with_eos for f in fitted]),
        max_new_tokens=torch.tensor([f.max_new_tokens for f in fitted]),
    )
    matrix_cpu = matrix.cpu()
    agreement_cpu = agreement.cpu()
    seconds = time.perf_counter() - started
    total_tokens = sum(f.num_tokens for f in fitted)
    scores = []
    offset = 0
    for row, item in enumerate(fitted):
        length = len(item.completion_ids)
        scores.append(
            SampleScore(
                sample_id=item.sample.sample_id,
                counts=counts[row],
                acceptance=matrix_cpu[row, :length].tolist(),
                target_agreement=float(agreement_cpu[offset : offset + length].float().mean()),
                prompt_tokens=len(item.prompt_ids),
                completion_tokens=length,
                truncated_tokens=item.truncated_tokens,
                ends_with_eos=item.ends_with_eos,
                seconds=seconds * item.num_tokens / total_tokens,
            )
        )
        offset += length
    log.debug("scored %d samples (%d tokens) in %.3fs", len(fitted), total_tokens, seconds)
    return scores


def target_agreement(scores: Sequence[SampleScore]) -> float | None:
    """Token-weighted share of continuation tokens equal to the target's argmax."""
    weighted = [(s.target_agreement, s.completion_tokens) for s in scores if s.target_agreement is not None]
    total = sum(count for _, count in weighted)
    return sum(value * count for value, count in weighted) / total if total else None
