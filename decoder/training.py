"""Training a draft against a frozen target: a small, seeded loop over token batches.

The retrain package owns corpora and gates; this is the loop it calls. Each draft kind defines
its loss (`Draft.training_loss`); the loop runs the target once per batch (no gradients),
optimizes the draft with AdamW (linear warmup, cosine decay, gradient clipping) and returns the
loss history. Warm start = pass a loaded draft.

    batches = pack_token_batches(token_streams, sequence_length=128, batch_size=16)
    result = fit_draft(target, draft, batches, FitConfig(steps=300, seed=0))

Checkpoints: with `checkpoint_every`, the loop hands a `FitCheckpoint` (draft and optimizer
state, losses, RNG state, and the run's identity) to `on_checkpoint` every N steps and after the
last one; `resume=` continues from one. A run killed at any moment and resumed from its last
checkpoint ends with the same weights as an uninterrupted run (bit-exact on one device: the batch
order is regenerated from the seed, and the optimizer and RNG states are restored exactly).

    save = lambda checkpoint: checkpoint.save(work / "checkpoint.pt")
    fit_draft(target, draft, batches, config, checkpoint_every=50, on_checkpoint=save)
    fit_draft(target, draft, batches, config, resume=FitCheckpoint.load(work / "checkpoint.pt"))

A checkpoint of another run (other config, draft, target, batches, initial weights or caller
labels) is refused with `CheckpointMismatchError`, which names what differs.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from decoder.drafts import Draft, DraftInputs
from decoder.errors import DecoderError
from decoder.files import write_atomically
from decoder.target import TargetModel

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "specwatch-fit-checkpoint"
CHECKPOINT_VERSION = 1


class FitConfig(BaseModel):
    """Settings of one training run."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=300, ge=1, description="optimizer steps")
    learning_rate: float = Field(default=1e-3, gt=0, le=1, description="peak AdamW learning rate")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay")
    warmup_steps: int = Field(default=20, ge=0, description="linear warmup steps before cosine decay")
    min_learning_rate_ratio: float = Field(
        default=0.1, ge=0, le=1, description="final learning rate as a share of the peak"
    )
    grad_clip: float = Field(default=1.0, gt=0, description="gradient norm clip")
    seed: int = Field(default=0, ge=0, description="seeds batch order and any randomness in the loop")
    log_every: int = Field(default=50, ge=1, description="log the mean loss every this many steps")


class CheckpointError(DecoderError):
    """A training checkpoint that cannot be read (missing, truncated, another format)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of another training run: resuming from it would not continue this one."""


@dataclass
class TokenBatch:
    """Token ids [batch, time] with an attention mask (1 = real token; padding on the right)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class FitResult:
    """Loss per step, training seconds and tokens (both including the part before a resume)."""

    losses: list[float]
    seconds: float
    tokens_seen: int
    config: FitConfig
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int | None = None

    def metadata(self) -> dict[str, Any]:
        """What to record as the draft's training metadata."""
        resumed = {} if self.resumed_from_step is None else {"resumed_from_step": self.resumed_from_step}
        return {
            "steps": self.config.steps,
            "learning_rate": self.config.learning_rate,
            "seed": self.config.seed,
            "tokens_seen": self.tokens_seen,
            "seconds": round(self.seconds, 2),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss": round(sum(self.losses[-10:]) / max(1, len(self.losses[-10:])), 4),
            **resumed,
            **self.extra,
        }


