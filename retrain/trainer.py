"""Training a candidate draft head on a retrain corpus, resumable after a kill.

    target = load_target(config.models.target, device=config.retrain.training.device)
    result = train_head(target, corpus, kind="eagle", warm_start=live_head_dir,
                        settings=config.retrain.training, work_dir=job_dir / "training")
    save_candidate(result, job_dir / "candidate", corpus)   # the registry takes it from there

Token sequences are each training sample's prompt + completion as replay tokenizes them
(`decoder.exchange`: logged ids first, EOS only after a natural stop), low-alpha segments
repeated (see `Corpus.training_samples`), shuffled with the seed and packed into
[batch_size, sequence_length] batches. The head starts from the live head when `warm_start`
holds one of the same kind, else fresh (seeded). Training settings that belong to a kind apply
to either start: an eagle head unrolls `eagle_train_depth` chain steps (EAGLE-3's
training-time test), and its saved config records that depth. A checkpoint goes to
work_dir/checkpoint.pt every `checkpoint_every` steps and after the last; a later call with the
same target, corpus, kind, warm start and settings resumes from it and ends with the weights an
uninterrupted run would have. A checkpoint of any other run is ignored with a warning and replaced.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoder.drafts import DRAFT_KINDS, Draft, create_draft, kind_objective, load_draft, save_draft
from decoder.drafts.chain import ChainHead
from decoder.errors import DecoderError
from decoder.exchange import tokenize_exchange
from decoder.target import TargetModel
from decoder.training import (
    CheckpointError,
    FitCheckpoint,
    FitConfig,
    FitResult,
    TokenBatch,
    fit_draft,
    pack_token_batches,
)
from monitor.base.config import TrainingConfig
from retrain.corpus import Corpus

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
MAX_WARMUP_STEPS = 20


class TrainingError(Exception):
    """A head cannot be trained as asked (unknown kind, a corpus too small for one sequence)."""


@dataclass
class TrainResult:
    """A trained (not yet saved) candidate head and how it was trained."""

    draft: Draft
    fit: FitResult
    resumed_from_step: int | None
    seconds: float
    kind: str
    corpus_hash: str
    warm_started: bool
    batch_size: int
    sequence_length: int


def fit_config(settings: TrainingConfig) -> FitConfig:
    """The loop's settings: steps, learning rate and seed as configured; warmup is a tenth of the
    steps, at most MAX_WARMUP_STEPS (TrainingConfig has no warmup field)."""
    return FitConfig(
        steps=settings.steps,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        warmup_steps=min(MAX_WARMUP_STEPS, settings.steps // 10),
        log_every=max(1, min(50, settings.steps // 10)),
    )


def training_sequences(target: TargetModel, corpus: Corpus, seed: int) -> list[list[int]]:
    """Prompt + completion per training sample as replay tokenizes it (decoder.exchange: logged
    ids first, EOS only after a natural stop), repeats included, shuffled with the seed; each
    distinct sample is tokenized once."""
    encoded: dict[int, list[int]] = {}
    for sample in corpus.train:
        encoded[sample.sample_id] = tokenize_exchange(target, sample.exchange).sequence
    sequences = [encoded[sample.sample_id] for sample in corpus.training_samples()]
    random.Random(seed).shuffle(sequences)
    return sequences


def token_batches(sequences: list[list[int]], settings: TrainingConfig) -> tuple[list[TokenBatch], int]:
    """Packed batches and the batch size used: the configured one, or as many sequences as the
    corpus fills when it is too small for one full batch."""
    tokens = sum(len(sequence) for sequence in sequences)
    fits = tokens // settings.sequence_length
    if fits == 0:
        raise TrainingError(
            f"the corpus has {tokens} training tokens, fewer than one sequence of {settings.sequence_length}; "
            "collect more samples or lower retrain.training.sequence_length"
        )
    batch_size = min(settings.batch_size, fits)
    if batch_size < settings.batch_size:
        log.warning(
            "corpus of %d tokens fills no batch of %d x %d; training with batches of %d sequences",
            tokens,
            settings.batch_size,
            settings.sequence_length,
            batch_size,
        )
    batches = pack_token_batches(sequences, sequence_length=settings.sequence_length, batch_size=batch_size)
    return batches, batch_size


def initial_draft(
    target: TargetModel, kind: str, warm_start: Path | None, seed: int, overrides: Mapping[str, Any]
) -> tuple[Draft, bool]:
    """The live head at `warm_start` when it loads for this target and is of `kind`, else a fresh
    draft of `kind` initialized from the seed. Returns the draft and whether it was warm-started."""
    if warm_start is not None:
        try:
            live = load_draft(warm_start, target, check_target=False)
        except DecoderError as exc:
            log.warning("cannot warm-start from %s (%s); training a fresh %s head", warm_start, exc, kind)
        else:
            if live.kind == kind:
                return live, True
            log.info("live head at %s is %s, not %s; training a fresh %s head", warm_start, live.kind, kind, kind)
    torch.manual_seed(seed)
    return create_draft(kind, target, **overrides), False


CHAINED_KINDS = ("eagle", "eagle3", "mtp")
"""Kinds whose one layer chains on its own outputs (decoder.drafts.chain.ChainHead)."""

KIND_SETTINGS = {"eagle_train_depth": CHAINED_KINDS}
"""TrainingConfig fields that only some draft kinds use (other kinds ignore them)."""


def apply_kind_settings(draft: Draft, settings: TrainingConfig) -> Draft:
    """Sets the training settings of the draft's kind on a fresh or warm-started draft (weights
    unchanged): a chained head's `train_depth` becomes `settings.eagle_train_depth`."""
    if isinstance(draft, ChainHead):
        draft.with_train_depth(settings.eagle_train_depth)
    return draft


