"""`mtp`: DeepSeek-V3-style MTP layers stored in a target checkpoint, read into and written from `mtp`.

The layout vLLM's DeepSeekMTP loads (vllm/model_executor/models/deepseek_mtp.py): the target's
config.json declares `num_nextn_predict_layers` (>= 1) and its weights hold, after the last decoder
layer N-1 (N = `num_hidden_layers`), the layer `model.layers.{N}.*`:

- `enorm.weight`, `hnorm.weight`, `eh_proj.weight` [H, 2H], `shared_head.norm.weight`;
- the decoder layer's own tensors under the same prefix (`self_attn.q_proj.weight`, `input_layernorm.weight`,
  `mlp.gate_proj.weight`, ...; vLLM files them under `mtp_block.`, as `MtpHead` does);
- `embed_tokens.weight` and `shared_head.head.weight`: copies of the target's. vLLM 0.33.0 replaces both
  with the target's own, and so does the `mtp` kind (a differing copy is reported); vLLM 0.11.0 read
  `shared_head.head` from the file, so an export writes both copies into a target checkpoint.

Two directories hold such a layer: a target checkpoint (`write_into_checkpoint` adds one, the reference
build does) and an MTP-only directory, the target's config.json plus a model.safetensors with only the
`model.layers.{N}.*` tensors (no embedding/head copies: the target provides them) and the target's
tokenizer, which `export` writes and `specwatch heads import` can copy into the head registry.
`models.draft = "mtp"` means the MTP layer of `models.target`: `load_target_mtp(target_dir, target)`.

    draft = load_target_mtp(Path("models/reference-tiny/target"), target)
    export(draft, target, Path("out/mtp-head"))
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoConfig

from decoder.drafts.base import Draft
from decoder.drafts.mtp import MtpConfig, MtpHead, mtp_config_for
from decoder.errors import DraftFormatError
from decoder.formats.base import ExportResult, HeadFormat, register_format
from decoder.formats.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
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

FORMAT_NAME = "mtp"
LAYERS_KEY = "num_nextn_predict_layers"
OWN_TENSORS = ("enorm.", "hnorm.", "eh_proj.", "shared_head.norm.")
TARGET_COPIES = ("embed_tokens.weight", "shared_head.head.weight")


def detect(directory: Path) -> bool:
    config = read_config_if_any(directory)
    if config is None or "model_type" not in config:
        return False
    layers = config.get(LAYERS_KEY)
    return isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1


def mtp_prefix(num_hidden_layers: int) -> str:
    return f"model.layers.{num_hidden_layers}."


def mtp_config(directory: Path, raw: dict[str, Any]) -> MtpConfig:
    layers = config_int(raw, LAYERS_KEY, directory, default=0)
    if layers != 1:
        raise DraftFormatError(
            f"{directory / CONFIG_FILE} declares {LAYERS_KEY}: {layers}; the mtp kind holds exactly one MTP layer"
        )
    try:
        return mtp_config_for(AutoConfig.from_pretrained(directory))
    except (OSError, ValueError, KeyError) as exc:
        raise DraftFormatError(f"the MTP layer at {directory} cannot be read as an mtp head: {exc}") from None


def our_tensor_name(name: str) -> str:
    """A tensor name inside the MTP layer (prefix removed) -> MtpHead's state-dict name."""
    return name if name.startswith(OWN_TENSORS) else f"mtp_block.{name}"


def checkpoint_tensor_name(name: str) -> str:
    """MtpHead's state-dict name -> the tensor name inside the MTP layer."""
    return name.removeprefix("mtp_block.")


def report_differing_copies(layer: dict[str, torch.Tensor], target: TargetModel, directory: Path) -> None:
    """The file's embedding/head copies are not used (the target's are, as in vLLM 0.33); say when they differ."""
    own = {
        "embed_tokens.weight": target.input_embeddings().weight,
        "shared_head.head.weight": target.output_embeddings().weight,
    }
    for name in TARGET_COPIES:
        copy = layer.pop(name, None)
        if copy is not None and not torch.equal(copy.to(own[name].dtype), own[name].detach().cpu()):
            log.warning("MTP layer at %s has its own %s, unlike the target's; the target's is used", directory, name)


def load(directory: Path, target: TargetModel) -> Draft:
    """The directory's MTP layer as an `mtp` head for `target` (see the module docstring)."""
    raw = read_config(directory)
    config = mtp_config(directory, raw)
    check_sizes(directory, "MTP layer", config.hidden_size, config.vocab_size, target)
    check_tokenizer(directory, target)
    prefix = mtp_prefix(config_int(raw, "num_hidden_layers", directory))
    layer = {name.removeprefix(prefix): tensor for name, tensor in read_tensors(directory, prefix).items()}
    if not layer:
        raise DraftFormatError(
            f"{directory / CONFIG_FILE} declares {LAYERS_KEY}: 1 but its weights hold no {prefix}* tensors "
            "(a checkpoint saved without its MTP layer?)"
        )
    report_differing_copies(layer, target, directory)
    head = MtpHead(config)
    load_state(head, {our_tensor_name(name): tensor for name, tensor in layer.items()}, directory)
    head.target_fingerprint = target.fingerprint
    head.tokenizer_fingerprint = target.tokenizer_fingerprint
    head.training_metadata = {"source": f"{FORMAT_NAME} layer in {directory}"}
    head.attach(target)
    head.eval()
    return head.to(device=target.device, dtype=target.dtype)


