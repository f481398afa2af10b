"""Acceptance metrics, defined once: counts per verify step and the rates derived from them.

Per verify step with window k the draft proposes d <= k tokens and the target accepts a <= d.
A step emits a + 1 tokens (the accepted drafts, then the target's own token), except a step whose
accepted drafts reach the target's EOS: it ends at that EOS, emits a tokens and counts d = a
(drafts after the EOS are discarded, no rejection, no target token). Over steps with A accepted,
D drafted, R rejections (steps with a < d), S steps and E steps ended by an accepted EOS:

- alpha = A / (A + R): probability a drafted token is accepted given all earlier ones in its
  step were (the number the 0.65 threshold applies to);
- tau = (A + S - E) / S: tokens emitted per verify step, i.e. per target forward after the
  prefill;
- draft acceptance rate = A / D (vLLM's num_accepted_tokens / num_draft_tokens);
- per-position rate p_i = steps whose i-th drafted token was accepted / S.

Invariants: a generation of n tokens has A + S - E = n - 1 (the prefill emits the first token)
and R <= S; E <= 1 per generation, since the EOS ends it.

Exact mode adds whole steps; scored mode with temperature > 0 adds expected (fractional) counts
given the continuation (the posterior over the step structures that emit it, `decoder.scored`):
unbiased for exact mode's counts when the continuation was sampled from the target at that
temperature, an estimate on other text. So the fields are floats that hold integers in greedy
and exact modes.
The verify-loop simulation over an acceptance matrix is `decoder.metrics`; this module needs only the
standard library, so what reads stored counts (evaluation) does not load torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def _padded_sum(left: list[float], right: list[float]) -> list[float]:
    size = max(len(left), len(right))
    return [(left[i] if i < len(left) else 0.0) + (right[i] if i < len(right) else 0.0) for i in range(size)]


@dataclass(slots=True)
class AcceptCounts:
    """Verify-step counts that add up across steps, samples and segments."""

    accepted: float = 0.0
    rejected: float = 0.0
    drafted: float = 0.0
    steps: float = 0.0
    eos_ended: float = 0.0
    """steps ended by an accepted EOS (they emit a tokens, not a + 1)"""
    accept_histogram: list[float] = field(default_factory=list)
    """index a: steps that accepted exactly a drafted tokens"""
    accepted_per_position: list[float] = field(default_factory=list)
    """index i: steps whose (i+1)-th drafted token was accepted"""

    def add_step(self, drafted: int, accepted: int, eos_ended: bool = False) -> None:
        """One verify step; `eos_ended`: its accepted drafts reached the EOS (then d = a)."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted {accepted} must lie in [0, drafted={drafted}]")
        if eos_ended and not 0 < accepted == drafted:
            raise ValueError(f"a step ended by an accepted EOS drafts what it accepts (d={drafted}, a={accepted})")
        self.accepted += accepted
        self.drafted += drafted
        self.steps += 1
        self.eos_ended += float(eos_ended)
        if accepted < drafted:
            self.rejected += 1
        histogram = [0.0] * (accepted + 1)
        histogram[accepted] = 1.0
        self.accept_histogram = _padded_sum(self.accept_histogram, histogram)
        self.accepted_per_position = _padded_sum(self.accepted_per_position, [1.0] * accepted)

    def __add__(self, other: AcceptCounts) -> AcceptCounts:
        return AcceptCounts(
            accepted=self.accepted + other.accepted,
            rejected=self.rejected + other.rejected,
            drafted=self.drafted + other.drafted,
            steps=self.steps + other.steps,
            eos_ended=self.eos_ended + other.eos_ended,
            accept_histogram=_padded_sum(self.accept_histogram, other.accept_histogram),
            accepted_per_position=_padded_sum(self.accepted_per_position, other.accepted_per_position),
        )

    @classmethod
    def total(cls, counts: Iterable[AcceptCounts]) -> AcceptCounts:
        result = cls()
        for item in counts:
            result = result + item
        return result

    @property
    def alpha(self) -> float | None:
        """A / (A + R); None when no token was drafted."""
        denominator = self.accepted + self.rejected
        return self.accepted / denominator if denominator > 0 else None

    @property
    def emitted(self) -> float:
        """A + S - E: tokens the verify steps emitted (all but the prefill's first token)."""
        return self.accepted + self.steps - self.eos_ended

    @property
    def tau(self) -> float | None:
        """(A + S - E) / S, tokens emitted per verify step; None without steps."""
        return self.emitted / self.steps if self.steps > 0 else None

    @property
    def draft_acceptance_rate(self) -> float | None:
        """A / D, lower than alpha when the window exceeds 1."""
        return self.accepted / self.drafted if self.drafted > 0 else None

    @property
    def per_position_rates(self) -> list[float]:
        """p_i = steps whose (i+1)-th drafted token was accepted / steps."""
        if self.steps <= 0:
            return []
        return [count / self.steps for count in self.accepted_per_position]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "drafted": self.drafted,
            "steps": self.steps,
            "eos_ended": self.eos_ended,
            "accept_histogram": list(self.accept_histogram),
            "accepted_per_position": list(self.accepted_per_position),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AcceptCounts:
        return cls(
            accepted=float(data["accepted"]),
            rejected=float(data["rejected"]),
            drafted=float(data["drafted"]),
            steps=float(data["steps"]),
            eos_ended=float(data.get("eos_ended", 0.0)),
            accept_histogram=[float(x) for x in data.get("accept_histogram", [])],
            accepted_per_position=[float(x) for x in data.get("accepted_per_position", [])],
        )
