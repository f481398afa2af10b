"""vLLM's `speculators` EAGLE-3 checkpoint: config.json with `speculators_model_type: "eagle3"`
and the `eagle3` draft's tensors under the same names (`fc`, `layers.0.*`, `norm`, `lm_head`,
optional `embed_tokens`, `d2t`, `t2d`).

    draft = FORMATS["speculators"].load(Path("/models/eagle3-head"), target)
    export_speculators_head(draft, target, Path("out/speculator"), speculative_tokens=3)

Aux-layer ids are vLLM's (hidden_states indices), as in the eagle3 config. vLLM reads a missing
`norm_before_residual` as true, speculators as false: the export always writes it.

The export writes `embed_tokens.weight` even for a head that shares the target's embedding
(`include_embedding`, default true): speculators 0.9.0 under transformers 5.19 leaves a missing
embedding uninitialized (values around 1e25 or 1e-43, by hash seed) instead of reading the verifier's,
as tests/decoder/formats/test_speculators_compat.py found. vLLM serves either form the same; a
vLLM-only deployment can leave it out to save memory. On import, an embedding equal to the target's
is shared again, so the round trip keeps the head's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
    verifier_path,
    vllm_capturable,
    write_checkpoint,
)
from decoder.target import TargetModel

NAME = "speculators"
DEFAULT_SPECULATIVE_TOKENS = 3


def detect(directory: Path) -> bool:
    config = read_config(directory)
    return config is not None and config.get("speculators_model_type") == "eagle3"


def load(directory: Path, target: TargetModel) -> Eagle3Head:
    config = read_config(directory)
    if config is None or not detect(directory):
        raise DraftFormatError(f"{directory} is not a speculators EAGLE-3 checkpoint")
    check_tokenizer(directory, target)
    fields = layer_fields(dict(config.get("transformer_layer_config") or {}), target, directory)
    check_feature_size(config.get("target_hidden_size") or fields["hidden_size"], target, directory)
    unsupported = [
        key for key in ("norm_before_fc", "fc_norm", "norm_output", "tie_word_embeddings") if config.get(key)
    ]
    if unsupported:
        raise DraftFormatError(
            f"{directory}: {unsupported} set; an eagle3 head feeds fc and its output back un-normed, "
            "with its own lm_head"
        )
    aux_ids = config.get("eagle_aux_hidden_state_layer_ids")
    if aux_ids is None:
        raise DraftFormatError(f"{directory}: config.json has no eagle_aux_hidden_state_layer_ids")
    tensors = without_target_embedding(read_tensors(directory), target)
    head_config = Eagle3Config(
        **fields,
        aux_layer_ids=check_aux_layer_ids(aux_ids, target, directory),
        target_hidden_size=config.get("target_hidden_size"),
        draft_vocab_size=int(config.get("draft_vocab_size") or fields["vocab_size"]),
        # what vLLM serves: it reads a missing flag as true (speculators' own default is false)
        norm_before_residual=bool(config.get("norm_before_residual", True)),
        own_embedding="embed_tokens.weight" in tensors,
    )
    return build_head(head_config, tensors, target, directory)


def export_speculators_head(
    draft: Draft,
    target: TargetModel,
    out_dir: Path,
    *,
    speculative_tokens: int = DEFAULT_SPECULATIVE_TOKENS,
    verifier: str | None = None,
    include_embedding: bool = True,
) -> ExportResult:
    """Writes an eagle3 draft as a speculators checkpoint; `verifier` (default: the directory the
    target was loaded from) is what vLLM and speculators load as the target; `include_embedding`
    writes a shared embedding too (see the module docstring)."""
    head = require_eagle3(draft, NAME)
    if speculative_tokens < 1:
        raise DraftFormatError(f"speculative_tokens must be >= 1, got {speculative_tokens}")
    config = speculators_config(head, target, speculative_tokens, verifier or verifier_path(target))
    tensors = head_tensors(head)
    if include_embedding and "embed_tokens.weight" not in tensors:
        tensors["embed_tokens.weight"] = target.input_embeddings().weight.detach().to("cpu", head.dtype).contiguous()
    written = write_checkpoint(out_dir, config, tensors)
    loadable, reasons = vllm_loadability(head, target)
    return ExportResult(
        out_dir=out_dir,
        format=NAME,
        engine_loadable={"vllm": loadable, "speculators": "embed_tokens.weight" in tensors},
        details={"written": [path.name for path in written], "vllm_reasons": reasons},
    )


def without_target_embedding(tensors: dict[str, torch.Tensor], target: TargetModel) -> dict[str, torch.Tensor]:
    """The tensors, less an embed_tokens equal to the target's embedding (the head then shares it)."""
    embedding = tensors.get("embed_tokens.weight")
    shared = target.input_embeddings().weight.detach().to("cpu")
    if embedding is not None and embedding.shape == shared.shape and torch.equal(embedding.to(shared.dtype), shared):
        return {name: tensor for name, tensor in tensors.items() if name != "embed_tokens.weight"}
    return tensors


def speculators_config(head: Eagle3Head, target: TargetModel, speculative_tokens: int, verifier: str) -> dict[str, Any]:
    config = head.eagle3_config
    return {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "transformer_layer_config": layer_config(config, target, config.layer_style),
        "draft_vocab_size": config.draft_vocab_size,
        "norm_before_residual": config.norm_before_residual,
        # a PretrainedConfig ties lm_head to embed_tokens by default: speculators then serves the wrong lm_head
        "tie_word_embeddings": False,
        "target_hidden_size": config.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [
                {
                    "proposal_type": "greedy",
                    "speculative_tokens": speculative_tokens,
                    "verifier_accept_k": 1,
                    "accept_tolerance": 0.0,
                }
            ],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": list(target.config.architectures or [])},
        },
    }


def vllm_loadability(head: Eagle3Head, target: TargetModel) -> tuple[bool, list[str]]:
    """Whether vLLM can serve the export as it is, and why not."""
    config = head.eagle3_config
    reasons = []
    if not vllm_capturable(config.aux_layer_ids, target):
        reasons.append(
            f"aux layer ids {list(config.aux_layer_ids)}: vLLM collects ids 1..{target.num_layers - 1} of a "
            f"{target.num_layers}-layer target"
        )
    if config.layer_style != "llama":
        reasons.append("qwen3-style layer: vLLM's EAGLE-3 layer is Llama's (no q_norm/k_norm); not proven")
    return not reasons, reasons


SPECULATORS = register_format(
    HeadFormat(name=NAME, kinds=("eagle3",), detect=detect, load=load, export=export_speculators_head)
)
