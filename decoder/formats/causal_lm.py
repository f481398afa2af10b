"""`causal-lm`: a plain Hugging Face causal LM directory with the target's tokenizer, the format every
engine loads as an independent draft model (vLLM `speculative_config={"model": DIR}`, SGLang
`--speculative-draft-model-path DIR`, TensorRT-LLM's draft-target model).

Reading it wraps the LM as a `draft_model` after checking its tokenizer against the target's; writing
it saves a `draft_model`'s LM with `save_pretrained` and the target's tokenizer beside it, so the
engine's tokenizer check passes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from decoder.drafts.base import Draft
from decoder.drafts.draft_model import DraftModel
from decoder.errors import DraftFormatError, TokenizerMismatchError
from decoder.formats.base import ExportResult, HeadFormat, register_format
from decoder.target import TargetModel, tokenizer_fingerprint

log = logging.getLogger(__name__)

NAME = "causal-lm"


def is_causal_lm(directory: Path) -> bool:
    """A transformers config.json that is not specwatch's draft manifest (the fallback format: the
    engine formats, whose configs have a model_type too, claim theirs first)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and config.get("format") != "specwatch-draft"


def export_causal_lm(draft: Draft, target: TargetModel, out_dir: Path) -> ExportResult:
    if not isinstance(draft, DraftModel):
        raise DraftFormatError(f"a {draft.kind} head is not a causal LM: only draft_model exports as {NAME}")
    out_dir.mkdir(parents=True, exist_ok=True)
    draft.lm.save_pretrained(out_dir)
    target.tokenizer.save_pretrained(out_dir)
    log.info("exported draft_model as a causal LM directory to %s", out_dir)
    return ExportResult(out_dir=out_dir, format=NAME)


def load_causal_lm(directory: Path, target: TargetModel) -> DraftModel:
    """The LM as a `draft_model` on the target's device and dtype; another tokenizer is refused."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != target.tokenizer_fingerprint:
        raise TokenizerMismatchError(target.tokenizer_fingerprint, fingerprint, str(directory))
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=target.dtype, attn_implementation="sdpa")
    draft = DraftModel.wrapping(lm)
    draft.target_fingerprint = target.fingerprint
    draft.tokenizer_fingerprint = fingerprint
    draft.training_metadata = {"source": f"causal LM directory {directory}"}
    draft.eval()
    return draft.to(device=target.device)


register_format(HeadFormat(NAME, ("draft_model",), is_causal_lm, load_causal_lm, export_causal_lm, fallback=True))