@dataclass
class FitCheckpoint:
    """Everything needed to continue a run after `step` completed optimizer steps.

    Tensors are CPU copies, detached from the live draft and optimizer. `identity` says which run
    this is (see `fit_identity`); only a run with an equal identity may resume from it."""

    step: int
    identity: dict[str, Any]
    draft_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    losses: list[float]
    tokens_seen: int
    seconds: float
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Writes the checkpoint atomically (temp file in the same directory, fsync, os.replace):
        a crash leaves either the previous checkpoint or this one, never a torn file."""
        payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **vars(self)}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return write_atomically(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FitCheckpoint:
        """Reads a checkpoint (tensors and plain data only: no code is unpickled)."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {path}") from None
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file")
        if payload.get("format_version") != CHECKPOINT_VERSION:
            version = payload.get("format_version")
            raise CheckpointError(
                f"{path} has checkpoint format version {version}; this build reads {CHECKPOINT_VERSION}"
            )
        fields = {key: value for key, value in payload.items() if key not in ("format", "format_version")}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise CheckpointError(f"{path} is missing checkpoint fields: {exc}") from None

    def verify(self, identity: Mapping[str, Any]) -> None:
        """Raises CheckpointMismatchError, naming the differing parts, unless this checkpoint
        belongs to the run with `identity`."""
        keys = sorted(set(identity) | set(self.identity))
        differing = [key for key in keys if identity.get(key) != self.identity.get(key)]
        if differing:
            details = "; ".join(
                f"{key}: checkpoint {self.identity.get(key)!r}, run {identity.get(key)!r}" for key in differing
            )
            raise CheckpointMismatchError(
                f"checkpoint at step {self.step} belongs to another training run ({details}); "
                "start without it or resume with the run that wrote it"
            )


def pack_token_batches(
    sequences: Sequence[Sequence[int]], *, sequence_length: int, batch_size: int
) -> list[TokenBatch]:
    """Concatenates token sequences and cuts the stream into full [batch_size, sequence_length]
    batches (no padding). A tail shorter than one batch is dropped."""
    stream = [token for sequence in sequences for token in sequence]
    per_batch = sequence_length * batch_size
    batches = []
    for start in range(0, len(stream) - per_batch + 1, per_batch):
        ids = torch.tensor(stream[start : start + per_batch], dtype=torch.long).view(batch_size, sequence_length)
        batches.append(TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids)))
    return batches


