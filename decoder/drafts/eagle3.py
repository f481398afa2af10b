"""`eagle3`: the EAGLE-3 head as the serving engines compute it (Li et al. 2025; vLLM
`llama_eagle3.py`, speculators `models/eagle3`, SpecForge `llama3_eagle.py`).

At position t the head reads a feature g_t and the embedding e of token t+1 and predicts token
t+2. For verified positions g_t = fc(concat of three target hidden states); for drafted positions
it is the head's own pre-norm output at t-1, fed back. Its one decoder layer:

    x = cat([input_layernorm(e), hidden_norm(g)])            (2H wide, embedding first)
    residual = hidden_norm(g) if norm_before_residual else g
    h = residual + o_proj(attention(q/k/v_proj(x)))          (qwen3 style: q_norm/k_norm per head)
    out = h + mlp(post_attention_layernorm(h))               (SwiGLU)
    logits = lm_head(norm(out))                              (draft vocabulary)

With a reduced draft vocabulary, `d2t` maps draft id i to target id i + d2t[i] and `t2d` marks the
target ids the draft can propose; proposals scatter the draft logits into a -inf tensor over the
target vocabulary, so every replay mode reads target ids. The token embedding is the target's
(shared, not saved, as vLLM does when a checkpoint has none) unless `own_embedding`.

Module and tensor names are the speculators checkpoint's (`fc`, `layers.0.*`, `norm`, `lm_head`,
`embed_tokens`, `d2t`, `t2d`), so the native save and the engine export differ only in config.json
(decoder.formats). Aux-layer ids use vLLM's numbering: id i is Hugging Face `hidden_states[i]`, the
output of decoder layer i-1 (id 0: the embedding output). Default ids for an N-layer target
(`default_aux_layer_ids`): vLLM's own default (2, N//2, N-3) when those are distinct and within
[1, N-1], the ids vLLM captures; else (1, N//2, N-1) when N >= 4; a target with fewer layers has no
three distinct ids vLLM captures, so it gets the three highest ids speculators accepts
(ids within [0, N]): (0, 1, 2) for N = 2, (1, 2, 3) for N = 3; a 1-layer target has only two hidden
states, so (0, 1, 1), which the kind computes and no engine format holds (exports refuse repeated ids).

Training unrolls the chain `train_depth` deep (EAGLE-3's training-time test, decoder.drafts.chain)
with cross-entropy on the target's distribution over the draft vocabulary at every depth.
"""

from __future__ import annotations

from typing import Any, Literal, Self, cast

import torch
from pydantic import Field, model_validator
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
from decoder.sampling import log_probability_of
from decoder.target import TargetModel, TargetOutput

LayerStyle = Literal["llama", "qwen3"]


class Eagle3Config(ChainLayerConfig):
    kind: Literal["eagle3"] = "eagle3"
    aux_layer_ids: tuple[int, int, int] = Field(
        description="target hidden states fused by fc, vLLM numbering: id i = hidden_states[i], the output of "
        "decoder layer i-1 (0: the embedding output)"
    )
    target_hidden_size: int | None = Field(
        default=None, ge=1, description="hidden size of the target's states (None: hidden_size)"
    )
    draft_vocab_size: int = Field(ge=1, description="tokens the head can propose (vocab_size: all)")
    norm_before_residual: bool = Field(
        default=False, description="the layer's residual stream starts at hidden_norm(g) instead of g"
    )
    layer_style: LayerStyle = Field(
        default="llama", description="llama, or qwen3 (per-head RMSNorm on q and k before RoPE)"
    )
    own_embedding: bool = Field(
        default=False, description="the head has its own token embedding (else it shares the target's)"
    )

    @model_validator(mode="after")
    def _sizes_fit(self) -> Self:
        if self.draft_vocab_size > self.vocab_size:
            raise ValueError("draft_vocab_size cannot exceed vocab_size")
        if min(self.aux_layer_ids) < 0:
            raise ValueError(f"aux_layer_ids must be ids >= 0, got {self.aux_layer_ids}")
        return self

    @property
    def feature_size(self) -> int:
        return self.target_hidden_size or self.hidden_size


