"""Plain re-statements of vLLM's MEDUSA and DeepSeek-MTP functions, written from vLLM's source only
(vllm 0.11.0 model_executor/models/medusa.py; vllm 0.33.0 model_executor/models/deepseek_mtp.py and
v1/spec_decode/llm_base_proposer.py), over tensors named as in the checkpoints. They import nothing
of ours: the truth our formats and draft kinds are compared against.

Float64 throughout; no KV cache (every step recomputes attention over the whole sequence so far).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]


def medusa_logits(config: Mapping[str, object], tensors: Tensors, hidden: torch.Tensor) -> list[torch.Tensor]:
    """vLLM's Medusa.forward + compute_logits: per head, x += SiLU(W_j x (+ b_j)) for each layer j of
    its ResidualBlock, then that head's lm_head (or the one lm_head with original_lm_head)."""
    with_bias = bool(config.get("medusa_fc_bias", False))
    logits = []
    for head in range(int(config["num_heads"])):  # type: ignore[call-overload]
        x = hidden.double()
        for layer in range(int(config["num_hidden_layers"])):  # type: ignore[call-overload]
            weight = tensors[f"blocks.{head}.layers.{layer}.weight"].double()
            bias = tensors[f"blocks.{head}.layers.{layer}.bias"].double() if with_bias else 0.0
            x = x + torch.nn.functional.silu(x @ weight.T + bias)
        if config.get("original_lm_head", False):
            lm_head = tensors.get("lm_head.weight", tensors.get("lm_heads.0.weight"))
        else:
            lm_head = tensors[f"lm_heads.{head}.weight"]
        assert lm_head is not None
        logits.append(x @ lm_head.double().T)
    return logits


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style rotary embedding on x [time, heads, dim]: pairs (i, i + dim/2) rotate by pos * theta^(-2i/dim)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(0, half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = positions.double()[:, None] * frequencies[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def decoder_layer(block: Tensors, x: torch.Tensor, positions: torch.Tensor, shape: Mapping[str, float]) -> torch.Tensor:
    """A Llama/Qwen2 decoder layer over a whole sequence x [time, hidden] with a causal mask; returns
    residual + output (what DeepSeekMultiTokenPredictorLayer keeps before the shared head's norm)."""
    heads, kv_heads, dim, eps = int(shape["heads"]), int(shape["kv_heads"]), int(shape["head_dim"]), shape["eps"]

    def linear(name: str, value: torch.Tensor) -> torch.Tensor:
        out = value @ block[f"{name}.weight"].double().T
        return out + block[f"{name}.bias"].double() if f"{name}.bias" in block else out

    normed = rms_norm(x, block["input_layernorm.weight"], eps)
    time = x.shape[0]
    query = rope(linear("self_attn.q_proj", normed).view(time, heads, dim), positions, shape["theta"])
    key = rope(linear("self_attn.k_proj", normed).view(time, kv_heads, dim), positions, shape["theta"])
    value = linear("self_attn.v_proj", normed).view(time, kv_heads, dim)
    key = key.repeat_interleave(heads // kv_heads, dim=1)
    value = value.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query, key) / dim**0.5
    causal = torch.ones(time, time, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    attended = torch.einsum("hqk,khd->qhd", weights, value).reshape(time, heads * dim)
    x = x + linear("self_attn.o_proj", attended)
    normed = rms_norm(x, block["post_attention_layernorm.weight"], eps)
    gate = torch.nn.functional.silu(linear("mlp.gate_proj", normed))
    return x + linear("mlp.down_proj", gate * linear("mlp.up_proj", normed))


def mtp_forward(
    layer: Tensors,
    embedding: torch.Tensor,
    input_ids: torch.Tensor,
    previous_hidden: torch.Tensor,
    positions: torch.Tensor,
    shape: Mapping[str, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeekMultiTokenPredictorLayer.forward (vLLM 0.33.0): returns (pre-norm output, shared_head.norm
    of it); `layer` holds the tensors under model.layers.{N}. with that prefix removed."""
    eps = shape["eps"]
    embedded = embedding.double()[input_ids]
    embedded = torch.where(positions[:, None] == 0, torch.zeros_like(embedded), embedded)
    joined = torch.cat(
        [
            rms_norm(embedded, layer["enorm.weight"], eps),
            rms_norm(previous_hidden.double(), layer["hnorm.weight"], eps),
        ],
        dim=-1,
    )
    hidden = joined @ layer["eh_proj.weight"].double().T
    output = decoder_layer(layer, hidden, positions, shape)
    return output, rms_norm(output, layer["shared_head.norm.weight"], eps)


def mtp_logits(layer: Tensors, lm_head: torch.Tensor, output: torch.Tensor, eps: float) -> torch.Tensor:
    """compute_logits: shared_head.head(shared_head.norm(output)), the head being the target's LM head."""
    return rms_norm(output, layer["shared_head.norm.weight"], eps) @ lm_head.double().T


def mtp_propose(
    layer: Tensors,
    embedding: torch.Tensor,
    lm_head: torch.Tensor,
    tokens: torch.Tensor,
    target_hidden: torch.Tensor,
    drafted: list[int],
    shape: Mapping[str, float],
    recycle_normed: bool = True,
) -> list[torch.Tensor]:
    """The proposer's logits for each drafted position after `tokens` (the last one not yet seen by
    the target; `target_hidden` [len(tokens) - 1, H] for the others), following the given drafted
    tokens: first pass over the shifted ids at positions 0..n-1, then one position per chained step
    reading the last drafted token and the recycled state (normed output, or the output in vLLM 0.11)."""
    count = target_hidden.shape[0]
    input_ids = tokens[1 : count + 1]
    hidden = target_hidden.double()
    logits = []
    for step in range(len(drafted) + 1):
        positions = torch.arange(input_ids.shape[0])
        output, normed = mtp_forward(layer, embedding, input_ids, hidden, positions, shape)
        logits.append(mtp_logits(layer, lm_head, output[-1:], shape["eps"])[0])
        if step == len(drafted):
            break
        recycled = normed[-1:] if recycle_normed else output[-1:]
        input_ids = torch.cat([input_ids, torch.tensor([drafted[step]])])
        hidden = torch.cat([hidden, recycled])
    return logits[: len(drafted) + 1]
