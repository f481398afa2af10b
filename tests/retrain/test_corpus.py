"""The retrain corpus from samples stored by the real intake: window, dedup, split, weights,
manifest and files, regenerated responses."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts, TargetModel
from decoder.exchange import tokenize_exchange
from monitor.base.config import Config, CorpusConfig, DriftConfig, IntakeConfig, SamplingConfig, Secret
from monitor.base.db import Sample, utcnow
from monitor.base.stats import Interval, SegmentStats
from monitor.evaluation.drift import threshold_findings
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.service.demo_traffic import traffic
from retrain import pipeline
from retrain.corpus import (
    Corpus,
    CorpusError,
    allocate_quotas,
    build_corpus,
    content_key,
    group_weight,
    load_corpus,
    segment_weight,
)
from retrain.trainer import training_sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)
THRESHOLD = 0.65


@pytest.fixture
def intake_config(config: Config) -> Config:
    """Every record kept; segments are just the language (lang=en, lang=zh)."""
    return config.model_copy(update={"intake": IntakeConfig(sampling=SamplingConfig(rate=1.0), segment_keys=[])})


def ingest(config: Config, engine: Engine, records: list[dict[str, Any]]) -> None:
    raw = [RawRecord(position=f"line {i}", value=record) for i, record in enumerate(records)]
    report = IntakePipeline(config, engine, Secret("salt")).ingest("test", raw)
    assert report.quarantined == 0, report.problems


def records(count: int, start: datetime = NOW - timedelta(days=2), spacing_s: float = 600.0, **kw: Any) -> list:
    return list(traffic(count, {"en": 0.5, "zh": 0.5}, start=start, spacing_s=spacing_s, **kw))


def build(engine: Engine, out: Path, config: CorpusConfig | None = None, **kw: Any) -> Corpus:
    options: dict[str, Any] = {
        "segment_alpha": {},
        "drift": DriftConfig(threshold=THRESHOLD),
        "seed": 0,
        "now": NOW,
        **kw,
    }
    return build_corpus(engine, config or CorpusConfig(holdout_fraction=0.3), out_dir=out, **options)


def key_of(record_id: str) -> str:
    return hashlib.sha256(f"id:{record_id}".encode()).hexdigest()


def test_the_same_record_under_another_id_counts_once_and_the_oldest_stays(
    intake_config: Config, engine: Engine, tmp_path: Path
) -> None:
    batch = records(20)
    ingest(intake_config, engine, batch)
    before = build(engine, tmp_path / "before")
    again = {**batch[3], "id": "copy-of-3", "timestamp": (NOW - timedelta(hours=1)).isoformat()}
    ingest(intake_config, engine, [again])
    after = build(engine, tmp_path / "after")
    assert after.manifest.duplicates_dropped == before.manifest.duplicates_dropped + 1
    keys = {s.sample_key for s in after.train + after.holdout}
    assert key_of("copy-of-3") not in keys and key_of("demo-3") in keys
    assert after.content_hash == before.content_hash, "the newer copy changes nothing"


def test_train_and_holdout_share_no_sample_and_no_content(
    intake_config: Config, engine: Engine, tmp_path: Path
) -> None:
    ingest(intake_config, engine, records(40))
    corpus = build(engine, tmp_path)
    assert corpus.train and corpus.holdout
    train_keys = {s.sample_key for s in corpus.train}
    holdout_keys = {s.sample_key for s in corpus.holdout}
    assert not train_keys & holdout_keys
    train_content = {content_key(s.messages, s.completion) for s in corpus.train}
    assert not train_content & {content_key(s.messages, s.completion) for s in corpus.holdout}
    assert len(train_content) == len(corpus.train), "no duplicate inside the train side either"
    assert corpus.manifest.available == len(corpus.train) + len(corpus.holdout)


def test_a_low_alpha_segment_weighs_more_in_quota_and_training_stream(
    intake_config: Config, engine: Engine, tmp_path: Path
) -> None:
    ingest(intake_config, engine, records(40))
    settings = CorpusConfig(max_samples=12, low_alpha_weight=3.0, holdout_fraction=0.25)
    full = build(engine, tmp_path / "full", CorpusConfig(holdout_fraction=0.25))
    available = {segment: c.train + c.holdout for segment, c in full.manifest.counts.items()}
    assert {"lang=en", "lang=zh"} <= set(available), "the detector may also call a record code"
    corpus = build(engine, tmp_path / "weighted", settings, segment_alpha={"lang=zh": 0.2, "lang=en": 0.9})
    weights = corpus.manifest.weights
    assert weights["lang=en"] == 1.0 and weights["lang=zh"] == pytest.approx(1 + 2 * 0.45 / 0.65, abs=1e-6)
    kept = {segment: c.train + c.holdout for segment, c in corpus.manifest.counts.items()}
    assert sum(kept.values()) == 12
    assert kept["lang=zh"] / 12 > available["lang=zh"] / sum(available.values())
    stream = corpus.training_samples()
    zh_train = [s for s in corpus.train if s.segment == "lang=zh"]
    assert sum(s.segment == "lang=zh" for s in stream) == 2 * len(zh_train)
    assert len(stream) == len(corpus.train) + len(zh_train), "other segments once"
    assert all(stream[i] != stream[i + 1] for i in range(len(stream) - 1)), "copies are not adjacent"


def test_a_low_roll_up_weighs_up_the_segments_it_holds() -> None:
    """lang=zh at 0.2 across tenants weighs each tenant's Chinese segment, whose own alpha is unknown or
    fine; the higher of a segment's own weight and its roll-ups' wins; all traffic ("*") lends nothing."""
    thresholds = {"tenant=a/lang=zh": 0.65, "tenant=b/lang=zh": 0.65, "tenant=a/lang=en": 0.65, "lang=zh": 0.65}
    thresholds |= {"tenant=a": 0.65}
    alphas = {"lang=zh": 0.2, "tenant=b/lang=zh": 0.7, "tenant=a": 0.6}
    low = segment_weight(0.2, 0.65, 3.0)
    assert group_weight("tenant=a/lang=zh", alphas, thresholds, 3.0) == pytest.approx(low)
    assert group_weight("tenant=b/lang=zh", alphas, thresholds, 3.0) == pytest.approx(low)
    assert group_weight("tenant=a/lang=en", alphas, thresholds, 3.0) == pytest.approx(segment_weight(0.6, 0.65, 3.0))


def test_corpus_weighting_and_alerting_agree_on_segments_below_threshold(
    intake_config: Config, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One threshold policy (DriftConfig.threshold_for): the retrain pipeline's corpus weighs up exactly the
    segments the threshold alert fires on, per-segment overrides included. lang=en at 0.68 is below its
    override 0.7 (above the global 0.65); lang=zh at 0.55 is above its override 0.5 (below the global)."""
    drift = DriftConfig(threshold=0.65, threshold_overrides={"lang=en": 0.7, "lang=zh": 0.5})
    config = intake_config.model_copy(update={"drift": drift})
    alphas = {"lang=en": 0.68, "lang=zh": 0.55}
    ingest(config, engine, records(40, start=utcnow() - timedelta(hours=12)))
    monkeypatch.setattr(pipeline, "live_segment_alphas", lambda *args: alphas)
    job = SimpleNamespace(work_dir=tmp_path)
    corpus = pipeline.prepare_corpus(config, engine, job, "live", target=None)  # type: ignore[arg-type]
    weighted = {segment for segment, weight in corpus.manifest.weights.items() if weight > 1.0}

    stats = [
        SegmentStats(
            segment=segment,
            window="1h",
            start=NOW - timedelta(hours=1),
            end=NOW,
            samples=100,
            tokens=5000,
            counts=AcceptCounts(),
            alpha=alpha,
            alpha_interval=Interval(alpha - 0.005, alpha + 0.005),
            tau=2.0,
            tau_interval=Interval(1.9, 2.1),
            draft_acceptance_rate=alpha,
        )
        for segment, alpha in alphas.items()
    ]
    alerted = {finding.segment for finding in threshold_findings(stats, config.drift)}
    assert weighted == alerted == {"lang=en"}
    assert corpus.manifest.thresholds["lang=en"] == 0.7 and corpus.manifest.thresholds["lang=zh"] == 0.5