def run_labels(
    kind: str, corpus: Corpus, settings: TrainingConfig, warm_start: Path | None, target: TargetModel
) -> dict[str, Any]:
    """The trainer's part of a checkpoint's identity (the loop adds config, weights and batches);
    another kind's settings are left out, so changing them does not restart this kind's run."""
    ignored = {name for name, owners in KIND_SETTINGS.items() if kind not in owners}
    return {
        "kind": kind,
        "corpus": corpus.content_hash,
        "settings": settings.model_dump(mode="json", exclude={"checkpoint_every", "device", *ignored}),
        "warm_start": None if warm_start is None else str(warm_start),
        "target_dtype": str(target.dtype),
    }


def _load_checkpoint(path: Path) -> FitCheckpoint | None:
    if not path.exists():
        return None
    try:
        return FitCheckpoint.load(path)
    except CheckpointError as exc:
        log.warning("ignoring %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return None


def _fit(
    target: TargetModel,
    draft: Draft,
    batches: list[TokenBatch],
    config: FitConfig,
    work_dir: Path,
    settings: TrainingConfig,
    labels: Mapping[str, Any],
    progress: Callable[[int, int, float], None] | None,
) -> FitResult:
    """fit_draft with checkpoints in work_dir, resuming from a matching one there."""
    path = work_dir / CHECKPOINT_FILE

    def save(checkpoint: FitCheckpoint) -> None:
        checkpoint.save(path)

    def run(resume: FitCheckpoint | None) -> FitResult:
        return fit_draft(
            target,
            draft,
            batches,
            config,
            checkpoint_every=settings.checkpoint_every,
            on_checkpoint=save,
            resume=resume,
            on_step=progress,
            labels=labels,
        )

    resume = _load_checkpoint(path)
    if resume is not None:
        try:
            return run(resume)
        except CheckpointError as exc:
            log.warning("ignoring %s and starting over: %s", path, exc)
            path.unlink(missing_ok=True)
    return run(None)


def train_head(
    target: TargetModel,
    corpus: Corpus,
    *,
    kind: str,
    warm_start: Path | None,
    settings: TrainingConfig,
    work_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains a candidate head of `kind` on the corpus's training side (see the module docstring).

    `progress(step, steps, loss)` follows every step; `overrides` set fields of a fresh draft's
    config (e.g. {"num_heads": 3} for medusa), except those `settings` own (an eagle head's
    train_depth is `settings.eagle_train_depth`, fresh or warm-started). The draft is on the
    target's device, in its dtype."""
    if kind not in DRAFT_KINDS:
        raise TrainingError(f"unknown draft kind {kind!r}; choose one of {sorted(DRAFT_KINDS)}")
    if kind in CHAINED_KINDS and "train_depth" in (overrides or {}):
        raise TrainingError(
            f"a {kind} head's train_depth is a training setting: set retrain.training.eagle_train_depth"
        )
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    batches, batch_size = token_batches(training_sequences(target, corpus, settings.seed), settings)
    draft, warm_started = initial_draft(target, kind, warm_start, settings.seed, overrides or {})
    apply_kind_settings(draft, settings)
    labels = run_labels(kind, corpus, settings, warm_start if warm_started else None, target)
    labels["overrides"] = None if warm_started else dict(overrides or {})
    config = fit_config(settings)
    result = _fit(target, draft, batches, config, work_dir, settings, labels, progress)
    draft.target_fingerprint = target.fingerprint
    draft.tokenizer_fingerprint = target.tokenizer_fingerprint
    log.info(
        "trained %s head %s: %d steps, loss %.4f -> %.4f%s",
        kind,
        "from the live head" if warm_started else "from scratch",
        config.steps,
        result.losses[0],
        result.losses[-1],
        "" if result.resumed_from_step is None else f", resumed at step {result.resumed_from_step}",
    )
    return TrainResult(
        draft=draft,
        fit=result,
        resumed_from_step=result.resumed_from_step,
        seconds=time.perf_counter() - started,
        kind=kind,
        corpus_hash=corpus.content_hash,
        warm_started=warm_started,
        batch_size=batch_size,
        sequence_length=settings.sequence_length,
    )


def save_candidate(result: TrainResult, directory: Path, corpus: Corpus) -> Path:
    """Saves the trained head with its training metadata (a draft directory; see save_draft)."""
    manifest = corpus.manifest
    training = {
        **result.fit.metadata(),
        "kind": result.kind,
        "objective": kind_objective(result.kind),
        "corpus_hash": corpus.content_hash,
        "corpus_train_samples": manifest.train_count,
        "corpus_holdout_samples": manifest.holdout_count,
        "corpus_since": manifest.since.isoformat(),
        "corpus_until": manifest.until.isoformat(),
        "regenerated_responses": manifest.regenerated,
        "warm_started": result.warm_started,
        "resumed_from_step": result.resumed_from_step,
        "batch_size": result.batch_size,
        "sequence_length": result.sequence_length,
        "min_loss": round(min(result.fit.losses), 4),
        "total_seconds": round(result.seconds, 2),
    }
    return save_draft(result.draft, directory, training=training)
