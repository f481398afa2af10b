"""`eagle`: an EAGLE-3-style head (Li et al. 2025).

At position t the head reads a feature g_t and the embedding of token t+1 and predicts token
t+2. For verified positions g_t fuses the target's low, middle and high decoder-layer outputs
(concatenate -> linear to the hidden size); for drafted positions g_t is the head's own output
at t-1, fed back. Input projection -> one transformer decoder layer -> final norm -> the
target's LM head (shared and frozen, as is the token embedding; neither is saved).

Exact mode keeps a KV cache of the head's layer: positions with target features stay, drafted
positions are dropped after each verify step. Scored mode runs the chain for every start at
once: depth i at query position t (chain start s = t-i+1) attends to the depth-1 keys at
positions <= s and to the depth-j key at position s+j-1 for j = 2..i, which is what exact mode's
cache holds when it drafts from s (EAGLE-3's "training-time test" mask). Training uses the same
pass: cross-entropy on the target's distribution at each unrolled depth (`train_depth`) plus a
regression of the head's output at t onto the fused target feature at t+1, the value it stands in
for when fed back. The default unrolls 3 deep, as EAGLE-3 does (retraining sets it from
retrain.training.eagle_train_depth). Measured on the demo reference (bench/eagle_train_depth.py:
same data, steps, schedule and seed; greedy scored mode on held-out English and code prompts with
the target's own continuations), depth 3 against depth 1 raised alpha at every window from 3 to
7 and its mean over windows 1..7 (0.896 vs 0.889 at 120 steps, 0.900 vs 0.884 with seed 1, 0.935
vs 0.917 at 300 steps), and tau from window 3 on; depth 1 kept the better alpha at window 1 (0.918
vs 0.873 at 120 steps). A depth-3 step took 1.6-2.5x the wall time of a depth-1 step on CPU.
"""

from __future__ import annotations

from typing import Any, Literal, cast

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
    register_draft,
    shift_right,
    soft_cross_entropy,
)
from decoder.sampling import choose_tokens
from decoder.target import TargetModel, TargetOutput, rope_theta


