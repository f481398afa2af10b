"""The engine's own acceptance against specwatch's shadow replay, through intake, replay and the statistics.

    PYTHONPATH=. python bench/live_vs_shadow.py --models /tmp/tiny-ref --requests 120

An engine (specwatch's exact verify loop, greedy, window 4) answers demo traffic while serving either the
registry's live head (eagle) or another one (medusa: a head the engine did not reload), and reports each
request's counts as vLLM does (half `detailed`, half `summary`). The log goes through intake into a fresh
SQLite database, is replayed on the live head, and measured. Prints, for each case: live and shadow alpha
over the requests with both, the paired interval of live - shadow, the divergence findings, and the share
of requests whose step counts (A, R, D, S) are the same on both sides.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from decoder import load_draft
from monitor.base.config import Config, ModelsConfig, ReplayConfig, Secret, StatsConfig, StorageConfig
from monitor.base.db import Sample, open_database, utcnow
from monitor.base.results import load_pairs
from monitor.base.stats import paired_alpha_difference
from monitor.evaluation.evaluate import evaluate
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.live_models import load_live_models
from monitor.replay.replayer import Replayer
from monitor.service.demo_traffic import traffic
from tests.monitor.engine_side import served_by_engine

log = logging.getLogger("live_vs_shadow")


def measure_case(models_dir: Path, served_head: str, requests: int, window: int) -> None:
    models = load_live_models(ModelsConfig(target=models_dir / "target", draft=models_dir / "drafts" / "eagle"))
    serving = models.draft if served_head == "eagle" else load_draft(models_dir / "drafts" / served_head, models.target)
    with tempfile.TemporaryDirectory() as data:
        config = Config(
            storage=StorageConfig(data_dir=Path(data)),
            replay=ReplayConfig(window=window, exact_fraction=0.0, samples_per_round=256),
            stats=StatsConfig(windows=["24h"], resamples=1000),
        )
        config = config.model_copy(update={"intake": config.intake.model_copy(update={"segment_keys": ["route"]})})
        engine = open_database(config)
        start = utcnow() - timedelta(hours=23)
        records = traffic(requests, {"en": 0.6, "code": 0.4}, seed=7, start=start, spacing_s=80_000 / requests)
        logged = []
        for index, record in enumerate(records):
            logged += served_by_engine(
                [record], models.target, serving, window=window, max_new_tokens=32, detailed=index % 2 == 0
            )
        raws = [RawRecord(position=f"line {i}", value=item) for i, item in enumerate(logged)]
        report = IntakePipeline(config, engine, Secret("bench")).ingest("gateway", raws)
        Replayer(engine, models.target, models.draft, models.versions, config.replay).replay_all()
        pairs = load_pairs(engine, models.versions.draft, start - timedelta(hours=1))
        live = pairs.live.counts().alpha or 0.0
        shadow = pairs.shadow.counts().alpha or 0.0
        interval = paired_alpha_difference(pairs.shadow, pairs.live, confidence=0.95, resamples=2000, seed=0)
        differing = pairs.live.sample_id[~pairs.same_steps()].tolist()
        with Session(engine) as session:
            redacted = session.scalar(
                select(func.count()).where(Sample.id.in_(differing), Sample.redactions != text("'{}'"))
            )
        findings = [f for f in evaluate(config, engine, models.versions.draft).findings if f.detector == "divergence"]
        engine.dispose()
    assert interval is not None
    log.info(
        "engine serves %s: %s; %d pairs: live alpha %.4f, shadow %.4f, live - shadow %+.4f (95%% %+.4f..%+.4f); "
        "counts equal on %d of %d (of the others, %d had text redacted: replayed without the engine's ids); "
        "divergence findings: %s",
        served_head,
        report.describe(),
        len(pairs),
        live,
        shadow,
        live - shadow,
        interval.low,
        interval.high,
        len(pairs) - len(differing),
        len(pairs),
        redacted,
        sorted(f.segment for f in findings) or "none",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("monitor").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    for served_head in ("eagle", "medusa"):
        measure_case(args.models, served_head, args.requests, args.window)


if __name__ == "__main__":
    main()
