"""`medusa`: N heads on the target's final hidden state (Cai et al. 2024).

Head i (1-based) reads the target's hidden state at position t, the one whose logits give token
t+1, and predicts token t+1+i: one residual block (x + SiLU(Wx), W zero-initialised so a fresh
head starts as the target's own LM head) and its own LM head copied from the target's (or, with
`shared_lm_head`, one LM head for all heads; `block_bias` false drops the blocks' biases: the two
variants vLLM's MedusaModel also computes, see decoder.formats.vllm_medusa). A step
drafts from a single hidden state: the one that produced the last emitted token, so a step
proposes at most N tokens. Trained with per-head cross-entropy on the target's distribution
for the token that head predicts.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import nn

from decoder.drafts.base import (
    Draft,
    DraftConfigBase,
    DraftInputs,
    DraftSession,
    Proposal,
    masked_mean,
    register_draft,
    shift_right,
    soft_cross_entropy,
)
from decoder.sampling import choose_tokens
from decoder.target import TargetModel, TargetOutput


class MedusaConfig(DraftConfigBase):
    kind: Literal["medusa"] = "medusa"
    hidden_size: int = Field(ge=1, description="the target's hidden size")
    vocab_size: int = Field(ge=1, description="the target's vocabulary size")
    num_heads: int = Field(default=4, ge=1, le=16, description="heads; head i predicts token i+1 ahead")
    num_residual_blocks: int = Field(default=1, ge=1, le=4, description="residual blocks per head")
    block_bias: bool = Field(default=True, description="the residual blocks' linear layers carry a bias")
    shared_lm_head: bool = Field(
        default=False, description="all heads use one LM head (vLLM's original_lm_head) instead of one each"
    )


class ResidualBlock(nn.Module):
    def __init__(self, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


@register_draft
class MedusaHeads(Draft):
    kind = "medusa"
    config_class = MedusaConfig
    objective = "per-head cross-entropy on the target's distribution"

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__(config)
        self.shared_lm_head = config.shared_lm_head
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *(ResidualBlock(config.hidden_size, config.block_bias) for _ in range(config.num_residual_blocks))
            )
            for _ in range(config.num_heads)
        )
        self.lm_heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            for _ in range(1 if config.shared_lm_head else config.num_heads)
        )

    @classmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> MedusaConfig:
        return MedusaConfig(hidden_size=target.hidden_size, vocab_size=target.vocab_size, **overrides)

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> MedusaHeads:
        if not isinstance(config, MedusaConfig):
            raise TypeError(f"medusa needs a MedusaConfig, got {type(config).__name__}")
        heads = cls(config)
        target_head = target.output_embeddings().weight.detach()
        with torch.no_grad():
            for lm_head in heads.lm_heads:
                weight = cast(torch.Tensor, lm_head.weight)
                weight.copy_(target_head.to(weight.dtype).cpu())
        return heads

    @property
    def max_draft_tokens(self) -> int:
        return len(self.blocks)

    def head_states(self, hidden: torch.Tensor, head_index: int) -> torch.Tensor:
        block: nn.Module = self.blocks[head_index]
        states: torch.Tensor = block(hidden.to(self.dtype))
        return states

    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        head: nn.Module = self.lm_heads[0 if self.shared_lm_head else depth_index]
        logits: torch.Tensor = head(states.to(self.dtype))
        return logits

    def start_session(self, target: TargetModel) -> DraftSession:
        return MedusaSession(self)

    def teacher_forced_proposals(self, inputs: DraftInputs, depth: int) -> list[torch.Tensor]:
        # head i proposes token t+1 from the hidden state at t - i
        hidden = inputs.target.hidden
        return [self.head_states(shift_right(hidden, i + 1), i) for i in range(depth)]

    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        hidden = inputs.target.hidden
        mask = inputs.attention_mask.bool()
        target_probs = torch.softmax(target_logits, dim=-1)
        losses = []
        for index in range(len(self.blocks)):
            ahead = index + 1
            if hidden.shape[1] <= ahead:
                break
            logits = self.proposal_logits(self.head_states(hidden[:, :-ahead], index), index)
            loss = soft_cross_entropy(logits, target_probs[:, ahead:])
            losses.append(masked_mean(loss, mask[:, ahead:]))
        return torch.stack(losses).mean()


class MedusaSession(DraftSession):
    def __init__(self, heads: MedusaHeads) -> None:
        self.heads = heads
        self.last_hidden: torch.Tensor | None = None

    def update(self, tokens: torch.Tensor, verified: TargetOutput) -> None:
        self.last_hidden = verified.hidden[-1:]

    def propose(
        self, tokens: torch.Tensor, count: int, temperature: float, generator: torch.Generator | None
    ) -> Proposal:
        if count == 0 or self.last_hidden is None:
            return Proposal.empty(tokens.device)
        logits = torch.cat(
            [self.heads.proposal_logits(self.heads.head_states(self.last_hidden, i), i) for i in range(count)]
        )
        drafted, probs = choose_tokens(logits, temperature, generator)
        return Proposal(tokens=drafted.to(tokens.device), probs=probs)
