"""The promotion gate: does a retrained candidate head replace the live one?

    from retrain.gate import GateOptions, run_gate
    decision = run_gate(target, live_draft, candidate_draft, corpus.holdout, GateOptions.from_config(config))
    decision.promote, decision.reasons, decision.summary(), decision.overall.gain_low, decision.segments["lang=zh"].ok
    decision.to_dict()      # the stored JSON (retrain.gate_decision: the types, from_dict)

Both heads are scored (teacher-forced, greedy) on the same holdout samples, tokenized once; a sample
either head skips is left out of both. The candidate is promoted only when every check passes:

1. overall gain: alpha = sum A / sum (A + R) of each head; the gain candidate - live gets a paired
   cluster bootstrap over samples (one set of resampled indices for both heads, the expanded percentile
   interval of monitor.base.stats). The interval's lower end must reach `min_alpha_gain`.
2. segments: a segment with at least `segment_min_samples` scored samples is judged: the candidate may
   lose at most `segment_tolerance` alpha against live, and must clear the segment's alert threshold or
   improve on live. Smaller segments are listed as not judged.
3. lossless: for the first `lossless_samples` holdout prompts (by sample_id) the candidate's greedy
   speculative output in exact mode must equal the target's own output, token for token.
4. speedup: estimated speedup tau / (1 + k * c) (monitor.base.stats.estimated_speedup) of the candidate must
   not fall below live's. c, the draft/target forward-cost ratio, is a FLOP proxy, not a timing: the
   weight-matrix FLOPs of one steady-state verify step of the draft (propose k tokens after one verified
   position, then read the verified position), over k times the FLOPs of one decoding forward of the
   target, counted with torch.utils.flop_counter on the first lossless prompt. Wall-clock ratios of the
   same work on a shared CPU varied 2-8x between repeats, which no gate can decide on, and a FLOP count
   is deterministic and the same for equal architectures. Acceptance enters through tau only, so c is a
   property of the architecture. It understates the cost of small sequential draft kernels on a GPU,
   where latency rather than FLOPs bounds them; the decision states the method.

Deterministic given `seed` (bootstrap and exact-mode sampling seeds). No sample text is logged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from decoder import AcceptCounts, Draft, TargetModel, TokenizedSample, exact_generate, score_batch
from decoder.exact import propose, update, verify
from decoder.exchange import Exchange, tokenize_exchange
from decoder.metrics import draft_budget
from monitor.base.config import Config, DriftConfig, GateConfig
from monitor.base.stats import (
    estimated_speedup,
    paired_alpha_difference,
)
from retrain.gate_decision import GateDecision, LosslessResult, OverallResult, SegmentResult, SpeedupResult

log = logging.getLogger(__name__)

RESAMPLES = 1000
SPEEDUP_EPSILON = 1e-9  # relative: equal heads give equal estimates, up to float rounding
WEIGHT_MATMULS = (torch.ops.aten.mm, torch.ops.aten.addmm)
COST_METHOD = (
    "flops: weight-matrix FLOPs of one steady-state verify step of the draft (k proposals after one "
    "verified position) / (k x FLOPs of one target decoding forward), torch.utils.flop_counter; "
    "a proxy: wall-clock ratios on a shared machine varied 2-8x between repeats"
)


class HoldoutSample(Protocol):
    """A held-out piece of traffic, as retrain.corpus provides it."""

    @property
    def sample_id(self) -> int: ...

    @property
    def segment(self) -> str: ...

    @property
    def exchange(self) -> Exchange: ...


@dataclass(frozen=True)
class GateOptions:
    """What run_gate needs besides the models and the holdout: the gate's thresholds, the drift
    thresholds per segment, scoring (window, batching), the bootstrap's resamples, and the seed of the
    bootstrap and of exact-mode sampling."""

    gate: GateConfig
    drift: DriftConfig
    window: int
    batch_size: int = 16
    max_batch_tokens: int = 16384
    pack: bool = True
    seed: int = 0
    resamples: int = RESAMPLES

    @classmethod
    def from_config(cls, config: Config) -> GateOptions:
        """The service's settings: [retrain.gate], [drift], [replay] scoring, [stats] resamples, the training seed."""
        return cls(
            gate=config.retrain.gate,
            drift=config.drift,
            window=config.replay.window,
            batch_size=config.replay.batch_size,
            max_batch_tokens=config.replay.max_batch_tokens,
            pack=config.replay.pack_samples,
            seed=config.retrain.training.seed,
            resamples=config.stats.resamples,
        )


