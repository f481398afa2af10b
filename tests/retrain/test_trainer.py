"""Training a candidate head on a corpus built by the real intake: the loss falls, a live head
warm-starts it, and a killed run resumes from its checkpoint to the uninterrupted weights; a job's
training progress reaches its row and the command's display."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from decoder import TargetModel, read_manifest
from decoder.drafts import EagleConfig, EagleHead, MedusaConfig
from decoder.training import FitCheckpoint
from monitor.base.config import (
    Config,
    CorpusConfig,
    DriftConfig,
    IntakeConfig,
    SamplingConfig,
    Secret,
    StorageConfig,
    TrainingConfig,
)
from monitor.base.db import create_db_engine, upgrade
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.service.demo_traffic import traffic
from monitor.service.progress import ProgressDisplay
from retrain.corpus import Corpus, build_corpus
from retrain.jobs import create_job, get_job
from retrain.pipeline import TrainingProgress
from retrain.trainer import (
    CHECKPOINT_FILE,
    TrainingError,
    initial_draft,
    save_candidate,
    token_batches,
    train_head,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)
SETTINGS = TrainingConfig(steps=12, learning_rate=3e-3, batch_size=4, sequence_length=32, checkpoint_every=4)
SMALL = {"draft_model": {"hidden_size": 32, "num_layers": 1}, "medusa": {"num_heads": 2}, "eagle": {}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """40 stored exchanges (English and Chinese), Chinese with a low alpha."""
    root = tmp_path_factory.mktemp("trainer-corpus")
    url = f"sqlite:///{root / 'specwatch.db'}"
    config = Config(
        storage=StorageConfig(data_dir=root / "data", database_url=url),
        intake=IntakeConfig(sampling=SamplingConfig(rate=1.0), segment_keys=[]),
    )
    engine = create_db_engine(url)
    upgrade(engine)
    records = traffic(40, {"en": 0.5, "zh": 0.5}, start=NOW - timedelta(days=1), spacing_s=60)
    IntakePipeline(config, engine, Secret("salt")).ingest(
        "test", [RawRecord(f"{i}", value=r) for i, r in enumerate(records)]
    )
    yield build_corpus(
        engine,
        CorpusConfig(holdout_fraction=0.25),
        out_dir=root / "corpus",
        segment_alpha={"lang=zh": 0.3},
        drift=DriftConfig(threshold=0.65),
        seed=0,
        now=NOW,
    )
    engine.dispose()


def test_a_short_run_lowers_the_loss_and_saves_with_its_metadata(
    target: TargetModel, corpus: Corpus, tmp_path: Path
) -> None:
    steps: list[int] = []
    result = train_head(
        target,
        corpus,
        kind="draft_model",
        warm_start=None,
        settings=SETTINGS,
        work_dir=tmp_path / "work",
        progress=lambda step, total, loss: steps.append(step),
        overrides=SMALL["draft_model"],
    )
    losses = result.fit.losses
    assert steps == list(range(1, 13)) and len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert not result.warm_started and result.resumed_from_step is None and result.batch_size == 4
    assert FitCheckpoint.load(tmp_path / "work" / CHECKPOINT_FILE).step == 12
    saved = save_candidate(result, tmp_path / "candidate", corpus)
    training = read_manifest(saved).training
    assert training["kind"] == "draft_model" and training["corpus_hash"] == corpus.content_hash
    assert training["steps"] == 12 and training["resumed_from_step"] is None and "KL" in training["objective"]


def test_warm_start_loads_the_live_head_of_the_same_kind(
    target: TargetModel, corpus: Corpus, reference_models: Path, tmp_path: Path
) -> None:
    live_dir = reference_models / "drafts" / "medusa"
    settings = SETTINGS.model_copy(update={"steps": 2})
    warm = train_head(target, corpus, kind="medusa", warm_start=live_dir, settings=settings, work_dir=tmp_path / "w")
    live_config = read_manifest(live_dir).draft
    assert isinstance(live_config, MedusaConfig)
    fresh = train_head(
        target,
        corpus,
        kind="medusa",
        warm_start=None,
        settings=settings,
        work_dir=tmp_path / "f",
        overrides={"num_heads": live_config.num_heads, "num_residual_blocks": live_config.num_residual_blocks},
    )
    assert warm.warm_started and not fresh.warm_started
    assert warm.draft.config == live_config
    assert warm.fit.losses[0] < fresh.fit.losses[0], "the live head already predicts this traffic"
    _, warm_started = initial_draft(target, "eagle", live_dir, seed=0, overrides={})
    assert not warm_started, "a live head of another kind is not a warm start"


class Killed(Exception):
    pass


def kill_at(step: int):
    def progress(done: int, total: int, loss: float) -> None:
        if done == step:
            raise Killed

    return progress


def test_a_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_weights(
    target: TargetModel, corpus: Corpus, tmp_path: Path
) -> None:
    settings = SETTINGS.model_copy(update={"steps": 8, "checkpoint_every": 3})
    options = {"kind": "medusa", "warm_start": None, "settings": settings, "overrides": SMALL["medusa"]}
    full = train_head(target, corpus, work_dir=tmp_path / "full", **options)  # type: ignore[arg-type]
    with pytest.raises(Killed):
        train_head(target, corpus, work_dir=tmp_path / "job", progress=kill_at(5), **options)  # type: ignore[arg-type]
    assert FitCheckpoint.load(tmp_path / "job" / CHECKPOINT_FILE).step == 3
    resumed = train_head(target, corpus, work_dir=tmp_path / "job", **options)  # type: ignore[arg-type]
    assert resumed.resumed_from_step == 3 and full.resumed_from_step is None
    assert resumed.fit.losses == full.fit.losses
    expected = full.draft.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in resumed.draft.state_dict().items())


def killed_after(step: int, progress: Callable[[int, int, float], None]) -> Callable[[int, int, float], None]:
    def report(done: int, total: int, loss: float) -> None:
        progress(done, total, loss)
        if done == step:
            raise Killed

    return report


def test_a_jobs_training_progress_reaches_its_row_and_the_display_resumed_too(
    target: TargetModel, corpus: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    job = create_job(engine, trigger="manual", reason="test", kind="medusa", work_root=tmp_path)
    settings = SETTINGS.model_copy(update={"steps": 8, "checkpoint_every": 3})
    options = {"kind": "medusa", "warm_start": None, "settings": settings, "overrides": SMALL["medusa"]}
    display = ProgressDisplay(io.StringIO(), every_s=0)
    with caplog.at_level(logging.INFO, logger="monitor.service.progress"):
        with pytest.raises(Killed):
            first = killed_after(5, TrainingProgress(engine, job.id, display))
            train_head(target, corpus, work_dir=job.work_dir, progress=first, **options)  # type: ignore[arg-type]
        display.finish()
        stored = get_job(engine, job.id).progress  # type: ignore[union-attr]
        assert (stored["stage"], stored["first_step"], stored["steps"]) == ("train", 1, 8) and stored["step"] <= 5
        resumed = TrainingProgress(engine, job.id, display)
        train_head(target, corpus, work_dir=job.work_dir, progress=resumed, **options)  # type: ignore[arg-type]
        display.finish()
    stored = get_job(engine, job.id).progress  # type: ignore[union-attr]
    assert (stored["step"], stored["steps"], stored["first_step"]) == (8, 8, 4), "resumed after checkpoint 3"
    assert datetime.fromisoformat(stored["train_started_at"]) <= datetime.fromisoformat(stored["updated_at"])
    lines = [record.getMessage() for record in caplog.records if record.name == "monitor.service.progress"]
    prefix = f"retrain job {job.id}: "
    assert lines[0].startswith(f"{prefix}1/8 steps (12%), 00:00 elapsed, ETA ? [loss ")  # no rate before a step
    assert all(re.search(r"ETA \d\d:\d\d \[loss \d", line) for line in lines[1:5]), lines
    assert re.fullmatch(rf"{prefix}5/8 steps \(62%\) stopped after \d\d:\d\d", lines[5]), lines
    assert lines[6].startswith(f"{prefix}4/8 steps (50%), 00:00 elapsed, ETA ? [loss ")
    assert all(re.search(r"ETA \d\d:\d\d \[loss \d", line) for line in lines[7:10]), lines
    assert re.fullmatch(rf"{prefix}8/8 steps \(100%\) in \d\d:\d\d", lines[-1]), lines
    engine.dispose()


def test_a_checkpoint_of_other_settings_is_ignored_and_replaced(
    target: TargetModel, corpus: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SETTINGS.model_copy(update={"steps": 3, "checkpoint_every": 2})
    options = {"kind": "medusa", "warm_start": None, "work_dir": tmp_path, "overrides": SMALL["medusa"]}
    train_head(target, corpus, settings=settings, **options)  # type: ignore[arg-type]
    other = settings.model_copy(update={"learning_rate": 1e-3})
    with caplog.at_level(logging.WARNING, logger="retrain.trainer"):
        result = train_head(target, corpus, settings=other, **options)  # type: ignore[arg-type]
    assert result.resumed_from_step is None and len(result.fit.losses) == 3
    assert "starting over" in caplog.text and "learning_rate" in caplog.text
    labels = FitCheckpoint.load(tmp_path / CHECKPOINT_FILE).identity["labels"]
    assert labels["settings"]["learning_rate"] == 1e-3


def test_a_corpus_too_small_for_one_batch_shrinks_it_or_is_refused() -> None:
    batches, batch_size = token_batches([[5] * 70], SETTINGS)
    assert batch_size == 2 and len(batches) == 1 and batches[0].input_ids.shape == (2, 32)
    with pytest.raises(TrainingError, match="fewer than one sequence of 32"):
        token_batches([[5] * 20, [6] * 11], SETTINGS)


def test_an_unknown_kind_is_refused(target: TargetModel, corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unknown draft kind"):
        train_head(target, corpus, kind="live", warm_start=None, settings=SETTINGS, work_dir=tmp_path)


@pytest.fixture
def chain_depths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The depth of every chain the eagle head unrolls in training (the scored pass aside)."""
    depths: list[int] = []
    unrolled = EagleHead.chain_outputs

    def spy(self: EagleHead, *args: object, **kwargs: object) -> list[torch.Tensor]:
        outputs = unrolled(self, *args, **kwargs)  # type: ignore[arg-type]
        depths.append(len(outputs))
        return outputs

    monkeypatch.setattr(EagleHead, "chain_outputs", spy)
    return depths


