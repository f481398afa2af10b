"""What the chained feature heads (`eagle`, `eagle3`) share: one decoder layer fed with a feature
g_t and the embedding of token t+1, whose output at t is fed back as the next step's feature.

A head of this family says how its layer reads its inputs (`layer_input`: what q/k/v see and
where the residual stream starts) and how its layer computes (`chain_layer`: `project` to rotated
queries/keys/values, `finish` with attention over keys the caller assembles, then the MLP); the
rest is here: the chain over all starts at once with EAGLE-3's training-time-test mask (scored mode
and training), the token loss of each unrolled depth, and the exact-mode session with its KV cache.

Chain mask: depth i at query position t (chain start s = t-i+1) attends to the depth-1 keys at
positions <= s and to the depth-j key at position s+j-1 for j = 2..i, which is what exact mode's
cache holds when it drafts from s.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from decoder.drafts.base import (
    Draft,
    DraftConfigBase,
    DraftInputs,
    DraftSession,
    Proposal,
    masked_mean,
    shift_right,
    soft_cross_entropy,
)
from decoder.samples import same_sequence
from decoder.sampling import choose_tokens
from decoder.target import TargetModel, TargetOutput, rope_theta


class ChainLayerConfig(DraftConfigBase):
    """The decoder layer's sizes and the training depth, common to the chained heads."""

    hidden_size: int = Field(ge=1, description="the target's hidden size")
    vocab_size: int = Field(ge=1, description="the target's vocabulary size")
    num_attention_heads: int = Field(ge=1, description="query heads of the head's decoder layer")
    num_key_value_heads: int = Field(ge=1, description="key/value heads (grouped-query attention)")
    head_dim: int = Field(ge=2, description="dimension per attention head (even, for RoPE)")
    intermediate_size: int = Field(ge=1, description="MLP width of the decoder layer")
    rms_norm_eps: float = Field(default=1e-6, gt=0, description="RMSNorm epsilon")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base")
    train_depth: int = Field(
        default=3, ge=1, le=8, description="chain depth unrolled in training (EAGLE-3's training-time test)"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> Self:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even")
        return self


def layer_sizes(config: Any) -> dict[str, Any]:
    """ChainLayerConfig fields sized like one decoder layer of a transformers config (the target's)."""
    heads = int(config.num_attention_heads)
    return {
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads),
        "intermediate_size": int(config.intermediate_size),
        "rms_norm_eps": float(getattr(config, "rms_norm_eps", 1e-6)),
        "rope_theta": rope_theta(config),
    }


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE (rotate-half form) on x [batch, heads, time, head_dim] at positions [time] or, one
    row of positions per batch row, [batch, time]."""
    half = x.shape[-1] // 2
    inverse = 1.0 / theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(x.device, torch.float32)[..., None] * inverse
    if angles.dim() == 3:
        angles = angles[:, None]  # [batch, 1 (heads), time, half]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[batch, time, heads * head_dim] -> [batch, heads, time, head_dim]."""
    batch, time, _ = x.shape
    return x.view(batch, time, heads, head_dim).transpose(1, 2)


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention where `allowed` [batch|1, 1, q, k]; returns [batch, q, heads * head_dim]."""
    groups = query.shape[1] // keys.shape[1]
    attended = F.scaled_dot_product_attention(
        query,
        keys.repeat_interleave(groups, dim=1),
        values.repeat_interleave(groups, dim=1),
        attn_mask=allowed,
    )
    batch, _, time, _ = attended.shape
    return attended.transpose(1, 2).reshape(batch, time, -1)


def swiglu(x: torch.Tensor, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module) -> torch.Tensor:
    out: torch.Tensor = down_proj(F.silu(gate_proj(x)) * up_proj(x))
    return out


class SwiGLU(nn.Module):
    """The Llama/Qwen MLP: down(silu(gate(x)) * up(x)), bias-free, under the checkpoints' names."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


class Attention(nn.Module):
    """Attention projections under the checkpoints' names."""

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module