def default_aux_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """Aux-layer ids for an N-layer target (the rule is in the module docstring)."""
    vllm_default = (2, num_layers // 2, num_layers - 3)
    if vllm_default[0] < vllm_default[1] < vllm_default[2] <= num_layers - 1:
        return vllm_default
    if num_layers >= 4:
        return (1, num_layers // 2, num_layers - 1)
    if num_layers >= 2:
        return (num_layers - 2, num_layers - 1, num_layers)
    return (0, 1, 1)


class Eagle3Attention(Attention):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.config = config
        width, heads, kv_heads, dim = (
            2 * config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(width, heads * dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * dim, bias=False)
        self.o_proj = nn.Linear(heads * dim, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(dim, config.rms_norm_eps) if config.layer_style == "qwen3" else None
        self.k_norm = RMSNorm(dim, config.rms_norm_eps) if config.layer_style == "qwen3" else None

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        norms = (self.q_norm, self.k_norm) if self.q_norm is not None and self.k_norm is not None else None
        return rotated_projections(x, (self.q_proj, self.k_proj, self.v_proj), self.config, positions, norms)


class Eagle3Layer(CheckpointLayer):
    """EAGLE-3's first decoder layer: q/k/v read the 2H concatenation (module docstring)."""

    self_attn: Eagle3Attention

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.norm_before_residual = config.norm_before_residual
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Eagle3Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def layer_input(self, embeds: torch.Tensor, features: torch.Tensor) -> LayerInput:
        hidden = self.hidden_norm(features)
        return LayerInput(
            attention_input=torch.cat([self.input_layernorm(embeds), hidden], dim=-1),
            residual=hidden if self.norm_before_residual else features,
        )

    def project(
        self, attention_input: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.self_attn.project(attention_input, positions)


@register_draft
class Eagle3Head(ChainHead):
    kind = "eagle3"
    config_class = Eagle3Config
    objective = "cross-entropy on the target's distribution over the draft vocabulary, over an unrolled chain"

    d2t: torch.Tensor
    t2d: torch.Tensor

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.fc = nn.Linear(3 * config.feature_size, hidden, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(config)])
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden) if config.own_embedding else None
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.arange(config.vocab_size) < config.draft_vocab_size)
        self._shared: dict[str, nn.Module] = {}

    @property
    def eagle3_config(self) -> Eagle3Config:
        return cast(Eagle3Config, self.config)

    @property
    def chain_layer(self) -> Eagle3Layer:
        return cast(Eagle3Layer, self.layers[0])

    @classmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> Eagle3Config:
        settings = layer_sizes(target.config) | {
            "aux_layer_ids": default_aux_layer_ids(target.num_layers),
            "draft_vocab_size": target.vocab_size,
        }
        settings.update(overrides)
        return Eagle3Config(**settings)

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> Eagle3Head:
        """Random layer weights; lm_head rows (and embed_tokens when own) copied from the target.
        A reduced draft vocabulary starts as the lowest ids (`use_draft_vocabulary` picks others)."""
        if not isinstance(config, Eagle3Config):
            raise TypeError(f"eagle3 needs an Eagle3Config, got {type(config).__name__}")
        head = cls(config)
        init_linear_weights(head)
        head.use_draft_vocabulary(torch.arange(config.draft_vocab_size), target)
        if head.embed_tokens is not None:
            with torch.no_grad():
                head.embed_tokens.weight.copy_(target.input_embeddings().weight.detach().to("cpu", torch.float32))
        return head

    @torch.no_grad()
    def use_draft_vocabulary(self, token_ids: torch.Tensor, target: TargetModel) -> None:
        """Makes the target ids `token_ids` the draft vocabulary; lm_head rows become the target's."""
        ids = torch.unique(token_ids.to(torch.int64).cpu())  # sorted, as d2t offsets assume
        if ids.numel() != self.eagle3_config.draft_vocab_size:
            raise ValueError(f"{ids.numel()} distinct ids for a draft vocabulary of {self.d2t.numel()}")
        device = self.d2t.device
        self.d2t.copy_((ids - torch.arange(ids.numel())).to(device))
        self.t2d.zero_()
        self.t2d[ids.to(device)] = True
        target_head = target.output_embeddings().weight.detach()
        self.lm_head.weight.copy_(target_head[ids.to(target_head.device)].to(self.lm_head.weight))

    def attach(self, target: TargetModel) -> None:
        if self.embed_tokens is not None:
            return
        embedding = target.input_embeddings()
        if embedding.weight.shape != (self.eagle3_config.vocab_size, self.eagle3_config.hidden_size):
            raise ValueError(
                f"the head shares the target's embedding, which is {tuple(embedding.weight.shape)}; the head "
                f"needs ({self.eagle3_config.vocab_size}, {self.eagle3_config.hidden_size})"
            )
        self._shared = {"embedding": embedding}

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return tuple(layer_id - 1 for layer_id in self.eagle3_config.aux_layer_ids)

    @property
    def draft_token_ids(self) -> torch.Tensor:
        """The target id of each draft-vocabulary entry."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    @property
    def full_vocabulary(self) -> bool:
        return self.eagle3_config.draft_vocab_size == self.eagle3_config.vocab_size

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens if self.embed_tokens is not None else self._shared.get("embedding")
        if embedding is None:
            raise RuntimeError("eagle3 head shares the target's embedding but is not attached (call attach(target))")
        embedded: torch.Tensor = embedding(token_ids)
        return embedded.to(self.dtype)

    def fused_features(self, verified: TargetOutput) -> torch.Tensor:
        fused: torch.Tensor = self.fc(torch.cat([f.to(self.dtype) for f in verified.features], dim=-1))
        return fused

    def layer_input(self, features: torch.Tensor, next_tokens: torch.Tensor, positions: torch.Tensor) -> LayerInput:
        return self.chain_layer.layer_input(self.embed(next_tokens), features)

    def draft_scores(self, states: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary in the head's dtype."""
        scores: torch.Tensor = self.lm_head(self.norm(states.to(self.dtype)))
        return scores

    def draft_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the draft vocabulary."""
        return self.draft_scores(states).float()

    def forward(self, aux_states: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [batch, time, draft_vocab] of one causal pass (positions 0..time-1):
        at t the layer reads fc(aux_states[:, t]) (the concatenated aux hidden states) and the
        embedding of token_ids[:, t]. This is what an engine computes for a step's first token."""
        time = token_ids.shape[1]
        positions = torch.arange(time, device=token_ids.device)
        inputs = self.layer_input(self.fc(aux_states.to(self.dtype)), token_ids, positions)
        causal = (positions[:, None] >= positions[None, :])[None, None]
        query, key, value = self.chain_layer.project(inputs.attention_input, positions)
        return self.draft_logits(self.chain_layer.finish(inputs.residual, query, key, value, causal))

    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        scores = self.draft_scores(states)
        if self.full_vocabulary:
            return scores
        full = scores.new_full((*scores.shape[:-1], self.eagle3_config.vocab_size), float("-inf"))
        return full.index_copy(-1, self.draft_token_ids.to(scores.device), scores)

    def proposal_tokens(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        """The argmax over the draft vocabulary, as target ids: the same token as the argmax over
        the target's vocabulary (every other id is -inf there), ties included while the draft ids
        ascend, as every checkpoint writes them; without the full-vocabulary tensor."""
        ids = self.draft_token_ids
        if self.full_vocabulary or not bool((ids[1:] > ids[:-1]).all()):
            return super().proposal_tokens(states, depth_index)
        return ids.to(states.device)[self.draft_scores(states).argmax(dim=-1)]

    def proposal_log_probability(
        self, states: torch.Tensor, depth_index: int, tokens: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """log q(token): the log-softmax over the draft vocabulary at the token's draft id, -inf for a
        token outside it (q gives it nothing)."""
        if self.full_vocabulary:
            return super().proposal_log_probability(states, depth_index, tokens, temperature)
        scores = self.draft_scores(states)
        draft_index = torch.full((self.eagle3_config.vocab_size,), -1, dtype=torch.int64, device=scores.device)
        draft_index[self.draft_token_ids.to(scores.device)] = torch.arange(scores.shape[-1], device=scores.device)
        index = draft_index[tokens.to(scores.device)]
        log_probs = log_probability_of(scores, index.clamp(min=0), temperature)
        return torch.where(index >= 0, log_probs, torch.full_like(log_probs, float("-inf")))

    def training_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.draft_logits(states)

    def training_targets(self, target_logits: torch.Tensor) -> torch.Tensor:
        if self.full_vocabulary:
            return torch.softmax(target_logits, dim=-1)
        return torch.softmax(target_logits[..., self.draft_token_ids.to(target_logits.device)], dim=-1)
