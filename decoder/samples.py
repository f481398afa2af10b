"""Samples as token ids, fitted into the context and padded into batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_GENERATION_ROOM = 2
"""Context a kept prompt must leave: the prefill's token and one verify step."""


@dataclass(frozen=True)
class TokenizedSample:
    """One piece of traffic: the rendered prompt and the continuation to score.

    `completion_ids` are the tokens the engine emitted. A natural stop ends with the target's EOS
    (the tokens say how the generation ended, so no flag can contradict them); a completion
    without EOS was cut by a length cap. `max_new_tokens` is the cap the engine generated under
    (the request's max_tokens); None when unknown: the room left in the context. It matters only
    for a completion ending with EOS: near the end the draft proposes up to the cap, past the EOS.
    """

    sample_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be at least 1")

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt fitted into the context and the generation cap that leaves room for."""

    prompt_ids: list[int]
    dropped_tokens: int
    max_new_tokens: int
    """the requested cap, at most the room left in the context"""


def fit_prompt(prompt_ids: Sequence[int], context_length: int, max_new_tokens: int | None = None) -> FittedPrompt:
    """The one context rule of both replay modes. A prompt that leaves room for at least
    MIN_GENERATION_ROOM tokens is kept whole; a longer one keeps its last half-context (the part
    the continuation depends on most). Generation is capped at `max_new_tokens` (None: no cap of
    its own) and at the room left, so prompt and generated tokens never pass the context. The rule
    reads only the prompt, the context and the cap, never a completion: exact mode, which has no
    completion, keeps the same prompt tokens as scored mode."""
    if context_length < MIN_GENERATION_ROOM:
        raise ValueError(f"a context of {context_length} tokens leaves no room to generate")
    prompt = list(prompt_ids)
    if len(prompt) + MIN_GENERATION_ROOM > context_length:
        prompt = prompt[-max(1, context_length // 2) :]
    room = context_length - len(prompt)
    cap = room if max_new_tokens is None else min(max_new_tokens, room)
    return FittedPrompt(prompt, len(prompt_ids) - len(prompt), cap)


@dataclass(frozen=True)
class FittedSample:
    """A sample cut to fit the context; `truncated_tokens` counts what was dropped.

    `ends_with_eos`: the kept completion ends with the target's EOS (a natural stop; a completion
    cut here loses its EOS). `max_new_tokens`: the cap M the generation is simulated under: the
    fitted cap for a natural stop, the kept length for a length-ended completion."""

    sample: TokenizedSample
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated_tokens: int
    ends_with_eos: bool
    max_new_tokens: int

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def _until_eos(completion: Sequence[int], eos_token_id: int | None) -> list[int]:
    """The completion up to and including its first EOS, where a natural stop ends it."""
    tokens = list(completion)
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    return tokens


def fit_to_context(sample: TokenizedSample, max_length: int, eos_token_id: int | None = None) -> FittedSample:
    """Fits a sample into `max_length` tokens with `fit_prompt` and cuts its completion to the cap
    that leaves (and after its first EOS, where generation stops). A completion cut short loses
    its EOS and becomes length-ended, with its kept length as cap."""
    prompt = fit_prompt(sample.prompt_ids, max_length, sample.max_new_tokens)
    completion = _until_eos(sample.completion_ids, eos_token_id)[: prompt.max_new_tokens]
    ends_with_eos = eos_token_id is not None and bool(completion) and completion[-1] == eos_token_id
    return FittedSample(
        sample=sample,
        prompt_ids=prompt.prompt_ids,
        completion_ids=completion,
        truncated_tokens=prompt.dropped_tokens + len(sample.completion_ids) - len(completion),
        ends_with_eos=ends_with_eos,
        max_new_tokens=prompt.max_new_tokens if ends_with_eos else len(completion),
    )


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
