"""What a detector concludes: one finding about one group and window, with the numbers behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One detector's conclusion about one segment and window, with the numbers behind it."""

    detector: str  # "threshold" | "change" | "input_drift"
    segment: str
    window: str
    severity: str  # "critical" for threshold, "warning" for change and input_drift
    summary: str  # one line a human reads, with the numbers
    evidence: dict[str, Any] = field(default_factory=dict)  # JSON-ready

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "segment": self.segment,
            "window": self.window,
            "severity": self.severity,
            "summary": self.summary,
            "evidence": dict(self.evidence),
        }