class EagleConfig(DraftConfigBase):
    kind: Literal["eagle"] = "eagle"
    hidden_size: int = Field(ge=1, description="the target's hidden size")
    vocab_size: int = Field(ge=1, description="the target's vocabulary size")
    num_attention_heads: int = Field(ge=1, description="query heads of the head's decoder layer")
    num_key_value_heads: int = Field(ge=1, description="key/value heads (grouped-query attention)")
    head_dim: int = Field(ge=2, description="dimension per attention head (even, for RoPE)")
    intermediate_size: int = Field(ge=1, description="MLP width of the decoder layer")
    rms_norm_eps: float = Field(default=1e-6, gt=0, description="RMSNorm epsilon")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base")
    feature_layers: tuple[int, int, int] = Field(
        description="target decoder layers (0-based) whose outputs are fused: low, middle, high"
    )
    train_depth: int = Field(
        default=3, ge=1, le=8, description="chain depth unrolled in training (EAGLE-3's training-time test)"
    )
    regression_weight: float = Field(
        default=0.5, ge=0.0, description="weight of the feature regression next to the token loss"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> EagleConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even")
        return self


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE (rotate-half form) on x [batch, heads, time, head_dim] at positions [time]."""
    half = x.shape[-1] // 2
    inverse = 1.0 / theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inverse[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class DecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP; attention over keys the caller assembles."""

    def __init__(self, config: EagleConfig) -> None:
        super().__init__()
        self.config = config
        hidden, heads, kv_heads, dim = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.attention_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.q_proj = nn.Linear(hidden, heads * dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * dim, bias=False)
        self.o_proj = nn.Linear(heads * dim, hidden, bias=False)
        self.mlp_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.gate_proj = nn.Linear(hidden, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, hidden, bias=False)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, heads, self.config.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries, keys and values of x [batch, time, hidden] at positions [time]."""
        normed = self.attention_norm(x)
        theta = self.config.rope_theta
        query = rotate(self._split(self.q_proj(normed), self.config.num_attention_heads), positions, theta)
        key = rotate(self._split(self.k_proj(normed), self.config.num_key_value_heads), positions, theta)
        value = self._split(self.v_proj(normed), self.config.num_key_value_heads)
        return query, key, value

    def finish(
        self,
        x: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of `query` over `keys`/`values` where `allowed` [batch|1, 1, q, k], then MLP."""
        groups = self.config.num_attention_heads // self.config.num_key_value_heads
        attended = F.scaled_dot_product_attention(
            query,
            keys.repeat_interleave(groups, dim=1),
            values.repeat_interleave(groups, dim=1),
            attn_mask=allowed,
        )
        batch, _, time, _ = attended.shape
        x = x + self.o_proj(attended.transpose(1, 2).reshape(batch, time, -1))
        normed = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    return (num_layers // 4, num_layers // 2, num_layers - 1)


@register_draft
class EagleHead(Draft):
    kind = "eagle"
    config_class = EagleConfig
    objective = "cross-entropy on the target's distribution over an unrolled chain + feature regression"

    def __init__(self, config: EagleConfig) -> None:
        super().__init__(config)
        self.eagle_config = config
        hidden = config.hidden_size
        self.fuse = nn.Linear(3 * hidden, hidden, bias=False)
        self.embedding_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.feature_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.input_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.layer = DecoderLayer(config)
        self.final_norm = RMSNorm(hidden, config.rms_norm_eps)
        self._shared: dict[str, nn.Module] = {}

    @classmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> EagleConfig:
        config = target.config
        heads = int(config.num_attention_heads)
        settings: dict[str, Any] = {
            "hidden_size": target.hidden_size,
            "vocab_size": target.vocab_size,
            "num_attention_heads": heads,
            "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(config, "head_dim", None) or target.hidden_size // heads),
            "intermediate_size": int(config.intermediate_size),
            "rms_norm_eps": float(getattr(config, "rms_norm_eps", 1e-6)),
            "rope_theta": rope_theta(config),
            "feature_layers": default_feature_layers(target.num_layers),
        }
        settings.update(overrides)
        return EagleConfig(**settings)

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> EagleHead:
        if not isinstance(config, EagleConfig):
            raise TypeError(f"eagle needs an EagleConfig, got {type(config).__name__}")
        head = cls(config)
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        return head

    def with_train_depth(self, depth: int) -> EagleHead:
        """Sets the chain depth unrolled in training (weights unchanged; the config records it)."""
        config = EagleConfig.model_validate({**self.eagle_config.model_dump(), "train_depth": depth})
        self.config = self.eagle_config = config
        return self

    def attach(self, target: TargetModel) -> None:
        self._shared = {"embedding": target.input_embeddings(), "lm_head": target.output_embeddings()}

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return tuple(self.eagle_config.feature_layers)

    def _embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not self._shared:
            raise RuntimeError("eagle head is not attached to a target (call attach(target))")
        return self._shared["embedding"](token_ids).to(self.dtype)

    def fused_features(self, verified: TargetOutput) -> torch.Tensor:
        """g_t for verified positions: fuse(concat(low, middle, high))."""
        return self.fuse(torch.cat([f.to(self.dtype) for f in verified.features], dim=-1))

    def layer_inputs(self, features: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding_norm(self._embed(next_tokens))
        return self.input_proj(torch.cat([embedded, self.feature_norm(features)], dim=-1))

    def proposal_logits(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        weight = cast(torch.Tensor, self._shared["lm_head"].weight)
        normed = self.final_norm(states.to(self.dtype))
        return F.linear(normed.to(weight.dtype), weight).float()

    def start_session(self, target: TargetModel) -> DraftSession:
        return EagleSession(self)

    def chain_outputs(
        self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int
    ) -> list[torch.Tensor]:
        """Outputs o^i [batch, time, hidden] for depths 1..depth: o^i at t predicts token t+2 in a
        chain that started from target features at t-i+1 (see the module docstring)."""
        batch, time, _ = features.shape
        device = features.device
        next_tokens = torch.zeros_like(input_ids)
        next_tokens[:, :-1] = input_ids[:, 1:]
        positions = torch.arange(time, device=device)
        key_valid = attention_mask.bool()[:, None, None, :]
        offset = positions[:, None] - positions[None, :]  # query - key
        inputs = self.layer_inputs(features, next_tokens)
        query, key, value = self.layer.project(inputs, positions)
        keys, values = [key], [value]
        allowed = (offset >= 0)[None, None] & key_valid
        outputs = [self.layer.finish(inputs, query, key, value, allowed)]
        for level in range(2, depth + 1):
            inputs = self.layer_inputs(shift_right(outputs[-1], 1), next_tokens)
            query, key, value = self.layer.project(inputs, positions)
            keys.append(key)
            values.append(value)
            blocks = [(offset >= level - 1)[None, None] & key_valid]
            blocks += [(offset == level - j)[None, None].expand(batch, 1, time, time) for j in range(2, level + 1)]
            outputs.append(
                self.layer.finish(
                    inputs, query, torch.cat(keys, dim=2), torch.cat(values, dim=2), torch.cat(blocks, dim=-1)
                )
            )
        return outputs

    def teacher_forced_proposals(self, inputs: DraftInputs, depth: int) -> list[torch.Tensor]:
        features = self.fused_features(inputs.target)
        outputs = self.chain_outputs(features, inputs.input_ids, inputs.attention_mask, depth)
        # depth i proposes token t+1 from its output at t-1
        return [shift_right(output, 1) for output in outputs]

    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        features = self.fused_features(inputs.target)
        outputs = self.chain_outputs(features, inputs.input_ids, inputs.attention_mask, self.eagle_config.train_depth)
        mask = inputs.attention_mask.bool()
        target_probs = torch.softmax(target_logits[:, 1:], dim=-1)
        token_losses = []
        for level, output in enumerate(outputs, start=1):
            loss = soft_cross_entropy(self.proposal_logits(output[:, :-1], level - 1), target_probs)
            valid = mask[:, 1:].clone()
            valid[:, : level - 1] = False
            token_losses.append(masked_mean(loss, valid))
        regression = F.smooth_l1_loss(outputs[0][:, :-1], features[:, 1:].detach(), reduction="none").mean(-1)
        return torch.stack(token_losses).mean() + self.eagle_config.regression_weight * masked_mean(
            regression, mask[:, 1:]
        )


class EagleSession(DraftSession):
    """The head's KV cache over positions with target features, plus a speculative tail."""

    def __init__(self, head: EagleHead) -> None:
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
        cached = 0 if self.keys is None else self.keys.shape[2]
        count = features.shape[0]
        positions = torch.arange(cached, cached + count, device=features.device)
        inputs = self.head.layer_inputs(features[None], next_tokens[None])
        query, key, value = self.head.layer.project(inputs, positions)
        self.keys = key if self.keys is None else torch.cat([self.keys, key], dim=2)
        self.values = value if self.values is None else torch.cat([self.values, value], dim=2)
        all_positions = torch.arange(cached + count, device=features.device)
        allowed = (positions[:, None] >= all_positions[None, :])[None, None]
        return self.head.layer.finish(inputs, query, self.keys, self.values, allowed)[0]

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
                state = self._extend(state, token)[-1:]
        return Proposal(
            tokens=torch.cat(drafted).to(tokens.device),
            probs=torch.cat(distributions) if distributions else None,
        )
