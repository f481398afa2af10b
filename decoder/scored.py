"""Scored mode: acceptance from teacher-forced forward passes over known continuations.

One batched target forward and one batched draft pass give, for every completion token c and
proposal depth i, whether (greedy) or how likely (sampling: sum_x min(p(x), q(x))) the draft's
i-th proposal of a step is accepted when that proposal is for token c. The verify loop is then
replayed over that matrix for window k (`metrics.simulate_verify_loop`) with exact mode's natural
stopping rule: a completion ending with the target's EOS stopped there, one without EOS was cut
at its length, and both modes fit the prompt into the context with `samples.fit_prompt`.

Greedy and exact mode agree when the continuation is the target's own greedy output: in exact
mode every proposal conditions on verified tokens plus the draft's own earlier proposals of the
step, which equal the continuation whenever they were accepted, and the first rejection ends the
step, so only teacher-forced states are ever compared. Each draft kind computes its states the
way its exact session does (medusa: one target hidden state per step; eagle: target features for
verified positions, its own outputs for drafted ones). For other continuations (another model's
output, sampled text) the result is an estimate; `target_agreement`, the share of tokens equal
to the target's argmax, labels how far the continuation is from the target's greedy output.

    scores = score_batch(target, draft, samples, window=4)
    AcceptCounts.total(s.counts for s in scores if s.skipped is None).alpha
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoder.batching import map_in_batches
from decoder.drafts import Draft, DraftInputs
from decoder.metrics import AcceptCounts, simulate_verify_loop
from decoder.samples import FittedSample, TokenizedSample, fit_to_context, pad_right
from decoder.sampling import is_greedy, probabilities
from decoder.target import TargetModel

log = logging.getLogger(__name__)

LOGITS_BYTES_PER_CHUNK = 2**30  # float32 logits per chunk of positions


@dataclass
class SampleScore:
    """Scored-mode result of one sample."""

    sample_id: str
    counts: AcceptCounts
    acceptance: list[list[float]] = field(default_factory=list)
    """[completion token c][depth i]: acceptance (0/1, or probability) of the (i+1)-th proposal of
    a step when it is for token c; entries with c <= i belong to no step and are 0"""
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
) -> list[SampleScore]:
    """Scores samples (prompt + known continuation) in padded batches; one result per sample, in
    order. Samples are fitted into `max_length` (default: the target's context) by
    `fit_to_context`, the dropped tokens counted; samples with an empty continuation or prompt are skipped with a
    reason. A batch that runs out of device memory is halved and retried."""
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
    fitted.sort(key=lambda item: -item[1].num_tokens)

    def forward(chunk: Sequence[tuple[int, FittedSample]]) -> list[SampleScore]:
        return _score_chunk(target, draft, [item for _, item in chunk], window, temperature)

    scores = map_in_batches(
        forward,
        fitted,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        tokens_of=lambda item: item[1].num_tokens,
    )
    for (index, _), score in zip(fitted, scores, strict=True):
        results[index] = score
    return [results[index] for index in range(len(samples))]


@torch.inference_mode()
def _score_chunk(
    target: TargetModel, draft: Draft, fitted: Sequence[FittedSample], window: int, temperature: float
) -> list[SampleScore]:
    started = time.perf_counter()
    depth = window if draft.max_draft_tokens is None else min(window, draft.max_draft_tokens)
    pad_id = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else 0
    batch = pad_right([(f.prompt_ids, f.completion_ids) for f in fitted], pad_id, target.device)
    output = target.forward(batch.input_ids, attention_mask=batch.attention_mask, feature_layers=draft.feature_layers)
    states = draft.teacher_forced_proposals(DraftInputs(batch.input_ids, batch.attention_mask, output), depth)

    # one row per completion token c of each sample: the target position P - 1 + c predicts it
    rows = torch.repeat_interleave(torch.arange(len(fitted), device=target.device), batch.completion_lengths)
    starts = torch.cumsum(batch.completion_lengths, 0) - batch.completion_lengths
    completion_index = torch.arange(rows.shape[0], device=target.device) - starts[rows]
    positions = batch.prompt_lengths[rows] - 1 + completion_index
    continuation = batch.input_ids[rows, positions + 1]
    acceptance = torch.zeros(rows.shape[0], depth, device=target.device)
    agreement = torch.zeros(rows.shape[0], dtype=torch.bool, device=target.device)
    greedy = is_greedy(temperature)
    chunk = max(1, LOGITS_BYTES_PER_CHUNK // (4 * target.vocab_size))
    for begin in range(0, rows.shape[0], chunk):
        part = slice(begin, begin + chunk)
        target_logits = target.logits(output.hidden[rows[part], positions[part]])
        target_choice = target_logits.argmax(dim=-1)
        agreement[part] = target_choice == continuation[part]
        target_probs = None if greedy else probabilities(target_logits, temperature)
        for level in range(depth):
            if level > 0 and states[level] is states[level - 1]:
                acceptance[part, level] = acceptance[part, level - 1]
                continue
            draft_logits = draft.proposal_logits(states[level][rows[part], positions[part]], level)
            if target_probs is None:
                acceptance[part, level] = (draft_logits.argmax(dim=-1) == target_choice).float()
            else:
                draft_probs = probabilities(draft_logits, temperature)
                acceptance[part, level] = torch.minimum(target_probs, draft_probs).sum(dim=-1)
    # a proposal at depth i for token c belongs to the step that started after token c - i
    levels = torch.arange(depth, device=target.device)
    acceptance = torch.where(completion_index[:, None] > levels[None, :], acceptance, 0.0)

    longest = int(batch.completion_lengths.max())
    matrix = torch.zeros(len(fitted), longest, depth, device=target.device)
    matrix[rows, completion_index] = acceptance
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
