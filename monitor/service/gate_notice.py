"""The retrain gate's decisions as notifications: the callback the service hands to retrain.pipeline.

    execute_job(config, engine, job, announce=gate_decision_notifier(config, engine))

Each decision is queued like an alert named RetrainGateDecision (severity info, segment "*"), so
receivers and routes treat it as they treat alerts.
"""

from __future__ import annotations

from sqlalchemy import Engine

from alerts.lifecycle import queue_event
from monitor.base.config import Config
from retrain.pipeline import Announce, GateAnnouncement


def gate_decision_notifier(config: Config, engine: Engine) -> Announce:
    def announce(decision: GateAnnouncement) -> None:
        labels = {"alertname": "RetrainGateDecision", "severity": "info", "segment": "*"}
        verdict = "promoted" if decision.promote else "refused"
        job = decision.job
        annotations = {
            "summary": f"retrain job {job.id} ({job.trigger}): candidate {decision.version} {verdict}. "
            f"{decision.summary}",
            "evidence": decision.overall.to_dict(),
        }
        queue_event(config.alerts, engine, labels, annotations)

    return announce