def load_target_mtp(target_dir: Path, target: TargetModel) -> MtpHead:
    """The MTP layer of a target checkpoint (what `models.draft = "mtp"` means)."""
    if not detect(target_dir):
        raise DraftFormatError(
            f'models.draft = "mtp" needs a target whose config.json declares {LAYERS_KEY} >= 1; {target_dir} does not'
        )
    head = load(target_dir, target)
    assert isinstance(head, MtpHead)
    return head


def mtp_tensors(draft: MtpHead, target: TargetModel, with_target_copies: bool) -> dict[str, torch.Tensor]:
    prefix = mtp_prefix(target.num_layers)
    tensors = {prefix + checkpoint_tensor_name(name): tensor for name, tensor in draft.state_dict().items()}
    if with_target_copies:
        tensors[prefix + "embed_tokens.weight"] = target.input_embeddings().weight
        tensors[prefix + "shared_head.head.weight"] = target.output_embeddings().weight
    return {name: tensor.detach().to(target.dtype) for name, tensor in tensors.items()}


def checked_mtp_head(draft: Draft, target: TargetModel) -> MtpHead:
    if not isinstance(draft, MtpHead):
        raise DraftFormatError(f"{FORMAT_NAME} holds an mtp head, not a {draft.kind} draft")
    if (draft.mtp_config.hidden_size, draft.mtp_config.vocab_size) != (target.hidden_size, target.vocab_size):
        raise DraftFormatError("the mtp head was made for another hidden size or vocabulary than the target's")
    return draft


def target_config_with_mtp(target: TargetModel) -> dict[str, Any]:
    config = {key: value for key, value in target.config.to_dict().items() if not key.startswith("_")}
    config[LAYERS_KEY] = 1
    return config


def export(draft: Draft, target: TargetModel, out_dir: Path) -> ExportResult:
    """Writes an MTP-only directory: the target's config.json (+ num_nextn_predict_layers: 1), the
    layer's tensors in model.safetensors, and the target's tokenizer."""
    head = checked_mtp_head(draft, target)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tensors(out_dir / WEIGHTS_FILE, mtp_tensors(head, target, with_target_copies=False))
    write_config(out_dir / CONFIG_FILE, target_config_with_mtp(target))
    target.tokenizer.save_pretrained(out_dir)
    log.info("exported the mtp head to %s", out_dir)
    return ExportResult(
        out_dir=out_dir,
        format=FORMAT_NAME,
        details={"layer": mtp_prefix(target.num_layers).rstrip("."), "layout": "MTP-only (target config + layer)"},
    )


def write_into_checkpoint(draft: Draft, target: TargetModel, target_dir: Path) -> Path:
    """Adds the head as `model.layers.{N}.*` (with embedding/head copies) to a single-file target
    checkpoint and declares it in config.json; returns the weights file."""
    head = checked_mtp_head(draft, target)
    if (target_dir / WEIGHTS_INDEX_FILE).is_file() or not (target_dir / WEIGHTS_FILE).is_file():
        raise DraftFormatError(f"{target_dir} is not a single-file ({WEIGHTS_FILE}) checkpoint")
    tensors = read_tensors(target_dir)
    tensors.update(mtp_tensors(head, target, with_target_copies=True))
    save_file(
        {name: tensor.contiguous() for name, tensor in tensors.items()},
        str(target_dir / WEIGHTS_FILE),
        {"format": "pt"},
    )
    config = read_config(target_dir)
    config[LAYERS_KEY] = 1
    write_config(target_dir / CONFIG_FILE, config)
    log.info("wrote the mtp head into %s as %s*", target_dir, mtp_prefix(target.num_layers))
    return target_dir / WEIGHTS_FILE


def extract_layer(directory: Path, out_dir: Path) -> None:
    """An MTP-only directory from a directory holding the layer (a whole target checkpoint included),
    from files alone: its config.json, the layer's own tensors (not the embedding/head copies) and its
    tokenizer files. What the head registry keeps of `models.draft = "mtp"`, instead of the target."""
    raw = read_config(directory)
    mtp_config(directory, raw)
    prefix = mtp_prefix(config_int(raw, "num_hidden_layers", directory))
    layer = {
        name: tensor
        for name, tensor in read_tensors(directory, prefix).items()
        if name.removeprefix(prefix) not in TARGET_COPIES
    }
    if not layer:
        raise DraftFormatError(f"{directory} declares {LAYERS_KEY} but its weights hold no {prefix}* tensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tensors(out_dir / WEIGHTS_FILE, layer)
    write_config(out_dir / CONFIG_FILE, raw)
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
            shutil.copyfile(path, out_dir / path.name)


MTP_FORMAT = register_format(
    HeadFormat(name=FORMAT_NAME, kinds=("mtp",), detect=detect, load=load, export=export, stage=extract_layer)
)

__all__ = ["MTP_FORMAT", "detect", "export", "load", "load_target_mtp", "write_into_checkpoint"]