def test_eagle_trains_at_the_configured_depth_fresh_and_warm_started(
    target: TargetModel, corpus: Corpus, reference_models: Path, tmp_path: Path, chain_depths: list[int]
) -> None:
    live_dir = reference_models / "drafts" / "eagle"
    live_config = read_manifest(live_dir).draft
    assert isinstance(live_config, EagleConfig) and live_config.train_depth == 1
    settings = SETTINGS.model_copy(update={"steps": 2})
    runs = {}
    for depth in (1, 3):
        for start in ("fresh", "warm"):
            chain_depths.clear()
            runs[depth, start] = train_head(
                target,
                corpus,
                kind="eagle",
                warm_start=live_dir if start == "warm" else None,
                settings=settings.model_copy(update={"eagle_train_depth": depth}),
                work_dir=tmp_path / f"{start}-{depth}",
            )
            assert chain_depths == [depth, depth], f"{start} head at depth {depth} unrolled {chain_depths}"
    for (depth, start), result in runs.items():
        assert result.warm_started == (start == "warm")
        config = result.draft.config
        assert isinstance(config, EagleConfig) and config.train_depth == depth
        saved = read_manifest(save_candidate(result, tmp_path / f"candidate-{start}-{depth}", corpus)).draft
        assert isinstance(saved, EagleConfig) and saved.train_depth == depth
    warm = runs[3, "warm"].draft.config
    assert warm.model_dump() == {**live_config.model_dump(), "train_depth": 3}, "warm start keeps the live architecture"
    for start in ("fresh", "warm"):
        assert runs[3, start].fit.losses[0] != runs[1, start].fit.losses[0], "same seed and weights, deeper loss"
    with pytest.raises(TrainingError, match="eagle_train_depth"):
        train_head(
            target,
            corpus,
            kind="eagle",
            warm_start=None,
            settings=settings,
            work_dir=tmp_path,
            overrides={"train_depth": 2},
        )


