"""`eagle`: an EAGLE-3-style head (Li et al. 2025).

At position t the head reads a feature g_t and the embedding of token t+1 and predicts token
t+2. For verified positions g_t fuses the target's low, middle and high decoder-layer outputs
(concatenate -> linear to the hidden size); for drafted positions g_t is the head's own output
at t-1, fed back. Input projection -> one transformer decoder layer -> final norm -> the
target's LM head (shared and frozen, as is the token embedding; neither is saved).

The layout of this head's layer is not EAGLE-3's (see `eagle3` for that one, which engines load):
the concatenation is projected to H and normed again before q/k/v. Exact mode, scored mode and
the chain mask are the chained heads' (decoder.drafts.chain). Training uses the chain pass:
cross-entropy on the target's distribution at each unrolled depth (`train_depth`) plus a
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
from pydantic import Field
from torch import nn

from decoder.drafts.base import DraftConfigBase, DraftInputs, masked_mean, register_draft
from decoder.drafts.chain import (
    ChainHead,
    ChainLayerConfig,
    LayerInput,
    RMSNorm,
    attend,
    init_linear_weights,
    layer_sizes,
    rotated_projections,
    swiglu,
)
from decoder.target import TargetModel, TargetOutput


class EagleConfig(ChainLayerConfig):
    kind: Literal["eagle"] = "eagle"
    feature_layers: tuple[int, int, int] = Field(
        description="target decoder layers (0-based) whose outputs are fused: low, middle, high"
    )
    regression_weight: float = Field(
        default=0.5, ge=0.0, description="weight of the feature regression next to the token loss"
    )


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

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries, keys and values of x [batch, time, hidden] at positions [time] or [batch, time]."""
        return rotated_projections(
            self.attention_norm(x), (self.q_proj, self.k_proj, self.v_proj), self.config, positions
        )

    def finish(
        self,
        x: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of `query` over `keys`/`values` where `allowed` [batch|1, 1, q, k], then MLP."""
        x = x + self.o_proj(attend(query, keys, values, allowed))
        return x + swiglu(self.mlp_norm(x), self.gate_proj, self.up_proj, self.down_proj)


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    return (num_layers // 4, num_layers // 2, num_layers - 1)


@register_draft
class EagleHead(ChainHead):
    kind = "eagle"
    config_class = EagleConfig
    objective = "cross-entropy on the target's distribution over an unrolled chain + feature regression"

    def __init__(self, config: EagleConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.fuse = nn.Linear(3 * hidden, hidden, bias=False)
        self.embedding_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.feature_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.input_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.layer = DecoderLayer(config)
        self.final_norm = RMSNorm(hidden, config.rms_norm_eps)
        self._shared: dict[str, nn.Module] = {}

    @property
    def eagle_config(self) -> EagleConfig:
        return cast(EagleConfig, self.config)

    @property
    def chain_layer(self) -> DecoderLayer:
        return self.layer

    @classmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> EagleConfig:
        settings = layer_sizes(target.config) | {"feature_layers": default_feature_layers(target.num_layers)}
        settings.update(overrides)
        return EagleConfig(**settings)

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> EagleHead:
        if not isinstance(config, EagleConfig):
            raise TypeError(f"eagle needs an EagleConfig, got {type(config).__name__}")
        head = cls(config)
        init_linear_weights(head)
        return head

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

    def layer_input(self, features: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor) -> LayerInput:
        embedded = self.embedding_norm(self._embed(next_tokens))
        projected = self.input_proj(torch.cat([embedded, self.feature_norm(features)], dim=-1))
        return LayerInput(attention_input=projected, residual=projected)

    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        weight = cast(torch.Tensor, self._shared["lm_head"].weight)
        normed = self.final_norm(states.to(self.dtype))
        return F.linear(normed.to(weight.dtype), weight)

    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        features = self.fused_features(inputs.target)
        outputs = self.chain_outputs(features, inputs.input_ids, inputs.attention_mask, self.eagle_config.train_depth)
        mask = inputs.attention_mask.bool()
        regression = F.smooth_l1_loss(outputs[0][:, :-1], features[:, 1:].detach(), reduction="none").mean(-1)
        return self.chain_token_loss(
            outputs, inputs.attention_mask, target_logits
        ) + self.eagle_config.regression_weight * masked_mean(regression, mask[:, 1:])
