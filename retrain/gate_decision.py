"""The gate's decision as types: what retrain.gate decides, and what the job row, head.json, the head
events and the RetrainGateDecision notification store of it.

    decision.promote, decision.overall.gain_low, decision.segments["lang=zh"].ok, decision.lossless.equal
    stored = decision.to_dict()                  # the JSON edge: the shape the gate has always stored
    decision = GateDecision.from_dict(stored)    # rows and head.json written before these types load too

Kept apart from retrain.gate (torch, the models) so that reading a job (retrain.jobs) stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class OverallResult:
    """Check 1: both heads' alpha over all scored samples and the paired interval of the gain
    (None where fewer than 2 samples, or no drafted token, leave it unknown)."""

    live_alpha: float | None
    candidate_alpha: float | None
    gain: float | None
    gain_low: float | None
    gain_high: float | None
    samples: int
    confidence: float
    skipped: int
    """holdout samples left out because a head skipped them"""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SegmentResult:
    """Check 2 for one segment; ok is None when the segment is not judged."""

    samples: int
    live_alpha: float | None
    candidate_alpha: float | None
    delta: float | None
    threshold: float
    threshold_source: str
    judged: bool
    ok: bool | None


@dataclass(frozen=True)
class LosslessResult:
    """Check 3: how many prompts were generated in exact mode, whether all equalled the target's
    output, and the sample_id of the first that did not."""

    checked: int
    equal: bool
    first_mismatch: int | None


@dataclass(frozen=True)
class SpeedupResult:
    """Check 4: estimated speedups (None without tau or cost), the draft/target cost ratios c, the
    taus, k (tokens drafted per step) of each head, and how c was measured."""

    live: float | None
    candidate: float | None
    cost_ratio_live: float | None
    cost_ratio_candidate: float | None
    live_tau: float | None
    candidate_tau: float | None
    drafted_live: int
    drafted_candidate: int
    method: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with the numbers behind every check. `to_dict()`/`from_dict()` give and read
    the stored JSON (job rows, head.json, head events), whose shape is unchanged since the gate began."""

    promote: bool
    reasons: list[str]
    overall: OverallResult
    segments: dict[str, SegmentResult]
    lossless: LosslessResult
    speedup: SpeedupResult
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateDecision:
        """Reads a stored decision (KeyError or TypeError on another shape)."""
        return cls(
            promote=data["promote"],
            reasons=list(data["reasons"]),
            overall=OverallResult(**data["overall"]),
            segments={name: SegmentResult(**segment) for name, segment in data["segments"].items()},
            lossless=LosslessResult(**data["lossless"]),
            speedup=SpeedupResult(**data["speedup"]),
            seconds=data.get("seconds", 0.0),
        )

    def summary(self) -> str:
        """One line for a notification."""
        if not self.promote:
            return "refused: " + "; ".join(self.reasons)
        overall, speedup = self.overall, self.speedup
        judged = [s for s in self.segments.values() if s.judged]
        return (
            f"promoted: alpha {overall.live_alpha:.3f} -> {overall.candidate_alpha:.3f} "
            f"({overall.gain:+.3f}, {overall.confidence:.0%} CI {overall.gain_low:+.3f}.."
            f"{overall.gain_high:+.3f}, {overall.samples} samples); {len(judged)} segments judged ok; "
            f"lossless {self.lossless.checked}/{self.lossless.checked}; "
            f"est. speedup {speedup.live:.2f} -> {speedup.candidate:.2f}"
        )
