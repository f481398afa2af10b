"""`mtp`: a DeepSeek-V3-style multi-token-prediction layer, computing what vLLM's MTP proposer does.

Verified in vLLM's source (vllm/model_executor/models/deepseek_mtp.py, DeepSeekMultiTokenPredictorLayer,
and the proposer in vllm/v1/spec_decode/llm_base_proposer.py of 0.33.0, eagle.py of 0.11.0):

- at position t the layer reads h_t, the target's final hidden state after its final norm (what the
  target's model returns), and the embedding of token t+1 (the proposer shifts the ids left by one
  and keeps the positions); the embedding is zeroed at position 0;
- `eh_proj(cat(enorm(embed(x_{t+1})), hnorm(h_t)))` -> one decoder layer of the target's family
  (here Llama/Qwen2: pre-norm attention with RoPE at position t, then a SwiGLU MLP; Qwen2's q/k/v
  carry biases) -> o_t, the layer's output before any final norm;
- logits = `shared_head.head(shared_head.norm(o_t))` predict token t+2; vLLM uses the target's
  embedding and LM head (0.33.0 always shares both with the target for MTP);
- chaining: the next drafted position t+1 reads the drafted token's embedding and, in place of
  h_{t+1}, `shared_head.norm(o_t)` in vLLM 0.33.0 (the layer returns (o_t, norm(o_t)); "matches
  SGLang's deepseek_nextn") or o_t itself in vLLM 0.11.0: config field `recycled_state`.

Exact mode keeps the layer's KV cache over verified positions and drops drafted ones after each
verify step; scored mode and training run every chain start at once (`decoder.drafts.chain`).
Training unrolls `train_depth` chained steps with cross-entropy on the target's distribution.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from decoder.drafts.base import DraftConfigBase, register_draft
from decoder.drafts.chain import (
    Attention,
    ChainHead,
    ChainLayerConfig,
    CheckpointLayer,
    LayerInput,
    RMSNorm,
    SwiGLU,
    init_linear_weights,
    layer_sizes,
    rotated_projections,
)
from decoder.target import TargetModel, TargetOutput

SUPPORTED_FAMILIES = ("llama", "qwen2")
"""model_type values whose decoder layer MtpBlock computes."""


class MtpConfig(ChainLayerConfig):
    kind: Literal["mtp"] = "mtp"
    attention_bias: bool = Field(description="q/k/v projections carry a bias (Qwen2: always; Llama: attention_bias)")
    recycled_state: Literal["normed", "pre_norm"] = Field(
        default="normed",
        description="what a chained step reads in place of the target state: shared_head.norm of the previous "
        "output (vLLM 0.33, SGLang) or the output itself (vLLM 0.11)",
    )


def mtp_config_for(model_config: Any, **overrides: Any) -> MtpConfig:
    """An MtpConfig whose decoder layer is the one of a transformers Llama/Qwen2 config (ValueError
    for another family or a Llama MLP with biases)."""
    family = getattr(model_config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"MTP layers of model_type {family!r} are not supported; supported: {SUPPORTED_FAMILIES}")
    if getattr(model_config, "mlp_bias", False):
        raise ValueError("MTP layers with MLP biases (mlp_bias: true) are not supported")
    attention_bias = family == "qwen2" or bool(getattr(model_config, "attention_bias", False))
    settings: dict[str, Any] = layer_sizes(model_config) | {"attention_bias": attention_bias}
    settings.update(overrides)
    return MtpConfig(**settings)


class MtpAttention(Attention):
    def __init__(self, config: MtpConfig) -> None:
        super().__init__()
        hidden, heads, kv_heads, dim = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(hidden, heads * dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(heads * dim, hidden, bias=False)


class MtpBlock(CheckpointLayer):
    """A Llama/Qwen2 decoder layer (the checkpoint's names), with attention over keys the caller assembles."""

    def __init__(self, config: MtpConfig) -> None:
        super().__init__()
        self.config = config
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MtpAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def project(
        self, attention_input: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attention = self.self_attn
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        return rotated_projections(self.input_layernorm(attention_input), projections, self.config, positions)


class SharedHead(nn.Module):
    """`shared_head.norm`; `shared_head.head` is the target's LM head (shared, not saved)."""

    def __init__(self, config: MtpConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@register_draft
class MtpHead(ChainHead):
    kind = "mtp"
    config_class = MtpConfig
    objective = "cross-entropy on the target's distribution over an unrolled chain of the MTP layer"

    def __init__(self, config: MtpConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.enorm = RMSNorm(hidden, config.rms_norm_eps)
        self.hnorm = RMSNorm(hidden, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.mtp_block = MtpBlock(config)
        self.shared_head = SharedHead(config)
        self._shared: dict[str, nn.Module] = {}

    @property
    def mtp_config(self) -> MtpConfig:
        assert isinstance(self.config, MtpConfig)
        return self.config

    @classmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> MtpConfig:
        return mtp_config_for(target.config, **overrides)

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> MtpHead:
        if not isinstance(config, MtpConfig):
            raise TypeError(f"mtp needs an MtpConfig, got {type(config).__name__}")
        head = cls(config)
        init_linear_weights(head)
        for module in head.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        return head

    def attach(self, target: TargetModel) -> None:
        self._shared = {"embedding": target.input_embeddings(), "lm_head": target.output_embeddings()}

    @property
    def chain_layer(self) -> MtpBlock:
        return self.mtp_block

    def fused_features(self, verified: TargetOutput) -> torch.Tensor:
        """h_t: the target's final hidden state (after its final norm)."""
        return verified.hidden.to(self.dtype)

    def _embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not self._shared:
            raise RuntimeError("mtp head is not attached to a target (call attach(target))")
        return self._shared["embedding"](token_ids).to(self.dtype)

    def layer_input(self, features: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor) -> LayerInput:
        embedded = self._embed(next_tokens).masked_fill((positions == 0)[..., None], 0.0)
        x = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(features.to(self.dtype))], dim=-1))
        return LayerInput(attention_input=x, residual=x)

    def recycled(self, output: torch.Tensor) -> torch.Tensor:
        return self.shared_head.norm(output) if self.mtp_config.recycled_state == "normed" else output

    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        weight = cast(torch.Tensor, self._shared["lm_head"].weight)
        normed = self.shared_head.norm(states.to(self.dtype))
        return F.linear(normed.to(weight.dtype), weight)
