"""SGLang / SpecForge EAGLE-3 checkpoint: a plain LlamaConfig with `architectures:
["LlamaForCausalLMEagle3"]`, `draft_vocab_size` and `eagle_config.eagle_aux_hidden_state_layer_ids`;
tensors `midlayer.*` (the eagle3 draft's `layers.0.*`), `fc`, `norm`, `lm_head`, `d2t`, `t2d` (all
required by SGLang's loader) and optional `embed_tokens`.

SGLang's layer (sglang/srt/models/llama_eagle3.py) always starts the residual stream at the raw
feature (`norm_before_residual` false) and is Llama's (no q_norm/k_norm), so only such heads export.
Its aux ids are decoder-layer indices: SGLang captures the input of layer `id + 1`
(`set_eagle3_layers_to_capture`), the output of layer `id`, which is vLLM's id + 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decoder.drafts.base import Draft
from decoder.drafts.eagle3 import Eagle3Config, Eagle3Head
from decoder.errors import DraftFormatError
from decoder.formats.base import ExportResult, HeadFormat, register_format
from decoder.formats.eagle3_checkpoint import (
    build_head,
    check_aux_layer_ids,
    check_feature_size,
    check_tokenizer,
    head_tensors,
    layer_config,
    layer_fields,
    read_config,
    read_tensors,
    require_eagle3,
    tensor_names,
    write_checkpoint,
)
from decoder.target import TargetModel

NAME = "sglang"
ARCHITECTURE = "LlamaForCausalLMEagle3"
SGLANG_LAYER = "midlayer."
OUR_LAYER = "layers.0."
REQUIRED = ("fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d")


def detect(directory: Path) -> bool:
    config = read_config(directory)
    return config is not None and ARCHITECTURE in (config.get("architectures") or [])


def load(directory: Path, target: TargetModel) -> Eagle3Head:
    config = read_config(directory)
    if config is None or not detect(directory):
        raise DraftFormatError(f"{directory} is not an SGLang EAGLE-3 checkpoint")
    check_tokenizer(directory, target)
    _refuse_unsupported(config, directory)
    names = tensor_names(directory)
    missing = [name for name in REQUIRED if name not in names]
    if missing or not any(name.startswith(SGLANG_LAYER) for name in names):
        raise DraftFormatError(f"{directory}: SGLang's loader needs midlayer.*, {list(REQUIRED)}; missing {missing}")
    fields = layer_fields(config, target, directory)
    check_feature_size(config.get("target_hidden_size") or fields["hidden_size"], target, directory)
    layer_ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if layer_ids is None:
        raise DraftFormatError(f"{directory}: config.json has no eagle_config.eagle_aux_hidden_state_layer_ids")
    head_config = Eagle3Config(
        **fields,
        aux_layer_ids=check_aux_layer_ids([int(i) + 1 for i in layer_ids], target, directory),
        target_hidden_size=config.get("target_hidden_size"),
        draft_vocab_size=int(config.get("draft_vocab_size") or fields["vocab_size"]),
        norm_before_residual=False,
        own_embedding="embed_tokens.weight" in names,
    )
    tensors = {name.replace(SGLANG_LAYER, OUR_LAYER, 1): tensor for name, tensor in read_tensors(directory).items()}
    return build_head(head_config, tensors, target, directory)


def _refuse_unsupported(config: dict[str, Any], directory: Path) -> None:
    eagle_config = config.get("eagle_config") or {}
    flags = {
        "tie_word_embeddings": config.get("tie_word_embeddings"),
        "fc_norm": config.get("fc_norm") or config.get("use_aux_norm"),
        "norm_before_fc": eagle_config.get("norm_before_fc", config.get("norm_before_fc")),
        "norm_output": config.get("norm_output"),
    }
    if config.get("model_type", "llama") != "llama":
        flags["model_type"] = config.get("model_type")
    refused = {name: value for name, value in flags.items() if value}
    if refused:
        raise DraftFormatError(f"{directory}: {refused}; an eagle3 head has its own lm_head and no extra norms")


def export_sglang_head(draft: Draft, target: TargetModel, out_dir: Path) -> ExportResult:
    """Writes an eagle3 draft in SGLang's layout (refused for heads SGLang's layer cannot compute)."""
    head = require_eagle3(draft, NAME)
    config = head.eagle3_config
    if config.norm_before_residual or config.layer_style != "llama":
        raise DraftFormatError(
            "SGLang's EAGLE-3 layer is Llama's with the residual at the raw feature; this head has "
            f"norm_before_residual={config.norm_before_residual}, layer_style={config.layer_style}"
        )
    tensors = {name.replace(OUR_LAYER, SGLANG_LAYER, 1): tensor for name, tensor in head_tensors(head).items()}
    written = write_checkpoint(out_dir, sglang_config(head, target), tensors)
    return ExportResult(
        out_dir=out_dir,
        format=NAME,
        engine_loadable={"sglang": False},
        details={
            "written": [path.name for path in written],
            "sglang_reasons": ["not proven: no SGLang loader runs in these tests (the layout follows its source)"],
        },
    )


def sglang_config(head: Eagle3Head, target: TargetModel) -> dict[str, Any]:
    config = head.eagle3_config
    return layer_config(config, target, "llama") | {
        "architectures": [ARCHITECTURE],
        "draft_vocab_size": config.draft_vocab_size,
        "target_hidden_size": config.feature_size,
        "eagle_config": {
            "eagle_aux_hidden_state_layer_ids": [layer_id - 1 for layer_id in config.aux_layer_ids],
            "use_aux_hidden_state": True,
        },
    }


SGLANG = register_format(HeadFormat(name=NAME, kinds=("eagle3",), detect=detect, load=load, export=export_sglang_head))