def test_a_checkpoint_of_another_eagle_depth_is_not_resumed(
    target: TargetModel, corpus: Corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deep = SETTINGS.model_copy(update={"steps": 4, "checkpoint_every": 2, "eagle_train_depth": 3})
    with pytest.raises(Killed):
        train_head(target, corpus, kind="eagle", warm_start=None, settings=deep, work_dir=tmp_path, progress=kill_at(3))
    checkpoint = tmp_path / CHECKPOINT_FILE
    assert FitCheckpoint.load(checkpoint).step == 2
    kept = checkpoint.read_bytes()
    shallow = deep.model_copy(update={"eagle_train_depth": 1})
    with caplog.at_level(logging.WARNING, logger="retrain.trainer"):
        other = train_head(target, corpus, kind="eagle", warm_start=None, settings=shallow, work_dir=tmp_path)
    assert other.resumed_from_step is None and len(other.fit.losses) == 4
    assert "starting over" in caplog.text and "eagle_train_depth" in caplog.text
    labels = FitCheckpoint.load(checkpoint).identity["labels"]
    assert labels["settings"]["eagle_train_depth"] == 1
    checkpoint.write_bytes(kept)
    same = train_head(target, corpus, kind="eagle", warm_start=None, settings=deep, work_dir=tmp_path)
    assert same.resumed_from_step == 2, "the same depth resumes"
    medusa = {"kind": "medusa", "warm_start": None, "work_dir": tmp_path / "medusa", "overrides": SMALL["medusa"]}
    train_head(target, corpus, settings=shallow, **medusa)  # type: ignore[arg-type]
    ignored = train_head(target, corpus, settings=deep, **medusa)  # type: ignore[arg-type]
    assert ignored.resumed_from_step == 4, "another kind's checkpoint does not depend on eagle_train_depth"
