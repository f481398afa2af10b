"""specwatch's measuring instrument: how many drafted tokens a target model accepts.

Load a target and a draft, then replay traffic in one of two modes:

    from decoder import load_target, load_draft, score_batch, exact_generate, TokenizedSample
    target = load_target("models/reference-demo/target")
    draft = load_draft("models/reference-demo/drafts/eagle", target)
    sample = TokenizedSample("s1", target.encode_chat(messages), target.encode_completion(reply), max_new_tokens=64)
    scores = score_batch(target, draft, [sample], window=4)          # scored (teacher-forced)
    result = exact_generate(target, draft, sample.prompt_ids, window=4, max_new_tokens=64)  # exact

A completion that ends with the target's EOS stopped naturally; one without EOS was cut by a length
cap (`encode_completion(text, end_with_eos=False)`). Both modes fit the prompt into the context with
`fit_prompt` and stop by the same rule, so on the target's greedy output their counts are equal.
With temperature > 0 scored mode returns the expected counts given the continuation: on text
sampled from the target at that temperature their mean is exact mode's (`decoder.scored`); on
other text they are an estimate.
Metrics (alpha, tau, draft acceptance rate, per-position rates) are defined in decoder.metrics.
Draft kinds are registered in one place, `DRAFT_KINDS` (decoder.drafts). The offline reference-model
builder, `decoder.reference` (demo, tests, benchmarks), is not imported here nor by any runtime module.
Names are imported on first use (PEP 562), so `decoder.counts` (the counts and metrics, standard library
only) loads without torch: evaluation reads stored counts without paying for the models. This package
imports only torch, transformers, tokenizers, safetensors, pydantic, numpy and the
standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decoder.batching import map_in_packed_batches, plan_batches
    from decoder.counts import AcceptCounts
    from decoder.drafts import (
        DRAFT_KINDS,
        Draft,
        DraftConfig,
        DraftManifest,
        DraftModel,
        Eagle3Head,
        EagleHead,
        MedusaHeads,
        create_draft,
        kind_objective,
        load_draft,
        read_manifest,
        register_draft,
        save_draft,
    )
    from decoder.errors import (
        DecoderError,
        DraftFormatError,
        DraftTargetMismatchError,
        TokenizerMismatchError,
    )
    from decoder.exact import ExactResult, Generation, exact_generate, generate
    from decoder.files import draft_version
    from decoder.metrics import simulate_verify_loop
    from decoder.samples import FittedPrompt, TokenizedSample, fit_prompt
    from decoder.scored import SampleScore, score_batch, target_agreement
    from decoder.target import TargetModel, load_target, target_fingerprint, tokenizer_fingerprint
    from decoder.training import FitConfig, FitResult, TokenBatch, fit_draft, pack_token_batches

_EXPORTS = {
    "map_in_packed_batches": "decoder.batching",
    "plan_batches": "decoder.batching",
    "DRAFT_KINDS": "decoder.drafts",
    "Draft": "decoder.drafts",
    "DraftConfig": "decoder.drafts",
    "DraftManifest": "decoder.drafts",
    "DraftModel": "decoder.drafts",
    "Eagle3Head": "decoder.drafts",
    "EagleHead": "decoder.drafts",
    "MedusaHeads": "decoder.drafts",
    "create_draft": "decoder.drafts",
    "draft_version": "decoder.files",
    "kind_objective": "decoder.drafts",
    "load_draft": "decoder.drafts",
    "read_manifest": "decoder.drafts",
    "register_draft": "decoder.drafts",
    "save_draft": "decoder.drafts",
    "DecoderError": "decoder.errors",
    "DraftFormatError": "decoder.errors",
    "DraftTargetMismatchError": "decoder.errors",
    "TokenizerMismatchError": "decoder.errors",
    "ExactResult": "decoder.exact",
    "Generation": "decoder.exact",
    "exact_generate": "decoder.exact",
    "generate": "decoder.exact",
    "AcceptCounts": "decoder.counts",
    "simulate_verify_loop": "decoder.metrics",
    "FittedPrompt": "decoder.samples",
    "TokenizedSample": "decoder.samples",
    "fit_prompt": "decoder.samples",
    "SampleScore": "decoder.scored",
    "score_batch": "decoder.scored",
    "target_agreement": "decoder.scored",
    "TargetModel": "decoder.target",
    "load_target": "decoder.target",
    "target_fingerprint": "decoder.target",
    "tokenizer_fingerprint": "decoder.target",
    "FitConfig": "decoder.training",
    "FitResult": "decoder.training",
    "TokenBatch": "decoder.training",
    "fit_draft": "decoder.training",
    "pack_token_batches": "decoder.training",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'decoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DRAFT_KINDS",
    "AcceptCounts",
    "DecoderError",
    "Draft",
    "DraftConfig",
    "DraftFormatError",
    "DraftManifest",
    "DraftModel",
    "DraftTargetMismatchError",
    "Eagle3Head",
    "EagleHead",
    "ExactResult",
    "FitConfig",
    "FitResult",
    "FittedPrompt",
    "Generation",
    "MedusaHeads",
    "SampleScore",
    "TargetModel",
    "TokenBatch",
    "TokenizedSample",
    "TokenizerMismatchError",
    "create_draft",
    "draft_version",
    "exact_generate",
    "fit_draft",
    "fit_prompt",
    "generate",
    "kind_objective",
    "load_draft",
    "load_target",
    "map_in_packed_batches",
    "pack_token_batches",
    "plan_batches",
    "read_manifest",
    "register_draft",
    "save_draft",
    "score_batch",
    "simulate_verify_loop",
    "target_agreement",
    "target_fingerprint",
    "tokenizer_fingerprint",
]