@dataclass
class _Scored:
    """Both heads' counts on one holdout sample that neither skipped."""

    sample_id: int
    segment: str
    live: AcceptCounts
    candidate: AcceptCounts


@dataclass
class _Check:
    ok: bool
    reasons: list[str] = field(default_factory=list)


def run_gate(
    target: TargetModel, live: Draft, candidate: Draft, holdout: Sequence[HoldoutSample], options: GateOptions
) -> GateDecision:
    """Scores both heads on the holdout and decides whether the candidate replaces live."""
    started = time.perf_counter()
    config = options.gate
    ordered = sorted(holdout, key=lambda sample: sample.sample_id)
    tokenized = [_tokenize(target, sample) for sample in ordered]
    scored = _score_both(target, live, candidate, ordered, tokenized, options)
    overall = _overall(scored, options, skipped=len(ordered) - len(scored))
    segments = _segments(scored, config, options.drift)
    lossless_prompts = _lossless_prompts(target, ordered, tokenized, config)
    lossless = _lossless(target, candidate, lossless_prompts, options)
    speedup = _speedup(target, live, candidate, scored, lossless_prompts, options.window)
    checks = [
        _overall_check(overall, config),
        _segment_check(segments, config),
        _lossless_check(lossless),
        _speedup_check(speedup),
    ]
    promote = all(check.ok for check in checks)
    reasons = [reason for check in checks if check.ok == promote for reason in check.reasons]
    decision = GateDecision(promote, reasons, overall, segments, lossless, speedup, time.perf_counter() - started)
    log.info("gate: %s", decision.summary())
    return decision


# ---- scoring ------------------------------------------------------------------------------------


def _tokenize(target: TargetModel, sample: HoldoutSample) -> TokenizedSample:
    """Replay's rule (decoder.exchange): logged ids first, EOS only after a natural stop."""
    return tokenize_exchange(target, sample.exchange).sample(str(sample.sample_id))


def _score_both(
    target: TargetModel,
    live: Draft,
    candidate: Draft,
    holdout: Sequence[HoldoutSample],
    tokenized: Sequence[TokenizedSample],
    options: GateOptions,
) -> list[_Scored]:
    """Per-sample counts of both heads on the same samples; a sample either head skipped is dropped."""
    scoring: dict[str, Any] = {
        "window": options.window,
        "batch_size": options.batch_size,
        "max_batch_tokens": options.max_batch_tokens,
        "pack": options.pack,
    }
    live_scores = score_batch(target, live, tokenized, **scoring)
    candidate_scores = score_batch(target, candidate, tokenized, **scoring)
    return [
        _Scored(sample.sample_id, sample.segment, live_score.counts, candidate_score.counts)
        for sample, live_score, candidate_score in zip(holdout, live_scores, candidate_scores, strict=True)
        if live_score.skipped is None and candidate_score.skipped is None
    ]


# ---- overall gain -------------------------------------------------------------------------------


def _overall(scored: Sequence[_Scored], options: GateOptions, *, skipped: int) -> OverallResult:
    live_alpha = AcceptCounts.total(s.live for s in scored).alpha
    candidate_alpha = AcceptCounts.total(s.candidate for s in scored).alpha
    gain = None if live_alpha is None or candidate_alpha is None else candidate_alpha - live_alpha
    interval = paired_alpha_difference(
        [s.live for s in scored],
        [s.candidate for s in scored],
        confidence=options.gate.confidence,
        resamples=options.resamples,
        seed=options.seed,
    )
    return OverallResult(
        live_alpha=live_alpha,
        candidate_alpha=candidate_alpha,
        gain=gain,
        gain_low=interval.low if interval else None,
        gain_high=interval.high if interval else None,
        samples=len(scored),
        confidence=options.gate.confidence,
        skipped=skipped,
    )


def _overall_check(overall: OverallResult, config: GateConfig) -> _Check:
    low, high, gain = overall.gain_low, overall.gain_high, overall.gain
    if gain is None or low is None:
        return _Check(False, [f"overall alpha gain cannot be estimated from {overall.samples} scored samples"])
    numbers = (
        f"overall alpha gain {gain:+.3f} ({overall.live_alpha:.3f} -> {overall.candidate_alpha:.3f}; "
        f"{overall.confidence:.0%} CI {low:+.3f}..{high:+.3f}, {overall.samples} samples)"
    )
    if low >= config.min_alpha_gain:
        return _Check(True, [f"{numbers}: lower end reaches the required {config.min_alpha_gain:+.3f}"])
    return _Check(False, [f"{numbers}: lower end below the required {config.min_alpha_gain:+.3f}"])


