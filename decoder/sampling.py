"""Turning logits into tokens: greedy below a tiny temperature, sampling above it."""

from __future__ import annotations

import torch

GREEDY_BELOW = 1e-5


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) in float32."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens for each row of logits [n, vocab] and, when sampling, the distributions they were
    drawn from (the draft's q in the acceptance rule)."""
    if is_greedy(temperature):
        return logits.argmax(dim=-1), None
    probs = probabilities(logits, temperature)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs
