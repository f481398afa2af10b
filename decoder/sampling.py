"""Turning logits into tokens: greedy below a tiny temperature, sampling above it."""

from __future__ import annotations

import torch

GREEDY_BELOW = 1e-5


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) in float32."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def log_probability_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[token] for each row of logits [n, vocab], in float32 like
    `probabilities` (the distributions exact mode samples from)."""
    scaled = logits.float() / temperature
    chosen = scaled.gather(-1, tokens[:, None].to(scaled.device)).squeeze(-1)
    return chosen - torch.logsumexp(scaled, dim=-1)


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens for each row of logits [n, vocab] and, when sampling, the distributions they were
    drawn from (the draft's q in the acceptance rule)."""
    if is_greedy(temperature):
        return logits.argmax(dim=-1), None
    probs = probabilities(logits, temperature)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs
