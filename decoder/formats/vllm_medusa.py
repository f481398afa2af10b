"""`vllm-medusa`: a MEDUSA head as vLLM's MedusaModel loads it, read into and written from `medusa`.

The layout, from vLLM 0.11.0 (vllm/model_executor/models/medusa.py and
vllm/transformers_utils/configs/medusa.py; vLLM 0.33.0 no longer ships MEDUSA):

- config.json: `architectures: ["MedusaModel"]` (model_type `medusa`), `hidden_size`, `vocab_size`,
  `num_heads` and `num_hidden_layers` (residual blocks per head; any key holding "num" and "heads" or
  "num" and "layers", e.g. `medusa_num_heads`, is read as them), `medusa_fc_bias` (the blocks' linear
  layers carry a bias; default false), `original_lm_head` (one LM head for all heads; default false),
  `truncated_vocab_size` (with a `token_map` tensor: a reduced draft vocabulary), `logit_scale`;
- tensors (a `medusa_heads.` prefix is dropped): `blocks.{i}.layers.{j}.weight` (+ `.bias`), and
  `lm_heads.{i}.weight`, or with `original_lm_head` one `lm_head.weight` (or `lm_heads.0.weight`).

Head i computes `lm_head_i(block_i(h))` with `block(x)`: `x = x + SiLU(layer_j(x))` for each layer j,
h the target's final (normed) hidden state: our `medusa` kind with `num_residual_blocks`,
`block_bias` and `shared_lm_head`. A reduced vocabulary or a logit scale is refused by name.

    draft = FORMATS["vllm-medusa"].load(Path("/models/medusa-vicuna"), target)
    FORMATS["vllm-medusa"].export(draft, target, Path("out/medusa"))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from decoder.drafts.base import Draft
from decoder.drafts.medusa import MedusaConfig, MedusaHeads
from decoder.errors import DraftFormatError
from decoder.formats.base import ExportResult, HeadFormat, register_format
from decoder.formats.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_sizes,
    check_tokenizer,
    config_int,
    load_state,
    read_config,
    read_config_if_any,
    read_tensors,
    write_config,
    write_tensors,
)
from decoder.target import TargetModel

log = logging.getLogger(__name__)

FORMAT_NAME = "vllm-medusa"
ARCHITECTURE = "MedusaModel"
TENSOR_PREFIX = "medusa_heads."


def detect(directory: Path) -> bool:
    config = read_config_if_any(directory)
    if config is None:
        return False
    return ARCHITECTURE in (config.get("architectures") or []) or config.get("model_type") == "medusa"


def vllm_config_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """config.json as vLLM's MedusaConfig.from_pretrained reads it: keys with "num" and "heads"
    become num_heads, keys with "num" and "layers" become num_hidden_layers (the last one wins)."""
    fields = dict(raw)
    for key in list(raw):
        if "num" in key and "heads" in key:
            fields["num_heads"] = fields.pop(key)
        elif "num" in key and "layers" in key:
            fields["num_hidden_layers"] = fields.pop(key)
    return fields


def medusa_config(directory: Path, raw: dict[str, Any]) -> MedusaConfig:
    fields = vllm_config_fields(raw)
    vocab_size = config_int(fields, "vocab_size", directory)
    truncated = fields.get("truncated_vocab_size")
    if truncated is not None and truncated != vocab_size:
        raise DraftFormatError(
            f"MEDUSA head at {directory} drafts from a reduced vocabulary (truncated_vocab_size {truncated} of "
            f"{vocab_size}, with a token_map); only full-vocabulary heads are supported"
        )
    if float(fields.get("logit_scale", 1.0)) != 1.0:
        raise DraftFormatError(f"MEDUSA head at {directory} scales its logits (logit_scale {fields['logit_scale']})")
    try:
        return MedusaConfig(
            hidden_size=config_int(fields, "hidden_size", directory),
            vocab_size=vocab_size,
            num_heads=config_int(fields, "num_heads", directory, default=5),
            num_residual_blocks=config_int(fields, "num_hidden_layers", directory, default=1),
            block_bias=bool(fields.get("medusa_fc_bias", False)),
            shared_lm_head=bool(fields.get("original_lm_head", False)),
        )
    except ValidationError as exc:
        raise DraftFormatError(f"MEDUSA head at {directory} is outside what the medusa kind holds: {exc}") from None


def our_tensor_name(name: str, shared_lm_head: bool) -> str:
    """vLLM's tensor name -> MedusaHeads' state-dict name."""
    parts = name.removeprefix(TENSOR_PREFIX).split(".")
    if parts[0] == "blocks" and len(parts) == 5 and parts[2] == "layers":
        return f"blocks.{parts[1]}.{parts[3]}.linear.{parts[4]}"
    if shared_lm_head and parts in (["lm_head", "weight"], ["lm_heads", "0", "weight"]):
        return "lm_heads.0.weight"
    return ".".join(parts)


def vllm_tensor_name(name: str, shared_lm_head: bool) -> str:
    """MedusaHeads' state-dict name -> vLLM's tensor name."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return f"blocks.{parts[1]}.layers.{parts[2]}.{parts[4]}"
    if shared_lm_head:
        return "lm_head.weight"
    return name


