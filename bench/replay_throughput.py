"""Replay pipeline throughput against the decoder's raw scored throughput on the same samples.

    python bench/replay_throughput.py --models specwatch-data/models/reference-demo [--samples 512]

raw: score_batch on samples already tokenized and in memory. pipeline: Replayer.replay_all over a
SQLite store — claim, load, tokenize, score, store results, release claims. Both use the same
batch settings; each is measured twice, interleaved, and the better run of each is reported.
Goal: the pipeline keeps at least 85% of the raw rate.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import delete

from decoder import score_batch
from monitor.base.config import Config, ModelsConfig, ReplayConfig, Secret, StorageConfig
from monitor.base.db import ReplayResult, create_db_engine, upgrade
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.live_models import load_live_models
from monitor.replay.replayer import ClaimedSample, Replayer
from monitor.service.demo_traffic import traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="reference build (target/ and drafts/)")
    parser.add_argument("--draft", default="eagle", help="draft kind directory under drafts/")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    live = load_live_models(
        ModelsConfig(target=args.models / "target", draft=args.models / "drafts" / args.draft, device="auto")
    )
    replay = ReplayConfig(samples_per_round=args.samples, batch_size=args.batch_size, exact_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(storage=StorageConfig(data_dir=Path(tmp)))
        engine = create_db_engine(config.database_url)
        upgrade(engine)
        values = traffic(args.samples, {"en": 0.4, "zh": 0.3, "code": 0.3}, seed=11)
        records = [RawRecord(position=str(i), value=value) for i, value in enumerate(values)]
        IntakePipeline(config, engine, Secret("bench")).ingest("bench", records)
        replayer = Replayer(engine, live.target, live.draft, live.versions, replay)
        claimed: list[ClaimedSample] = replayer.claim(args.samples)
        tokenized = [replayer.tokenize(sample).sample(str(sample.id)) for sample in claimed]
        with engine.begin() as connection:
            connection.execute(delete(ReplayResult.__table__))
            connection.exec_driver_sql("DELETE FROM replay_claims")
        tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in tokenized)
        raw_runs, pipeline_runs = [], []
        for _ in range(2):
            started = time.perf_counter()
            score_batch(
                live.target,
                live.draft,
                tokenized,
                window=replay.window,
                batch_size=replay.batch_size,
                max_batch_tokens=replay.max_batch_tokens,
            )
            raw_runs.append(time.perf_counter() - started)
            started = time.perf_counter()
            report = replayer.replay_all()
            pipeline_runs.append(time.perf_counter() - started)
            assert report.stored == args.samples, report
            with engine.begin() as connection:
                connection.execute(delete(ReplayResult.__table__))
        raw, pipeline = min(raw_runs), min(pipeline_runs)
        print(f"{args.samples} samples, {tokens} target tokens, draft {args.draft}, device {live.target.device}")
        print(f"raw scored:      {args.samples / raw:8.1f} samples/s  {tokens / raw:10,.0f} tokens/s")
        print(f"replay pipeline: {args.samples / pipeline:8.1f} samples/s  {tokens / pipeline:10,.0f} tokens/s")
        print(f"pipeline / raw:  {raw / pipeline:.1%}")


if __name__ == "__main__":
    main()
