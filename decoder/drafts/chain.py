"""Chained one-layer heads: the machinery shared by heads that read (a feature at t, token t+1), run
one decoder layer over the sequence, and feed their own output back as the next feature when they
draft past the verified tokens (DeepSeek's MTP layer, `decoder.drafts.mtp`; EAGLE-style heads have
the same shape).

A `ChainedHead` supplies four pieces: `target_features` (the feature of a verified position),
`step_inputs` (feature + next token -> layer input at given positions), `recycle` (a layer output ->
the feature fed to the next drafted position) and `proposal_logits`; its `block` offers `project`
(rotated queries, keys, values) and `finish` (attention over given keys, then the MLP). From those:

- `chain_outputs`: scored mode and training, every chain start at once. Depth i at query position t
  (chain start s = t-i+1) attends to the depth-1 keys at positions <= s and to the depth-j key at
  position s+j-1 for j = 2..i, which is what exact mode's cache holds when it drafts from s (EAGLE-3's
  "training-time test" mask);
- `ChainSession`: exact mode, a KV cache over verified positions plus a speculative tail dropped at
  each verify step;
- `chain_token_loss`: cross-entropy on the target's distribution at every unrolled depth.
"""

from __future__ import annotations

from typing import Protocol

import torch

from decoder.drafts.base import DraftSession, Proposal, masked_mean, shift_right, soft_cross_entropy
from decoder.sampling import choose_tokens
from decoder.target import TargetOutput


class ChainBlock(Protocol):
    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries, keys and values [batch, heads, time, head_dim] of x at positions [time]."""
        ...

    def finish(
        self, x: torch.Tensor, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """The layer's output: attention of `query` over keys/values where `allowed`, then the MLP."""
        ...


class ChainedHead(Protocol):
    @property
    def block(self) -> ChainBlock: ...

    def target_features(self, verified: TargetOutput) -> torch.Tensor: ...

    def step_inputs(self, features: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Layer inputs [batch, time, hidden] from features and the next tokens [batch, time]."""
        ...

    def recycle(self, output: torch.Tensor) -> torch.Tensor: ...

    def proposal_logits(self, states: torch.Tensor, depth_index: int) -> torch.Tensor: ...


def chain_outputs(
    head: ChainedHead, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int
) -> list[torch.Tensor]:
    """Outputs o^i [batch, time, hidden] for depths 1..depth: o^i at t predicts token t+2 in a chain
    that started from target features at t-i+1 (see the module docstring)."""
    batch, time, _ = features.shape
    next_tokens = torch.zeros_like(input_ids)
    next_tokens[:, :-1] = input_ids[:, 1:]
    positions = torch.arange(time, device=features.device)
    key_valid = attention_mask.bool()[:, None, None, :]
    offset = positions[:, None] - positions[None, :]  # query - key
    inputs = head.step_inputs(features, next_tokens, positions)
    query, key, value = head.block.project(inputs, positions)
    keys, values = [key], [value]
    outputs = [head.block.finish(inputs, query, key, value, (offset >= 0)[None, None] & key_valid)]
    for level in range(2, depth + 1):
        inputs = head.step_inputs(shift_right(head.recycle(outputs[-1]), 1), next_tokens, positions)
        query, key, value = head.block.project(inputs, positions)
        keys.append(key)
        values.append(value)
        blocks = [(offset >= level - 1)[None, None] & key_valid]
        blocks += [(offset == level - j)[None, None].expand(batch, 1, time, time) for j in range(2, level + 1)]
        allowed = torch.cat(blocks, dim=-1)
        outputs.append(head.block.finish(inputs, query, torch.cat(keys, dim=2), torch.cat(values, dim=2), allowed))
    return outputs


def chain_token_loss(
    head: ChainedHead, outputs: list[torch.Tensor], attention_mask: torch.Tensor, target_logits: torch.Tensor
) -> torch.Tensor:
    """Mean over depths of the cross-entropy of each depth's proposals on the target's distribution."""
    mask = attention_mask.bool()
    target_probs = torch.softmax(target_logits[:, 1:], dim=-1)
    losses = []
    for level, output in enumerate(outputs, start=1):
        loss = soft_cross_entropy(head.proposal_logits(output[:, :-1], level - 1), target_probs)
        valid = mask[:, 1:].clone()
        valid[:, : level - 1] = False
        losses.append(masked_mean(loss, valid))
    return torch.stack(losses).mean()


class ChainSession(DraftSession):
    """The head's KV cache over positions with target features, plus a speculative tail."""

    def __init__(self, head: ChainedHead) -> None:
        self.head = head
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.cached_verified = 0
        self.pending: list[torch.Tensor] = []

    def update(self, tokens: torch.Tensor, verified: TargetOutput) -> None:
        if self.keys is not None and self.values is not None:
            self.keys = self.keys[:, :, : self.cached_verified]
            self.values = self.values[:, :, : self.cached_verified]
        self.pending.append(self.head.target_features(verified))

    def _extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """Runs positions [cached, cached + n) through the layer with the cache; returns outputs."""
        cached = 0 if self.keys is None else self.keys.shape[2]
        count = features.shape[0]
        positions = torch.arange(cached, cached + count, device=features.device)
        inputs = self.head.step_inputs(features[None], next_tokens[None], positions)
        query, key, value = self.head.block.project(inputs, positions)
        self.keys = key if self.keys is None else torch.cat([self.keys, key], dim=2)
        self.values = value if self.values is None else torch.cat([self.values, value], dim=2)
        all_positions = torch.arange(cached + count, device=features.device)
        allowed = (positions[:, None] >= all_positions[None, :])[None, None]
        return self.head.block.finish(inputs, query, self.keys, self.values, allowed)[0]

    def propose(
        self, tokens: torch.Tensor, count: int, temperature: float, generator: torch.Generator | None
    ) -> Proposal:
        if count == 0:
            return Proposal.empty(tokens.device)
        features = torch.cat(self.pending)
        self.pending = []
        start = self.cached_verified
        next_tokens = tokens[start + 1 : start + 1 + features.shape[0]].to(features.device)
        state = self._extend(features, next_tokens)[-1:]
        self.cached_verified = start + features.shape[0]
        drafted, distributions = [], []
        for index in range(count):
            token, probs = choose_tokens(self.head.proposal_logits(state, index), temperature, generator)
            drafted.append(token)
            if probs is not None:
                distributions.append(probs)
            if index + 1 < count:
                state = self._extend(self.head.recycle(state), token)[-1:]
        return Proposal(
            tokens=torch.cat(drafted).to(tokens.device),
            probs=torch.cat(distributions) if distributions else None,
        )