def learning_rate_at(step: int, config: FitConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_learning_rate_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_order(count: int, seed: int) -> Iterator[int]:
    """Endless batch indices: every pass visits each batch once, in an order shuffled by the seed.
    A pure function of (count, seed), so a resumed run regenerates it and skips what was done."""
    order_rng = random.Random(seed)
    while True:
        order = list(range(count))
        order_rng.shuffle(order)
        while order:
            yield order.pop()


def tensors_digest(tensors: Iterator[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes, dtypes and bytes of tensors."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_identity(
    target: TargetModel,
    draft: Draft,
    batches: Sequence[TokenBatch],
    config: FitConfig,
    labels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What makes two runs the same run: the config (not its log interval), the draft's kind,
    config and starting weights, the target, the batches, and the caller's `labels` (JSON values)."""
    batch_tensors = ((str(i), t) for i, b in enumerate(batches) for t in (b.input_ids, b.attention_mask))
    return {
        "config": config.model_dump(exclude={"log_every"}),
        "draft": json.loads(json.dumps(draft.config.model_dump(), default=str)),
        "initial_weights": tensors_digest((name, _as_float32(t)) for name, t in draft.state_dict().items()),
        "target": target.fingerprint,
        "batches": f"{len(batches)}:{tensors_digest(batch_tensors)}",
        "labels": json.loads(json.dumps(dict(labels or {}), sort_keys=True, default=str)),
    }


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def _cpu_copy(value: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor cloned to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(item) for item in value)
    return value


@dataclass
class _Run:
    """The mutable state of one fit_draft call."""

    identity: dict[str, Any]
    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def checkpoint(self, draft: Draft, step: int) -> FitCheckpoint:
        cuda_rng = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
        return FitCheckpoint(
            step=step,
            identity=self.identity,
            draft_state=_cpu_copy(draft.state_dict()),
            optimizer_state=_cpu_copy(self.optimizer.state_dict()),
            losses=list(self.losses),
            tokens_seen=self.tokens_seen,
            seconds=self.seconds,
            torch_rng=torch.get_rng_state(),
            cuda_rng=cuda_rng,
        )

    def restore(self, draft: Draft, checkpoint: FitCheckpoint) -> None:
        draft.load_state_dict(checkpoint.draft_state)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.losses = list(checkpoint.losses)
        self.tokens_seen = checkpoint.tokens_seen
        self.seconds_before = checkpoint.seconds
        torch.set_rng_state(checkpoint.torch_rng)
        if checkpoint.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint.cuda_rng)


def _train_step(
    target: TargetModel, draft: Draft, batch: TokenBatch, optimizer: torch.optim.Optimizer, config: FitConfig, step: int
) -> float:
    input_ids = batch.input_ids.to(target.device)
    attention_mask = batch.attention_mask.to(target.device)
    with torch.no_grad():
        states = target.forward(input_ids, attention_mask=attention_mask, feature_layers=draft.feature_layers)
        target_logits = target.logits(states.hidden)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, config)
    loss = draft.training_loss(DraftInputs(input_ids, attention_mask, states), target_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
    optimizer.step()
    return float(loss.detach())


def fit_draft(
    target: TargetModel,
    draft: Draft,
    batches: Sequence[TokenBatch],
    config: FitConfig,
    *,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[FitCheckpoint], None] | None = None,
    resume: FitCheckpoint | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    labels: Mapping[str, Any] | None = None,
) -> FitResult:
    """Trains `draft` in place for `config.steps` steps over `batches` (cycled, reshuffled each
    pass with the seed). The draft trains in float32 and returns to the target's dtype.

    `on_step(step, steps, loss)` follows each step (1-based). With `checkpoint_every`, the
    checkpoint after every N-th step and after the last goes to `on_checkpoint`. `resume`
    continues from a checkpoint of this same run (CheckpointMismatchError otherwise, raised
    before the draft changes); `labels` add the caller's own identity of the run (e.g. corpus)."""
    if not batches:
        raise ValueError("fit_draft needs at least one token batch")
    if checkpoint_every is not None and (checkpoint_every < 1 or on_checkpoint is None):
        raise ValueError("checkpoint_every needs to be >= 1 and to come with on_checkpoint")
    identity = fit_identity(target, draft, batches, config, labels)
    if resume is not None:
        resume.verify(identity)
    torch.manual_seed(config.seed)
    draft.float().train()
    parameters = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    run = _Run(identity=identity, optimizer=optimizer)
    first_step = 0
    if resume is not None:
        run.restore(draft, resume)
        first_step = resume.step
        log.info("%s training resumes at step %d/%d", draft.kind, first_step, config.steps)
    order = itertools.islice(batch_order(len(batches), config.seed), first_step, None)
    for step in range(first_step, config.steps):
        batch = batches[next(order)]
        run.losses.append(_train_step(target, draft, batch, optimizer, config, step))
        run.tokens_seen += batch.num_tokens
        _after_step(run, draft, step + 1, config, checkpoint_every, on_checkpoint, on_step)
    draft.eval().to(dtype=target.dtype)
    return FitResult(
        losses=run.losses,
        seconds=run.seconds,
        tokens_seen=run.tokens_seen,
        config=config,
        resumed_from_step=None if resume is None else resume.step,
    )


def _after_step(
    run: _Run,
    draft: Draft,
    done: int,
    config: FitConfig,
    checkpoint_every: int | None,
    on_checkpoint: Callable[[FitCheckpoint], None] | None,
    on_step: Callable[[int, int, float], None] | None,
) -> None:
    if done % config.log_every == 0:
        recent = run.losses[-config.log_every :]
        log.info("%s step %d/%d loss %.4f", draft.kind, done, config.steps, sum(recent) / len(recent))
    due = checkpoint_every is not None and (done % checkpoint_every == 0 or done == config.steps)
    if due and on_checkpoint is not None:
        on_checkpoint(run.checkpoint(draft, done))
    if on_step is not None:
        on_step(done, config.steps, run.losses[-1])
