"""EAGLE-3's draft layer written from its definition (vLLM `llama_eagle3.py`, speculators
`models/eagle3`), reading a flat tensor dict with the speculators names, for one sequence:

    x = cat([input_layernorm(embed(t+1)), hidden_norm(g)])      q/k/v read x (2H wide)
    residual = hidden_norm(g) if norm_before_residual else g
    h = residual + o_proj(causal attention)                     qwen3: RMSNorm per head on q, k before RoPE
    out = h + down(silu(gate(n)) * up(n)),  n = post_attention_layernorm(h)
    logits = lm_head(norm(out)) over the draft vocabulary; target id of draft id i = i + d2t[i]

No specwatch decoder code is imported; tests compare it with the `eagle3` draft and the formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LayerShape:
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    theta: float
    norm_before_residual: bool
    qwen3: bool


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE on [heads, time, dim] at positions 0..time-1."""
    half = x.shape[-1] // 2
    frequencies = 1.0 / theta ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * frequencies[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def eagle3_layer(
    embeds: torch.Tensor,
    features: torch.Tensor,
    w: dict[str, torch.Tensor],
    shape: LayerShape,
    prefix: str = "layers.0.",
) -> torch.Tensor:
    """The layer's pre-norm output [time, hidden] from token embeddings and features g [time, hidden]."""
    time = embeds.shape[0]
    hidden = rms(features, w[prefix + "hidden_norm.weight"], shape.eps)
    x = torch.cat([rms(embeds, w[prefix + "input_layernorm.weight"], shape.eps), hidden], dim=-1)
    residual = hidden if shape.norm_before_residual else features

    def per_head(name: str, count: int) -> torch.Tensor:
        projected = F.linear(x, w[f"{prefix}self_attn.{name}.weight"]).view(time, count, shape.head_dim)
        norm = f"{prefix}self_attn.{name[0]}_norm.weight"
        if shape.qwen3 and name in ("q_proj", "k_proj"):
            projected = rms(projected, w[norm], shape.eps)
        return projected.transpose(0, 1)

    query = rope(per_head("q_proj", shape.heads), shape.theta)
    key = rope(per_head("k_proj", shape.kv_heads), shape.theta)
    value = per_head("v_proj", shape.kv_heads)
    key, value = (t.repeat_interleave(shape.heads // shape.kv_heads, dim=0) for t in (key, value))
    scores = query @ key.transpose(1, 2) / math.sqrt(shape.head_dim)
    scores = scores.masked_fill(torch.ones(time, time, dtype=torch.bool).triu(1), float("-inf"))
    attended = (scores.softmax(-1) @ value).transpose(0, 1).reshape(time, -1)
    h = residual + F.linear(attended, w[prefix + "self_attn.o_proj.weight"])
    n = rms(h, w[prefix + "post_attention_layernorm.weight"], shape.eps)
    gated = F.silu(F.linear(n, w[prefix + "mlp.gate_proj.weight"])) * F.linear(n, w[prefix + "mlp.up_proj.weight"])
    return h + F.linear(gated, w[prefix + "mlp.down_proj.weight"])


def draft_logits(output: torch.Tensor, w: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    return F.linear(rms(output, w["norm.weight"], eps), w["lm_head.weight"])


def target_vocabulary_logits(draft: torch.Tensor, d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Draft-vocabulary logits scattered into -inf over the target vocabulary (vLLM's way)."""
    full = torch.full((*draft.shape[:-1], vocab_size), float("-inf"), dtype=draft.dtype)
    full[..., torch.arange(d2t.numel()) + d2t] = draft
    return full


def step_logits(
    aux_states: torch.Tensor,
    embeds: torch.Tensor,
    w: dict[str, torch.Tensor],
    shape: LayerShape,
    prefix: str = "layers.0.",
) -> torch.Tensor:
    """Draft-vocabulary logits [time, draft_vocab] of one pass: features fc(aux) at every position."""
    features = F.linear(aux_states, w["fc.weight"])
    return draft_logits(eagle3_layer(embeds, features, w, shape, prefix), w, shape.eps)


def shape_of(config: dict[str, object]) -> LayerShape:
    """The layer shape from an eagle3 draft's config values (`model_dump()`)."""
    return LayerShape(
        heads=int(config["num_attention_heads"]),  # type: ignore[call-overload]
        kv_heads=int(config["num_key_value_heads"]),  # type: ignore[call-overload]
        head_dim=int(config["head_dim"]),  # type: ignore[call-overload]
        eps=float(config["rms_norm_eps"]),  # type: ignore[arg-type]
        theta=float(config["rope_theta"]),  # type: ignore[arg-type]
        norm_before_residual=bool(config["norm_before_residual"]),
        qwen3=config["layer_style"] == "qwen3",
    )