class CheckpointLayer(nn.Module):
    """A decoder layer under the checkpoints' names (`self_attn.o_proj`, `post_attention_layernorm`,
    `mlp`): attention added to the residual stream, then the MLP, as the engines' layers finish."""

    self_attn: Attention
    post_attention_layernorm: nn.Module
    mlp: nn.Module

    def finish(
        self,
        residual: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        x = residual + self.self_attn.o_proj(attend(query, keys, values, allowed))
        return x + self.mlp(self.post_attention_layernorm(x))


def rotated_projections(
    x: torch.Tensor,
    projections: tuple[nn.Module, nn.Module, nn.Module],
    config: ChainLayerConfig,
    positions: torch.Tensor,
    head_norms: tuple[nn.Module, nn.Module] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and keys (per-head normed when `head_norms`, then rotated) and values, [batch, heads,
    time, head_dim], of x through the q, k and v projections."""
    q_proj, k_proj, v_proj = projections
    query = split_heads(q_proj(x), config.num_attention_heads, config.head_dim)
    key = split_heads(k_proj(x), config.num_key_value_heads, config.head_dim)
    value = split_heads(v_proj(x), config.num_key_value_heads, config.head_dim)
    if head_norms is not None:
        query, key = head_norms[0](query), head_norms[1](key)
    return rotate(query, positions, config.rope_theta), rotate(key, positions, config.rope_theta), value


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) weights for every nn.Linear inside `module` (a fresh head's initialization)."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            nn.init.normal_(child.weight, std=std)


@dataclass
class LayerInput:
    """What the layer's q/k/v read at each position, and where its residual stream starts."""

    attention_input: torch.Tensor
    residual: torch.Tensor


class ChainLayer(Protocol):
    def project(
        self, attention_input: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries, keys and values [batch, heads, time, head_dim] at positions [time] or [batch, time]."""
        ...

    def finish(
        self,
        residual: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of `query` over `keys`/`values` where `allowed`, added to `residual`, then the MLP."""
        ...


class ChainHead(Draft):
    """A draft whose one decoder layer chains on its own outputs (see the module docstring)."""

    @property
    def chain_config(self) -> ChainLayerConfig:
        assert isinstance(self.config, ChainLayerConfig)
        return self.config

    @property
    @abstractmethod
    def chain_layer(self) -> ChainLayer: ...

    @abstractmethod
    def fused_features(self, verified: TargetOutput) -> torch.Tensor:
        """g_t [.., time, hidden] for positions with target states."""

    @abstractmethod
    def layer_input(self, features: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor) -> LayerInput:
        """The layer's input at `positions` ([time], or [batch, time] per row) with features g_t and
        following tokens t+1."""

    def recycled(self, output: torch.Tensor) -> torch.Tensor:
        """What a chained step reads in place of a feature: the previous step's output (default)."""
        return output

    def training_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits the token loss compares with `training_targets` (default: the proposal logits)."""
        return self.proposal_logits(states, 0)

    def training_targets(self, target_logits: torch.Tensor) -> torch.Tensor:
        """The target's distribution over the vocabulary of `training_logits`."""
        return torch.softmax(target_logits, dim=-1)

    def with_train_depth(self, depth: int) -> Self:
        """Sets the chain depth unrolled in training (weights unchanged; the config records it)."""
        self.config = type(self.config).model_validate({**self.config.model_dump(), "train_depth": depth})
        return self

    def start_session(self, target: TargetModel) -> DraftSession:
        return ChainSession(self)

    def chain_outputs(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        depth: int,
        position_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Outputs o^i [batch, time, hidden] for depths 1..depth: o^i at t predicts token t+2 in a
        chain that started from target features at t-i+1 (see the module docstring). Rows are
        right-padded (`attention_mask`), or packed sequences with `position_ids` (DraftInputs):
        then a chain sees only its own sequence, and the padding closing a row only itself."""
        layer = self.chain_layer
        batch, time, _ = features.shape
        next_tokens = torch.zeros_like(input_ids)
        next_tokens[:, :-1] = input_ids[:, 1:]
        index = torch.arange(time, device=features.device)
        offset = (index[:, None] - index[None, :])[None, None]  # query - key
        if position_ids is None:
            positions = index
            key_valid = attention_mask.bool()[:, None, None, :]
            same = torch.ones(1, 1, time, time, dtype=torch.bool, device=features.device)
        else:
            positions = position_ids.to(features.device)
            key_valid = same = same_sequence(positions)[:, None]
        inputs = self.layer_input(features, next_tokens, positions)
        query, key, value = layer.project(inputs.attention_input, positions)
        keys, values = [key], [value]
        allowed = (offset >= 0) & key_valid
        outputs = [layer.finish(inputs.residual, query, key, value, allowed)]
        for level in range(2, depth + 1):
            inputs = self.layer_input(shift_right(self.recycled(outputs[-1]), 1), next_tokens, positions)
            query, key, value = layer.project(inputs.attention_input, positions)
            keys.append(key)
            values.append(value)
            blocks = [(offset >= level - 1) & key_valid]
            blocks += [((offset == level - j) & same).expand(batch, 1, time, time) for j in range(2, level + 1)]
            outputs.append(
                layer.finish(
                    inputs.residual, query, torch.cat(keys, dim=2), torch.cat(values, dim=2), torch.cat(blocks, dim=-1)
                )
            )
        return outputs

    def teacher_forced_proposals(self, inputs: DraftInputs, depth: int) -> list[torch.Tensor]:
        features = self.fused_features(inputs.target)
        outputs = self.chain_outputs(features, inputs.input_ids, inputs.attention_mask, depth, inputs.position_ids)
        # depth i proposes token t+1 from its output at t-1
        return [shift_right(output, 1) for output in outputs]

    def chain_token_loss(
        self, outputs: list[torch.Tensor], attention_mask: torch.Tensor, target_logits: torch.Tensor
    ) -> torch.Tensor:
        """Mean over depths of the cross-entropy on the target's distribution at each depth's positions."""
        mask = attention_mask.bool()
        target_probs = self.training_targets(target_logits[:, 1:])
        token_losses = []
        for level, output in enumerate(outputs, start=1):
            loss = soft_cross_entropy(self.training_logits(output[:, :-1]), target_probs)
            valid = mask[:, 1:].clone()
            valid[:, : level - 1] = False
            token_losses.append(masked_mean(loss, valid))
        return torch.stack(token_losses).mean()

    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        features = self.fused_features(inputs.target)
        outputs = self.chain_outputs(features, inputs.input_ids, inputs.attention_mask, self.chain_config.train_depth)
        return self.chain_token_loss(outputs, inputs.attention_mask, target_logits)


class ChainSession(DraftSession):
    """The head's KV cache over positions with target features, plus a speculative tail."""

    def __init__(self, head: ChainHead) -> None:
        self.head = head
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.cached_verified = 0
        self.pending: list[torch.Tensor] = []

    def update(self, tokens: torch.Tensor, verified: TargetOutput) -> None:
        if self.keys is not None and self.values is not None:
            self.keys = self.keys[:, :, : self.cached_verified]
            self.values = self.values[:, :, : self.cached_verified]
        self.pending.append(self.head.fused_features(verified))

    def _extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """Runs positions [cached, cached + n) through the layer with the cache; returns outputs."""
        layer = self.head.chain_layer
        cached = 0 if self.keys is None else self.keys.shape[2]
        count = features.shape[0]
        positions = torch.arange(cached, cached + count, device=features.device)
        inputs = self.head.layer_input(features[None], next_tokens[None], positions)
        query, key, value = layer.project(inputs.attention_input, positions)
        self.keys = key if self.keys is None else torch.cat([self.keys, key], dim=2)
        self.values = value if self.values is None else torch.cat([self.values, value], dim=2)
        all_positions = torch.arange(cached + count, device=features.device)
        allowed = (positions[:, None] >= all_positions[None, :])[None, None]
        return layer.finish(inputs.residual, query, self.keys, self.values, allowed)[0]

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
                state = self._extend(self.head.recycled(state), token)[-1:]
        return Proposal(
            tokens=torch.cat(drafted).to(tokens.device),
            probs=torch.cat(distributions) if distributions else None,
        )
