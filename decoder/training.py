"""Training a draft against a frozen target: a small, seeded loop over token batches.

The retrain package owns corpora, checkpoints and gates; this is the loop it calls. Each draft
kind defines its loss (`Draft.training_loss`); the loop runs the target once per batch (no
gradients), optimizes the draft with AdamW (linear warmup, cosine decay, gradient clipping) and
returns the loss history. Warm start = pass a loaded draft.

    batches = pack_token_batches(token_streams, sequence_length=128, batch_size=16)
    result = fit_draft(target, draft, batches, FitConfig(steps=300, seed=0))
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from decoder.drafts import Draft, DraftInputs
from decoder.target import TargetModel

log = logging.getLogger(__name__)


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
    losses: list[float]
    seconds: float
    tokens_seen: int
    config: FitConfig
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What to record as the draft's training metadata."""
        return {
            "steps": self.config.steps,
            "learning_rate": self.config.learning_rate,
            "seed": self.config.seed,
            "tokens_seen": self.tokens_seen,
            "seconds": round(self.seconds, 2),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss": round(sum(self.losses[-10:]) / max(1, len(self.losses[-10:])), 4),
            **self.extra,
        }


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


def fit_draft(target: TargetModel, draft: Draft, batches: Sequence[TokenBatch], config: FitConfig) -> FitResult:
    """Trains `draft` in place for `config.steps` steps over `batches` (cycled, reshuffled each
    pass with the seed). The draft trains in float32 and returns to the target's dtype."""
    if not batches:
        raise ValueError("fit_draft needs at least one token batch")
    torch.manual_seed(config.seed)
    order_rng = random.Random(config.seed)
    draft.float().train()
    parameters = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    tokens_seen = 0
    order: list[int] = []
    started = time.perf_counter()
    for step in range(config.steps):
        if not order:
            order = list(range(len(batches)))
            order_rng.shuffle(order)
        batch = batches[order.pop()]
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
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        tokens_seen += batch.num_tokens
        if (step + 1) % config.log_every == 0:
            recent = losses[-config.log_every :]
            log.info("%s step %d/%d loss %.4f", draft.kind, step + 1, config.steps, sum(recent) / len(recent))
    draft.eval().to(dtype=target.dtype)
    return FitResult(losses=losses, seconds=time.perf_counter() - started, tokens_seen=tokens_seen, config=config)