# ---- segments -----------------------------------------------------------------------------------


def _segments(scored: Sequence[_Scored], config: GateConfig, drift: DriftConfig) -> dict[str, SegmentResult]:
    groups: dict[str, list[_Scored]] = defaultdict(list)
    for item in scored:
        groups[item.segment].append(item)
    return {segment: _segment(groups[segment], config, *drift.threshold_for(segment)) for segment in sorted(groups)}


def _segment(items: Sequence[_Scored], config: GateConfig, threshold: float, source: str) -> SegmentResult:
    live_alpha = AcceptCounts.total(s.live for s in items).alpha
    candidate_alpha = AcceptCounts.total(s.candidate for s in items).alpha
    delta = None if live_alpha is None or candidate_alpha is None else candidate_alpha - live_alpha
    judged = len(items) >= config.segment_min_samples and delta is not None
    ok = None
    if judged and candidate_alpha is not None and live_alpha is not None and delta is not None:
        clears = candidate_alpha >= threshold or candidate_alpha > live_alpha
        ok = delta >= -config.segment_tolerance and clears
    return SegmentResult(
        samples=len(items),
        live_alpha=live_alpha,
        candidate_alpha=candidate_alpha,
        delta=delta,
        threshold=threshold,
        threshold_source=source,
        judged=judged,
        ok=ok,
    )


def _segment_check(segments: dict[str, SegmentResult], config: GateConfig) -> _Check:
    failures = [_segment_failure(name, s, config) for name, s in segments.items() if s.ok is False]
    judged = [name for name, s in segments.items() if s.judged]
    if failures:
        return _Check(False, failures)
    not_judged = len(segments) - len(judged)
    return _Check(
        True,
        [
            f"{len(judged)} judged segments within tolerance {config.segment_tolerance:.3f} and at or above threshold "
            f"or improved ({not_judged} with fewer than {config.segment_min_samples} samples not judged)"
        ],
    )


def _segment_failure(name: str, segment: SegmentResult, config: GateConfig) -> str:
    """Why a judged segment failed (its alphas and delta are known: only judged segments fail)."""
    live, candidate, delta = segment.live_alpha, segment.candidate_alpha, segment.delta
    assert live is not None and candidate is not None and delta is not None
    problems = []
    if delta < -config.segment_tolerance:
        problems.append(f"loses more than the tolerance {config.segment_tolerance:.3f}")
    if candidate < segment.threshold and candidate <= live:
        problems.append(
            f"below its threshold {segment.threshold:.2f} ({segment.threshold_source}) and not improving on live"
        )
    numbers = f"alpha {live:.3f} -> {candidate:.3f} ({delta:+.3f}, {segment.samples} samples)"
    return f"segment {name}: {numbers}: " + "; ".join(problems)


# ---- lossless -----------------------------------------------------------------------------------


def _lossless_prompts(
    target: TargetModel, holdout: Sequence[HoldoutSample], tokenized: Sequence[TokenizedSample], config: GateConfig
) -> list[tuple[int, list[int]]]:
    """(sample_id, prompt ids) of the first holdout prompts, by sample_id, that leave room to generate."""
    room = target.context_length - config.lossless_max_new_tokens
    fitting = [
        (s.sample_id, t.prompt_ids) for s, t in zip(holdout, tokenized, strict=True) if len(t.prompt_ids) <= room
    ]
    return fitting[: config.lossless_samples]


def _lossless(
    target: TargetModel,
    candidate: Draft,
    prompts: Sequence[tuple[int, list[int]]],
    options: GateOptions,
) -> LosslessResult:
    checked = 0
    for sample_id, prompt_ids in prompts:
        result = exact_generate(
            target,
            candidate,
            prompt_ids,
            window=options.window,
            max_new_tokens=options.gate.lossless_max_new_tokens,
            temperature=0.0,
            seed=options.seed,
            compare_target_only=True,
        )
        checked += 1
        assert result.target_only is not None
        if result.speculative.tokens != result.target_only.tokens:
            return LosslessResult(checked=checked, equal=False, first_mismatch=sample_id)
    return LosslessResult(checked=checked, equal=checked > 0, first_mismatch=None)


