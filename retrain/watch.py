"""After a deploy: does the new head hold up on live traffic? If not, roll back.

    verdict = watch_latest_deploy(config, engine)   # waiting | kept | rolled_back, with the numbers
    roll_back(config, engine, None, reason="by hand")   # the previous head, pointer + deploy hook

Replay keeps results per head version, and a newly deployed head replays the stored traffic the
old head already scored, so the two are compared on the same samples (paired by sample, no model
loading here): the new head's alpha minus the old one's, with a paired bootstrap interval. A drop
by more than `retrain.watch.tolerance` whose interval lies below zero, on at least
`watch.min_samples` shared samples, rolls back at once; otherwise the head is kept once the watch
window has passed.

Where the serving engine reports its own acceptance (live counts), the watch also asks whether the engine
serves the new head at all: on the latest requests since the deploy, the engine's alpha must match the shadow
replay of the new head (paired interval of live - shadow within `drift.divergence_tolerance`). That is
"live acceptance moved as the gate predicted", measured on the same requests rather than before against
after (which traffic drift confounds). While it does not, the head is not kept (the evaluation's
ShadowLiveDivergence alert, on the pairs since the deploy, says why), and nothing is rolled back: the
registry's head is fine, the engine has not loaded it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts, TargetModel, load_target
from monitor.base.config import Config, window_length
from monitor.base.db import HeadEvent, ReplayResult, utcnow
from monitor.base.results import SCORED, load_pairs
from monitor.base.stats import Interval, beyond_tolerance, paired_alpha_difference
from retrain.deploy import run_deploy_hook
from retrain.pipeline import record_event
from retrain.registry import HeadRegistry, RegistryError
from retrain.serving import prepare_served_head

log = logging.getLogger(__name__)

WATCH_RESAMPLES = 1000


@dataclass(frozen=True)
class WatchVerdict:
    version: str
    previous: str | None
    state: str  # waiting | kept | rolled_back
    samples: int
    new_alpha: float | None
    old_alpha: float | None
    gain: float | None
    gain_low: float | None
    gain_high: float | None
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_under_watch(engine: Engine) -> HeadEvent | None:
    """The latest deploy, unless a verdict on it (kept, rolled back) or a later change exists."""
    with Session(engine) as session:
        latest = session.scalars(
            select(HeadEvent)
            .where(HeadEvent.event.in_(["deployed", "kept", "rolled_back"]))
            .order_by(HeadEvent.id.desc())
            .limit(1)
        ).first()
    return latest if latest is not None and latest.event == "deployed" else None


def shared_counts(engine: Engine, new: str, old: str) -> tuple[list[AcceptCounts], list[AcceptCounts]]:
    """Scored counts of the samples both versions replayed, in the same order."""
    query = select(ReplayResult.sample_id, ReplayResult.draft_version, ReplayResult.counts).where(
        ReplayResult.draft_version.in_([new, old]), ReplayResult.mode == SCORED, ReplayResult.skipped.is_(None)
    )
    by_sample: dict[int, dict[str, AcceptCounts]] = {}
    with Session(engine) as session:
        for sample_id, version, counts in session.execute(query):
            by_sample.setdefault(sample_id, {})[version] = AcceptCounts.from_dict(counts)
    pairs = [(v[new], v[old]) for _, v in sorted(by_sample.items()) if new in v and old in v]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def watch_latest_deploy(config: Config, engine: Engine, now: datetime | None = None) -> WatchVerdict | None:
    event = deploy_under_watch(engine)
    if event is None or event.previous_version is None:
        return None
    now = now or utcnow()
    settings = config.retrain.watch
    new_counts, old_counts = shared_counts(engine, event.version, event.previous_version)
    elapsed = now - event.at >= window_length(settings.window)
    if len(new_counts) < settings.min_samples:
        state = "kept" if elapsed else "waiting"
        summary = f"{len(new_counts)} shared samples (< {settings.min_samples}); " + (
            "watch window over, head kept" if elapsed else "watching"
        )
        return _conclude(
            config,
            engine,
            event,
            WatchVerdict(
                event.version, event.previous_version, state, len(new_counts), None, None, None, None, None, summary
            ),
        )
    new_alpha = AcceptCounts.total(new_counts).alpha or 0.0
    old_alpha = AcceptCounts.total(old_counts).alpha or 0.0
    gain = new_alpha - old_alpha
    interval = paired_alpha_difference(
        old_counts, new_counts, confidence=config.retrain.gate.confidence, resamples=WATCH_RESAMPLES, seed=0
    )
    low, high = (interval.low, interval.high) if interval else (gain, gain)
    numbers = (
        f"alpha {new_alpha:.3f} vs {old_alpha:.3f} (gain {gain:+.3f}, CI {low:+.3f}..{high:+.3f}, n={len(new_counts)})"
    )
    unserved = engine_not_serving(config, engine, event)
    if gain < -settings.tolerance and high < 0:
        state, summary = "rolled_back", f"regression beyond {settings.tolerance}: {numbers}"
    elif unserved is not None:
        state, summary = "waiting", f"{unserved}; {numbers}"
    elif elapsed:
        state, summary = "kept", f"held up over {settings.window}: {numbers}"
    else:
        state, summary = "waiting", f"watching: {numbers}"
    verdict = WatchVerdict(
        event.version, event.previous_version, state, len(new_counts), new_alpha, old_alpha, gain, low, high, summary
    )
    return _conclude(config, engine, event, verdict)


def engine_not_serving(config: Config, engine: Engine, event: HeadEvent) -> str | None:
    """Why the engine's own counts since the deploy say it does not serve the new head, or None (it does, or
    too few requests carry both the engine's counts and a replay of the new head to tell). The newest
    2 x watch.min_samples requests are judged, so an engine that loads the head late is seen to."""
    minimum = config.retrain.watch.min_samples
    pairs = load_pairs(engine, event.version, event.at)
    pairs = pairs.take(slice(max(0, len(pairs) - 2 * minimum), None))
    if len(pairs) < minimum:
        return None
    interval = paired_alpha_difference(
        pairs.shadow,
        pairs.live,
        confidence=config.retrain.gate.confidence,
        resamples=WATCH_RESAMPLES,
        seed=0,
    )
    tolerance = config.drift.divergence_tolerance
    if interval is None or not beyond_tolerance(interval, tolerance):
        return None
    live = pairs.live.counts().alpha or 0.0
    shadow = pairs.shadow.counts().alpha or 0.0
    return (
        f"the engine does not serve {event.version}: its own alpha {live:.3f} vs {shadow:.3f} replayed on the "
        f"same {len(pairs)} requests since the deploy (live - shadow {_span(interval)}, tolerance {tolerance})"
    )


def _span(interval: Interval) -> str:
    return f"{interval.low:+.3f}..{interval.high:+.3f}"


def _conclude(config: Config, engine: Engine, event: HeadEvent, verdict: WatchVerdict) -> WatchVerdict:
    if verdict.state == "kept":
        record_event(
            engine, "kept", event.version, event.previous_version, verdict.summary, {"watch": verdict.to_dict()}
        )
        log.info("deployed head %s kept: %s", event.version, verdict.summary)
    elif verdict.state == "rolled_back":
        log.warning("deployed head %s regressed, rolling back: %s", event.version, verdict.summary)
        roll_back(config, engine, event.previous_version, reason=verdict.summary, watch=verdict.to_dict())
    return verdict


def target_model(config: Config) -> TargetModel:
    """The target, loaded for a rollback that must export the head it returns to (one never deployed
    in the engine's format before: the seed, stored in specwatch's)."""
    if config.models.target is None:
        raise RegistryError("models.target is not set: cannot export the head for the engine")
    return load_target(config.models.target, device=config.retrain.training.device)


def roll_back(
    config: Config, engine: Engine, version: str | None, *, reason: str, watch: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Makes `version` (default: the head live before the current one) live again: atomic pointer
    switch, the deploy hook, a rolled_back event (DeployRolledBack fires at the next evaluation)."""
    registry = HeadRegistry(config.heads_dir)
    target = version or registry.previous_live()
    if target is None:
        raise RegistryError("no earlier head to roll back to; `specwatch heads list` shows the registry")
    target = registry.get(target).version
    served = prepare_served_head(config.retrain.deploy, registry, target, lambda: target_model(config))
    was = registry.switch(target, reason=f"rollback: {reason}", previous_state="rolled_back")
    hook = run_deploy_hook(config.retrain.deploy, served)
    details = {"hook": hook.to_dict(), "served": served.to_dict(), **({"watch": watch} if watch else {})}
    record_event(engine, "rolled_back", target, was, reason, details)
    return {"live": target, "was": was, "reason": reason, "hook": hook.to_dict()}
