"""Samples as token ids, fitted into the context and padded into batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenizedSample:
    """One piece of traffic: the rendered prompt and the continuation to score."""

    sample_id: str
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class FittedSample:
    """A sample cut to fit the context; `truncated_tokens` counts what was dropped."""

    sample: TokenizedSample
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated_tokens: int

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def fit_to_context(sample: TokenizedSample, max_length: int) -> FittedSample:
    """Cuts a sample to `max_length` tokens: the completion's tail goes first; a prompt that alone
    leaves no room keeps its last half-context (the part the completion depends on most)."""
    prompt, completion = list(sample.prompt_ids), list(sample.completion_ids)
    excess = len(prompt) + len(completion) - max_length
    if excess <= 0:
        return FittedSample(sample, prompt, completion, 0)
    if len(prompt) + 1 < max_length:
        kept = completion[: max_length - len(prompt)]
        return FittedSample(sample, prompt, kept, len(completion) - len(kept))
    prompt_kept = prompt[-max(1, max_length // 2) :]
    completion_kept = completion[: max_length - len(prompt_kept)]
    dropped = len(prompt) - len(prompt_kept) + len(completion) - len(completion_kept)
    return FittedSample(sample, prompt_kept, completion_kept, dropped)


@dataclass
class PaddedBatch:
    """Right-padded token ids with an attention mask and each row's prompt/completion lengths."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    completion_lengths: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.prompt_lengths + self.completion_lengths


def pad_right(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device
) -> PaddedBatch:
    """Batches (prompt, completion) pairs as prompt+completion rows padded on the right."""
    width = max(len(p) + len(c) for p, c in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(sequences):
        tokens = list(prompt) + list(completion)
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
    return PaddedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        prompt_lengths=torch.tensor([len(p) for p, _ in sequences], dtype=torch.long, device=device),
        completion_lengths=torch.tensor([len(c) for _, c in sequences], dtype=torch.long, device=device),
    )