def test_weights_and_quotas() -> None:
    assert segment_weight(None, THRESHOLD, 3.0) == 1.0
    assert segment_weight(0.65, THRESHOLD, 3.0) == 1.0
    assert segment_weight(0.0, THRESHOLD, 3.0) == 3.0
    assert segment_weight(0.325, THRESHOLD, 3.0) == pytest.approx(2.0)
    assert allocate_quotas({"a": 5, "b": 5}, {"a": 1.0, "b": 3.0}, 20) == {"a": 5, "b": 5}
    assert allocate_quotas({"a": 30, "b": 30}, {"a": 1.0, "b": 3.0}, 20) == {"a": 5, "b": 15}
    assert allocate_quotas({"a": 30, "b": 4}, {"a": 1.0, "b": 3.0}, 20) == {"a": 16, "b": 4}, "cap, surplus moves"
    assert sum(allocate_quotas({"a": 7, "b": 7, "c": 7}, {"a": 1.0, "b": 1.0, "c": 1.0}, 10).values()) == 10


def test_only_samples_of_the_window_enter(intake_config: Config, engine: Engine, tmp_path: Path) -> None:
    ingest(intake_config, engine, records(12, start=NOW - timedelta(days=44), spacing_s=4 * 86400))
    ingest(intake_config, engine, records(1, start=NOW + timedelta(hours=2), first_index=100))
    corpus = build(engine, tmp_path, CorpusConfig(days=30, holdout_fraction=0.3))
    moments = [s.occurred_at for s in corpus.train + corpus.holdout]
    assert len(moments) == 8, "days -28, -24, ..., 0; not -32 and older, not the future one"
    assert all(NOW - timedelta(days=30) <= moment <= NOW for moment in moments)
    assert corpus.manifest.since == min(moments) and corpus.manifest.until == max(moments) == NOW


def test_manifest_hash_follows_content_and_load_round_trips(
    intake_config: Config, engine: Engine, tmp_path: Path
) -> None:
    ingest(intake_config, engine, records(16))
    first = build(engine, tmp_path / "a")
    assert build(engine, tmp_path / "b").content_hash == first.content_hash, "deterministic"
    assert build(engine, tmp_path / "c", seed=1).content_hash != first.content_hash, "another split"
    loaded = load_corpus(tmp_path / "a")
    assert loaded.manifest == first.manifest and loaded.train == first.train and loaded.holdout == first.holdout
    line = json.loads((tmp_path / "a" / "holdout.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(line) == {
        *("sample_id", "sample_key", "segment", "language", "occurred_at", "messages", "completion"),
        *("raw_prompt", "finish_reason", "max_tokens", "prompt_token_ids", "completion_token_ids"),
    }
    ingest(intake_config, engine, records(1, start=NOW - timedelta(days=1), first_index=50, seed=9))
    assert build(engine, tmp_path / "a").content_hash != first.content_hash, "one more sample"


def test_a_torn_or_partial_corpus_is_refused(intake_config: Config, engine: Engine, tmp_path: Path) -> None:
    ingest(intake_config, engine, records(10))
    build(engine, tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_bytes(train.read_bytes()[:-20])
    with pytest.raises(CorpusError, match="does not match"):
        load_corpus(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CorpusError, match="holds no corpus"):
        load_corpus(tmp_path)


def test_no_samples_is_a_clear_error(intake_config: Config, engine: Engine, tmp_path: Path) -> None:
    ingest(intake_config, engine, records(3, start=NOW - timedelta(days=60)))
    with pytest.raises(CorpusError, match="no samples in the last 30 days"):
        build(engine, tmp_path, CorpusConfig(days=30))
    assert not (tmp_path / "manifest.json").exists()
    ingest(intake_config, engine, records(1, start=NOW - timedelta(days=1), first_index=10))
    with pytest.raises(CorpusError, match=r"1 distinct samples .* too few to fill both train and holdout"):
        build(engine, tmp_path, CorpusConfig(days=30))


def test_regenerated_train_responses_are_the_targets_answers(
    intake_config: Config, engine: Engine, tmp_path: Path, target: TargetModel
) -> None:
    ingest(intake_config, engine, records(8))
    settings = CorpusConfig(regenerate_responses=True, max_new_tokens=6, holdout_fraction=0.3)
    corpus = build(engine, tmp_path, settings, target=target)
    assert corpus.manifest.regenerated and corpus.train and corpus.holdout
    prompts = [target.encode_chat(sample.messages) for sample in corpus.train]
    answers = target.greedy_continuations(prompts, max_new_tokens=6)
    for sample, answer in zip(corpus.train, answers, strict=True):
        answer = [token for token in answer if token != target.eos_token_id]
        assert sample.completion == str(target.tokenizer.decode(answer, skip_special_tokens=True)).rstrip("\ufffd")
    with Session(engine) as session:
        logged = {key: text for key, text in session.execute(select(Sample.sample_key, Sample.completion))}
    assert all(s.completion == logged[s.sample_key] for s in corpus.holdout), "the holdout keeps real traffic"
    assert sum(s.completion != logged[s.sample_key] for s in corpus.train) >= len(corpus.train) // 2


def test_the_corpus_carries_how_each_exchange_was_tokenized_and_training_follows_replays_rule(
    intake_config: Config, engine: Engine, tmp_path: Path, target: TargetModel
) -> None:
    """Raw prompts, finish reasons, caps and the engine's token ids reach the corpus files, and the
    training sequences are what replay scores: logged ids as they are, no EOS after a cut."""
    logged = records(12)
    cut_ids = target.encode_completion(logged[3]["completion"], end_with_eos=False)[:3]
    logged[3].update(finish_reason="length", max_tokens=3, completion_token_ids=cut_ids)  # no PII: ids kept
    logged[1].update(prompt="def add(a, b):")
    del logged[1]["messages"]
    ingest(intake_config, engine, logged)
    built = build(engine, tmp_path, CorpusConfig(holdout_fraction=0.3))
    corpus = load_corpus(tmp_path)
    assert corpus.train == built.train and corpus.holdout == built.holdout
    samples = {sample.sample_key: sample for sample in corpus.train + corpus.holdout}
    cut, raw = samples[key_of(logged[3]["id"])], samples[key_of(logged[1]["id"])]
    assert (cut.finish_reason, cut.max_tokens, cut.completion_token_ids) == ("length", 3, cut_ids)
    assert raw.raw_prompt and not cut.raw_prompt
    assert tokenize_exchange(target, cut.exchange).sequence == [*target.encode_chat(cut.messages), *cut_ids]
    raw_tokens = tokenize_exchange(target, raw.exchange)
    assert raw_tokens.prompt_ids == target.encode_prompt("def add(a, b):")
    assert raw_tokens.completion_ids == target.encode_completion(raw.completion)
    sequences = training_sequences(target, corpus, seed=0)
    assert len(sequences) == len(corpus.training_samples())
    assert all(tokenize_exchange(target, sample.exchange).sequence in sequences for sample in corpus.train)
