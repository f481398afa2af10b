"""Samples as token ids, fitted into the context and placed in the rows of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from decoder.batching import PackedLayout

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
class PackedBatch:
    """(prompt, completion) sequences in rows, placed by a `PackedLayout`.

    `attention_mask` is 1 on a sequence's tokens and 0 on the padding that closes a row.
    `position_ids` give each token its position in its own sequence (the padding closing a row
    counts as a sequence of its own, so every position attends somewhere); None when every row
    holds one sequence from position 0, where the column index is the position and the attention
    mask says the rest."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    rows: torch.Tensor
    starts: torch.Tensor
    prompt_lengths: torch.Tensor
    completion_lengths: torch.Tensor


def pack_rows(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    layout: PackedLayout,
    pad_id: int,
    device: torch.device,
) -> PackedBatch:
    """Places (prompt, completion) pairs as prompt+completion runs where `layout` says."""
    if len(sequences) != len(layout.rows):
        raise ValueError(f"{len(sequences)} sequences for a layout of {len(layout.rows)}")
    shape = (layout.num_rows, layout.width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    used = [0] * layout.num_rows
    for (prompt, completion), row, start in zip(sequences, layout.rows, layout.starts, strict=True):
        tokens = list(prompt) + list(completion)
        end = start + len(tokens)
        if end > layout.width or attention_mask[row, start:end].any():
            raise ValueError(f"a sequence of {len(tokens)} tokens does not fit row {row} from {start}")
        input_ids[row, start:end] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, start:end] = 1
        position_ids[row, start:end] = torch.arange(len(tokens))
        used[row] = max(used[row], end)
    for row, end in enumerate(used):
        if int(attention_mask[row, :end].sum()) != end:
            raise ValueError(f"row {row} has a gap between its sequences")
        position_ids[row, end:] = torch.arange(layout.width - end)
    return PackedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=None if layout.one_per_row else position_ids.to(device),
        rows=torch.tensor(layout.rows, dtype=torch.long, device=device),
        starts=torch.tensor(layout.starts, dtype=torch.long, device=device),
        prompt_lengths=torch.tensor([len(p) for p, _ in sequences], dtype=torch.long, device=device),
        completion_lengths=torch.tensor([len(c) for _, c in sequences], dtype=torch.long, device=device),
    )


def same_sequence(position_ids: torch.Tensor) -> torch.Tensor:
    """[rows, time, time]: key position k (last axis) is in the same sequence as query position q;
    a new sequence starts wherever the position is 0."""
    ids = torch.cumsum(position_ids == 0, dim=-1)
    return ids[:, :, None] == ids[:, None, :]


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """[rows, 1, time, time] booleans, True where query q may attend key k: the same sequence
    and k <= q. The 4D mask a transformers model applies as given."""
    time = position_ids.shape[-1]
    index = torch.arange(time, device=position_ids.device)
    causal = index[:, None] >= index[None, :]
    return (same_sequence(position_ids) & causal[None])[:, None]
