"""The promotion gate on the tiny reference build: a worse head is refused, an equal one is refused for
no gain, a better one is promoted, small segments are not judged, the decision is reproducible, and
it stores (and loads) the same JSON shape as before it was typed.

Holdout: demo traffic in two languages whose completions are the target's own greedy answers (what
the tiny drafts were trained to predict), 20 "lang=en", 20 "lang=zh" and 4 relabeled "lang=ja".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from decoder import AcceptCounts, Draft, TargetModel, create_draft, load_draft
from decoder.exchange import Exchange
from monitor.base.config import DriftConfig, GateConfig
from monitor.base.stats import paired_alpha_difference
from monitor.service.demo_traffic import served, traffic
from retrain.gate import GateOptions, draft_cost_ratio, run_gate
from retrain.gate_decision import GateDecision, LosslessResult, OverallResult, SegmentResult
from retrain.pipeline import JobOutcome
from tests.retrain.stored_decision import STORED_BEFORE_TYPING

WINDOW = 3
CONFIG = GateConfig(segment_min_samples=15, lossless_samples=3, lossless_max_new_tokens=24)
OVERRIDES = {"lang=zh": 0.2}  # the tiny eagle head reaches about 0.3 on Chinese, 0.8 on English


@dataclass(frozen=True)
class Holdout:
    sample_id: int
    segment: str
    messages: list[dict[str, str]]
    completion: str

    @property
    def exchange(self) -> Exchange:
        return Exchange(self.messages, self.completion)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(reference_models: Path, target: TargetModel) -> Draft:
    return load_draft(reference_models / "drafts" / "eagle", target)


@pytest.fixture(scope="module")
def untrained(target: TargetModel) -> Draft:
    torch.manual_seed(0)
    return create_draft("eagle", target)


@pytest.fixture(scope="module")
def holdout(target: TargetModel) -> list[Holdout]:
    records = [(record, "lang=en") for record in traffic(24, {"en": 1.0}, seed=1)]
    records += [(record, "lang=zh") for record in traffic(20, {"zh": 1.0}, seed=2)]
    answered = served([record for record, _ in records], target, max_new_tokens=40)
    samples = [
        Holdout(index, segment, record["messages"], answer["completion"])
        for index, ((record, segment), answer) in enumerate(zip(records, answered, strict=True))
    ]
    return [replace(s, segment="lang=ja") if s.sample_id < 4 else s for s in samples]


def gate(target: TargetModel, live: Draft, candidate: Draft, holdout: list[Holdout], seed: int = 0) -> GateDecision:
    drift = DriftConfig(threshold=0.65, threshold_overrides=OVERRIDES)
    return run_gate(target, live, candidate, holdout, GateOptions(CONFIG, drift, window=WINDOW, seed=seed))


@pytest.fixture(scope="module")
def worse(target: TargetModel, trained: Draft, untrained: Draft, holdout: list[Holdout]) -> GateDecision:
    return gate(target, trained, untrained, holdout)


@pytest.fixture(scope="module")
def better(target: TargetModel, trained: Draft, untrained: Draft, holdout: list[Holdout]) -> GateDecision:
    return gate(target, untrained, trained, holdout)


def test_a_worse_candidate_is_refused_with_the_gain_and_the_regressed_segments(worse: GateDecision) -> None:
    assert not worse.promote
    assert worse.overall.gain_high < 0 < worse.overall.live_alpha
    reasons = " | ".join(worse.reasons)
    assert "overall alpha gain -" in reasons and "lower end below the required +0.010" in reasons
    assert "segment lang=en: alpha 0." in reasons and "segment lang=zh: alpha 0." in reasons
    assert "loses more than the tolerance 0.020" in reasons
    assert "below its threshold 0.65 (default) and not improving on live" in reasons
    assert "candidate slower than live" in reasons
    assert worse.segments["lang=en"].ok is False and worse.segments["lang=zh"].ok is False
    assert worse.lossless == LosslessResult(checked=3, equal=True, first_mismatch=None)  # greedy verify never lies


def test_the_same_head_is_refused_for_no_gain(target: TargetModel, trained: Draft, holdout: list[Holdout]) -> None:
    decision = gate(target, trained, trained, holdout)
    assert not decision.promote
    assert decision.overall.gain == 0.0
    assert decision.overall.gain_low <= 0.0 <= decision.overall.gain_high
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("overall alpha gain +0.000")
    assert decision.lossless.equal and decision.lossless.checked == 3
    assert decision.speedup.candidate == decision.speedup.live
    assert decision.segments["lang=zh"].ok is True and decision.segments["lang=zh"].delta == 0.0
    assert decision.segments["lang=zh"].threshold == 0.2
    assert decision.segments["lang=zh"].threshold_source == "lang=zh"


def test_a_better_candidate_is_promoted(better: GateDecision) -> None:
    assert better.promote, better.reasons
    assert better.overall.gain_low >= CONFIG.min_alpha_gain
    assert better.overall.samples == 44 and better.overall.skipped == 0
    assert all(better.segments[name].ok for name in ("lang=en", "lang=zh"))
    assert better.lossless == LosslessResult(checked=3, equal=True, first_mismatch=None)
    speedup = better.speedup
    assert speedup.candidate > speedup.live and speedup.candidate_tau > speedup.live_tau
    assert speedup.cost_ratio_candidate == speedup.cost_ratio_live > 0  # one architecture
    assert speedup.method.startswith("flops")
    assert better.summary().startswith("promoted: alpha ")
    assert len(better.reasons) == 4  # why each check passed


def test_segments_with_few_samples_are_listed_but_not_judged(worse: GateDecision, better: GateDecision) -> None:
    for decision in (worse, better):
        rare = decision.segments["lang=ja"]
        assert rare.samples == 4 and not rare.judged and rare.ok is None
    assert "lang=ja" not in " ".join(worse.reasons)
    assert any("(1 with fewer than 15 samples not judged)" in reason for reason in better.reasons)


def test_the_decision_is_reproducible(
    target: TargetModel, trained: Draft, untrained: Draft, holdout: list[Holdout], better: GateDecision
) -> None:
    again = gate(target, untrained, trained, list(reversed(holdout)))

    def without_time(decision: GateDecision) -> dict[str, Any]:
        return {key: value for key, value in decision.to_dict().items() if key != "seconds"}

    assert without_time(again) == without_time(better)


def test_the_cost_ratio_counts_the_draft_step_against_a_target_forward(
    reference_models: Path, target: TargetModel, trained: Draft
) -> None:
    medusa = load_draft(reference_models / "drafts" / "medusa", target)
    prompt = target.encode_chat([{"role": "user", "content": "How are you?"}])
    eagle_cost, eagle_drafted = draft_cost_ratio(target, trained, prompt, WINDOW)
    medusa_cost, medusa_drafted = draft_cost_ratio(target, medusa, prompt, WINDOW)
    assert eagle_drafted == medusa_drafted == WINDOW
    assert 0 < medusa_cost < eagle_cost < 1  # medusa: one small block per token; eagle: a decoder layer


def test_an_empty_holdout_is_refused_without_scoring(target: TargetModel, trained: Draft) -> None:
    decision = gate(target, trained, trained, [])
    assert not decision.promote and decision.overall.samples == 0 and decision.segments == {}
    assert decision.lossless == LosslessResult(checked=0, equal=False, first_mismatch=None)
    assert len(decision.reasons) == 3  # gain, lossless and speedup cannot be shown; no segment failed


def test_the_paired_interval_cancels_what_both_heads_share() -> None:
    live = [AcceptCounts(accepted=a, rejected=r) for a, r in [(1, 3), (9, 1), (4, 4), (2, 2), (7, 1)]]
    shifted = [AcceptCounts(accepted=c.accepted + 1, rejected=c.rejected) for c in live]
    same = paired_alpha_difference(live, live, confidence=0.95, resamples=200, seed=0)
    assert same is not None and same.low == same.high == 0.0
    gain = paired_alpha_difference(live, shifted, confidence=0.95, resamples=200, seed=0)
    assert gain is not None and 0 < gain.low <= gain.high
    assert paired_alpha_difference(live[:1], shifted[:1], confidence=0.95, resamples=200, seed=0) is None


def test_a_decision_stored_before_typing_loads_and_stores_the_same_shape() -> None:
    decision = GateDecision.from_dict(json.loads(json.dumps(STORED_BEFORE_TYPING)))
    assert decision.overall == OverallResult(0.61, 0.73, 0.12, 0.08, 0.16, samples=44, confidence=0.95, skipped=0)
    assert decision.segments["lang=ja"] == SegmentResult(4, None, None, None, 0.65, "default", False, None)
    assert decision.speedup.drafted_candidate == 3 and decision.lossless.first_mismatch is None
    assert json.dumps(decision.to_dict()) == json.dumps(STORED_BEFORE_TYPING)  # same keys, same order
    assert decision.summary().startswith("promoted: alpha 0.610 -> 0.730 (+0.120, 95% CI +0.080..+0.160")


def test_a_decision_round_trips_through_its_stored_json(better: GateDecision, worse: GateDecision) -> None:
    for decision in (better, worse):
        stored = json.loads(json.dumps(decision.to_dict()))
        assert GateDecision.from_dict(stored) == decision
        assert list(stored) == list(STORED_BEFORE_TYPING)
        assert list(stored["overall"]) == list(STORED_BEFORE_TYPING["overall"])
        assert list(stored["speedup"]) == list(STORED_BEFORE_TYPING["speedup"])
        for segment in stored["segments"].values():
            assert list(segment) == list(STORED_BEFORE_TYPING["segments"]["lang=en"])


def test_a_job_outcome_prints_the_decision_in_its_stored_shape() -> None:
    decision = GateDecision.from_dict(STORED_BEFORE_TYPING)
    outcome = JobOutcome(7, "succeeded", "deployed", "v1", decision)
    assert outcome.to_dict() == {
        "job_id": 7,
        "state": "succeeded",
        "summary": "deployed",
        "candidate_version": "v1",
        "decision": STORED_BEFORE_TYPING,
    }
