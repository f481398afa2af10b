"""A gate decision in the JSON shape stored before decisions were typed (retrain.gate_decision), for the
tests that check old job rows, head.json files and head events still load and that the shape is unchanged."""

from __future__ import annotations

from typing import Any

# A decision as the gate stored it before it was typed (job rows, head.json, head events): the same shape
# must still load, and a typed decision must store the same shape.
STORED_BEFORE_TYPING: dict[str, Any] = {
    "promote": True,
    "reasons": ["overall alpha gain +0.120 (0.610 -> 0.730; 95% CI +0.080..+0.160, 44 samples): ..."],
    "overall": {
        "live_alpha": 0.61,
        "candidate_alpha": 0.73,
        "gain": 0.12,
        "gain_low": 0.08,
        "gain_high": 0.16,
        "samples": 44,
        "confidence": 0.95,
        "skipped": 0,
    },
    "segments": {
        "lang=en": {
            "samples": 20,
            "live_alpha": 0.8,
            "candidate_alpha": 0.81,
            "delta": 0.01,
            "threshold": 0.65,
            "threshold_source": "default",
            "judged": True,
            "ok": True,
        },
        "lang=ja": {
            "samples": 4,
            "live_alpha": None,
            "candidate_alpha": None,
            "delta": None,
            "threshold": 0.65,
            "threshold_source": "default",
            "judged": False,
            "ok": None,
        },
    },
    "lossless": {"checked": 3, "equal": True, "first_mismatch": None},
    "speedup": {
        "live": 1.9,
        "candidate": 2.2,
        "cost_ratio_live": 0.05,
        "cost_ratio_candidate": 0.05,
        "live_tau": 2.1,
        "candidate_tau": 2.5,
        "drafted_live": 3,
        "drafted_candidate": 3,
        "method": "flops: ...",
    },
    "seconds": 12.5,
}