def drop_unused_biases(state: dict[str, torch.Tensor], directory: Path) -> None:
    """Without `medusa_fc_bias` vLLM builds bias-free blocks and skips bias tensors it finds (the
    original Medusa checkpoints carry them): drop them as it does, and say so."""
    biases = [name for name in state if name.startswith("blocks.") and name.endswith(".bias")]
    for name in biases:
        del state[name]
    if biases:
        log.warning(
            "MEDUSA head at %s holds %d block biases but its config.json lacks medusa_fc_bias: true; vLLM "
            "ignores them, and so does this import",
            directory,
            len(biases),
        )


def load(directory: Path, target: TargetModel) -> Draft:
    """A `medusa` draft computing what vLLM's MedusaModel computes from this directory."""
    config = medusa_config(directory, read_config(directory))
    check_sizes(directory, "MEDUSA head", config.hidden_size, config.vocab_size, target)
    check_tokenizer(directory, target)
    heads = MedusaHeads(config)
    state = {our_tensor_name(name, config.shared_lm_head): tensor for name, tensor in read_tensors(directory).items()}
    state.pop("token_map", None)  # vLLM reads it only for a reduced vocabulary, refused above
    if not config.block_bias:
        drop_unused_biases(state, directory)
    load_state(heads, state, directory)
    heads.target_fingerprint = target.fingerprint
    heads.tokenizer_fingerprint = target.tokenizer_fingerprint
    heads.training_metadata = {"source": f"{FORMAT_NAME} directory {directory}"}
    heads.eval()
    return heads.to(device=target.device, dtype=target.dtype)


def vllm_config(config: MedusaConfig) -> dict[str, Any]:
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "medusa",
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "truncated_vocab_size": config.vocab_size,
        "num_heads": config.num_heads,
        "num_hidden_layers": config.num_residual_blocks,
        "medusa_fc_bias": config.block_bias,
        "original_lm_head": config.shared_lm_head,
    }


def export(draft: Draft, target: TargetModel, out_dir: Path) -> ExportResult:
    """Writes config.json and model.safetensors in vLLM's MEDUSA layout."""
    if not isinstance(draft, MedusaHeads) or not isinstance(draft.config, MedusaConfig):
        raise DraftFormatError(f"{FORMAT_NAME} holds medusa heads, not a {draft.kind} draft")
    config = draft.config
    check_sizes(out_dir, "medusa draft", config.hidden_size, config.vocab_size, target)
    tensors: dict[str, torch.Tensor] = {
        vllm_tensor_name(name, config.shared_lm_head): tensor for name, tensor in draft.state_dict().items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tensors(out_dir / WEIGHTS_FILE, tensors)
    write_config(out_dir / CONFIG_FILE, vllm_config(config))
    log.info("exported %d medusa heads to %s (%s)", config.num_heads, out_dir, FORMAT_NAME)
    return ExportResult(
        out_dir=out_dir,
        format=FORMAT_NAME,
        details={"files": [CONFIG_FILE, WEIGHTS_FILE], "layout": "vLLM 0.11.0 MedusaModel"},
    )


VLLM_MEDUSA = register_format(HeadFormat(name=FORMAT_NAME, kinds=("medusa",), detect=detect, load=load, export=export))
