"""What the EAGLE-3 engine formats (speculators, SGLang) share: reading and checking the layer
config against the target, the tokenizer check, loading and writing the tensors.

Both formats store the same tensors as an `eagle3` draft's state dict (SGLang names the layer
`midlayer` instead of `layers.0`); they differ in config.json and in how they number aux layers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from decoder.drafts.eagle3 import Eagle3Config, Eagle3Head, LayerStyle
from decoder.errors import DraftFormatError, TokenizerMismatchError
from decoder.target import TargetModel, tokenizer_fingerprint

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def read_config(directory: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when there is none (or it is not a JSON object)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_tokenizer(directory: Path, target: TargetModel) -> None:
    """A tokenizer saved with the head must be the target's (TokenizerMismatchError otherwise)."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(directory))
    if fingerprint != target.tokenizer_fingerprint:
        raise TokenizerMismatchError(target.tokenizer_fingerprint, fingerprint, str(directory))


def check_aux_layer_ids(ids: Sequence[int], target: TargetModel, where: Path) -> tuple[int, int, int]:
    """vLLM-numbered aux ids (hidden_states indices) the target has: three, distinct, in [0, N]."""
    ids = tuple(int(i) for i in ids)
    layers = target.num_layers
    if len(ids) != 3 or len(set(ids)) != 3 or min(ids) < 0 or max(ids) > layers:
        raise DraftFormatError(
            f"{where}: aux hidden-state layer ids {list(ids)} do not fit the target: an EAGLE-3 head fuses three "
            f"distinct hidden states, ids within [0, {layers}] for a {layers}-layer target"
        )
    return ids[0], ids[1], ids[2]


def layer_fields(layer: dict[str, Any], target: TargetModel, where: Path) -> dict[str, Any]:
    """Eagle3Config fields from a Llama/Qwen3-style layer config, checked against the target."""
    style = layer.get("model_type", "llama")
    if style not in ("llama", "qwen3"):
        raise DraftFormatError(f"{where}: layer config model_type {style!r}; an eagle3 layer is llama or qwen3")
    unsupported = {
        "hidden_act": layer.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(layer.get("attention_bias")),
        "mlp_bias": bool(layer.get("mlp_bias")),
        "rope_scaling": _rope_type(layer) not in (None, "default"),
        "num_hidden_layers": int(layer.get("num_hidden_layers", 1)) != 1,
    }
    refused = [name for name, bad in unsupported.items() if bad]
    if refused:
        values = {name: layer.get(name) for name in refused}
        raise DraftFormatError(f"{where}: layer config has {values}; an eagle3 head is one plain SiLU layer")
    hidden, vocab = int(layer["hidden_size"]), int(layer["vocab_size"])
    if vocab != target.vocab_size:
        raise DraftFormatError(f"{where}: vocabulary of {vocab} tokens; the target has {target.vocab_size}")
    heads = int(layer["num_attention_heads"])
    return {
        "hidden_size": hidden,
        "vocab_size": vocab,
        "num_attention_heads": heads,
        "num_key_value_heads": int(layer.get("num_key_value_heads") or heads),
        "head_dim": int(layer.get("head_dim") or hidden // heads),
        "intermediate_size": int(layer["intermediate_size"]),
        "rms_norm_eps": float(layer.get("rms_norm_eps", 1e-6)),
        "rope_theta": _rope_theta(layer),
        "layer_style": style,
    }


def _rope_parameters(layer: dict[str, Any]) -> dict[str, Any]:
    return dict(layer.get("rope_parameters") or layer.get("rope_scaling") or {})


def _rope_type(layer: dict[str, Any]) -> str | None:
    parameters = _rope_parameters(layer)
    return parameters.get("rope_type") or parameters.get("type")


def _rope_theta(layer: dict[str, Any]) -> float:
    return float(_rope_parameters(layer).get("rope_theta") or layer.get("rope_theta") or 10000.0)


def check_feature_size(target_hidden_size: int, target: TargetModel, where: Path) -> None:
    """The states the head reads (target_hidden_size, else its hidden size) are the target's."""
    if int(target_hidden_size) != target.hidden_size:
        raise DraftFormatError(
            f"{where}: the head reads target states of size {target_hidden_size}; the target's hidden size is "
            f"{target.hidden_size}"
        )


def tensor_names(directory: Path) -> set[str]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise DraftFormatError(f"{directory} has no {WEIGHTS_FILE}")
    with safe_open(str(path), framework="pt") as weights:
        return set(weights.keys())


def build_head(config: Eagle3Config, tensors: dict[str, torch.Tensor], target: TargetModel, where: Path) -> Eagle3Head:
    """An eagle3 draft with these tensors (state-dict names), attached to the target, in eval mode."""
    head = Eagle3Head(config)
    expected = head.state_dict()
    tensors = dict(tensors)
    if "d2t" not in tensors and "t2d" not in tensors and config.draft_vocab_size == config.vocab_size:
        tensors |= {"d2t": expected["d2t"], "t2d": expected["t2d"]}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong_shapes = [n for n in expected if n in tensors and tuple(tensors[n].shape) != tuple(expected[n].shape)]
    if missing or unexpected or wrong_shapes:
        raise DraftFormatError(
            f"{where}: tensors do not fit an eagle3 head of its config: missing {missing}, unexpected "
            f"{unexpected}, wrong shape {[(n, tuple(tensors[n].shape)) for n in wrong_shapes]}"
        )
    head.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in tensors.items()})
    head.target_fingerprint = target.fingerprint
    head.tokenizer_fingerprint = target.tokenizer_fingerprint
    head.training_metadata = {"source": f"engine-format checkpoint {where}"}
    head.attach(target)
    head.eval()
    return head.to(device=target.device, dtype=target.dtype)


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / WEIGHTS_FILE))


def head_tensors(head: Eagle3Head) -> dict[str, torch.Tensor]:
    """The head's state dict on the CPU, contiguous (what a checkpoint stores)."""
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in head.state_dict().items()}


def layer_config(config: Eagle3Config, target: TargetModel, style: LayerStyle) -> dict[str, Any]:
    """A Llama/Qwen3 config dict describing the head's one decoder layer."""
    return {
        "model_type": style,
        "architectures": ["Qwen3ForCausalLM" if style == "qwen3" else "LlamaForCausalLM"],
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": target.context_length,
        "vocab_size": config.vocab_size,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }


def verifier_path(target: TargetModel) -> str:
    """The directory the target was loaded from (absolute), as engines name the verifier."""
    name = str(getattr(target.model, "name_or_path", "") or "")
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def write_checkpoint(out_dir: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[Path]:
    """config.json and model.safetensors; the same inputs give the same bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [out_dir / CONFIG_FILE, out_dir / WEIGHTS_FILE]


def require_eagle3(draft: object, format_name: str) -> Eagle3Head:
    if not isinstance(draft, Eagle3Head):
        kind = getattr(draft, "kind", type(draft).__name__)
        raise DraftFormatError(f"the {format_name} format holds eagle3 heads; this draft is a {kind} draft")
    ids = draft.eagle3_config.aux_layer_ids
    if len(set(ids)) < len(ids):
        raise DraftFormatError(f"aux layer ids {list(ids)} repeat: engines fuse three distinct hidden states")
    return draft


def vllm_capturable(aux_layer_ids: Sequence[int], target: TargetModel) -> bool:
    """vLLM collects aux state id i before decoder layer i, for i in [1, N-1] (id 0 has no residual yet,
    and the last layer's output, id N, is never collected)."""
    return all(1 <= layer_id <= target.num_layers - 1 for layer_id in aux_layer_ids)