def _lossless_check(lossless: LosslessResult) -> _Check:
    checked = lossless.checked
    if not checked:
        return _Check(False, ["lossless not checked: no holdout prompt leaves room to generate in the context"])
    if lossless.equal:
        return _Check(True, [f"lossless: exact-mode output equals the target's own on {checked}/{checked} prompts"])
    return _Check(
        False,
        [f"not lossless: exact-mode output differs from the target's own for sample {lossless.first_mismatch}"],
    )


# ---- speedup ------------------------------------------------------------------------------------


def _weight_flops(counter: FlopCounterMode) -> int:
    counts = counter.get_flop_counts().get("Global", {})
    return sum(int(counts.get(op, 0)) for op in WEIGHT_MATMULS)


def _flop_counter(counted: bool) -> FlopCounterMode | nullcontext[None]:
    return FlopCounterMode(display=False) if counted else nullcontext()


@torch.inference_mode()
def draft_cost_ratio(target: TargetModel, draft: Draft, prompt_ids: Sequence[int], window: int) -> tuple[float, int]:
    """(c, k): weight FLOPs of one steady-state verify step of the draft over k x the weight FLOPs of one
    decoding forward of the target, with k the tokens it drafts per step.

    Runs the exact-mode stages on `prompt_ids`: a first step that also reads the prompt (not counted),
    then a counted step that proposes k tokens after one verified position and reads that position. Both
    steps keep only the target's token (no acceptance), so the count does not depend on the head's quality.
    """
    drafted = draft_budget(window, draft.max_draft_tokens, window + 2)
    cache = target.new_cache()
    tokens = torch.tensor(list(prompt_ids), dtype=torch.long, device=target.device)
    prefill = target.forward(tokens[None], cache=cache, feature_layers=draft.feature_layers)
    tokens = torch.cat([tokens, target.logits(prefill.hidden[0, -1:]).argmax(dim=-1)])
    session = draft.start_session(target)
    session.update(tokens, prefill.positions(0, len(prompt_ids)))
    draft_flops = 0
    for counted in (False, True):
        with _flop_counter(counted) as proposing:
            proposal = propose(session, tokens, drafted, 0.0, None)
        verification = verify(target, cache, tokens[-1], proposal, draft.feature_layers)
        emitted = [int(verification.logits[0].argmax())]
        with _flop_counter(counted) as reading:
            tokens = update(cache, session, tokens, proposal, verification, 0, emitted)
        if proposing is not None and reading is not None:
            draft_flops = _weight_flops(proposing) + _weight_flops(reading)
    with FlopCounterMode(display=False) as decoding:
        target.logits(target.forward(tokens[-1:][None], cache=cache).hidden[0])
    return draft_flops / (drafted * _weight_flops(decoding)), drafted


def _speedup(
    target: TargetModel,
    live: Draft,
    candidate: Draft,
    scored: Sequence[_Scored],
    prompts: Sequence[tuple[int, list[int]]],
    window: int,
) -> SpeedupResult:
    live_tau = AcceptCounts.total(s.live for s in scored).tau
    candidate_tau = AcceptCounts.total(s.candidate for s in scored).tau
    live_cost, live_drafted = draft_cost_ratio(target, live, prompts[0][1], window) if prompts else (None, window)
    candidate_cost, candidate_drafted = (
        draft_cost_ratio(target, candidate, prompts[0][1], window) if prompts else (None, window)
    )
    return SpeedupResult(
        live=estimated_speedup(live_tau, live_drafted, live_cost),
        candidate=estimated_speedup(candidate_tau, candidate_drafted, candidate_cost),
        cost_ratio_live=live_cost,
        cost_ratio_candidate=candidate_cost,
        live_tau=live_tau,
        candidate_tau=candidate_tau,
        drafted_live=live_drafted,
        drafted_candidate=candidate_drafted,
        method=COST_METHOD,
    )


def _speedup_check(speedup: SpeedupResult) -> _Check:
    live, candidate = speedup.live, speedup.candidate
    if live is None or candidate is None:
        return _Check(False, ["estimated speedup unknown: no tau or no prompt to count the draft's cost on"])
    numbers = (
        f"estimated speedup {live:.2f} -> {candidate:.2f} (tau {speedup.live_tau:.2f} -> "
        f"{speedup.candidate_tau:.2f}, cost ratio c {speedup.cost_ratio_live:.3f} -> "
        f"{speedup.cost_ratio_candidate:.3f}, FLOP proxy)"
    )
    if candidate >= live * (1.0 - SPEEDUP_EPSILON):
        return _Check(True, [numbers])
    return _Check(False, [f"{numbers}: candidate slower than live"])
