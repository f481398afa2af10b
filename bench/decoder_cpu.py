"""CPU benchmark of the decoder's replay modes on one reference build (a benchmark, not a test).

On the same held-out prompts, continued by the target's own greedy decoding, it measures
replayed completion tokens per second of:

- scored mode at batch 1 and batched, for each draft kind;
- exact mode (draft-then-verify, batch 1) for each draft kind, and the target alone;
- transformers' own assisted generation, generate(assistant_model=draft), for the draft_model
  kind (settings through draft.generation_config), and plain generate().

    python bench/decoder_cpu.py --reference specwatch-data/models/reference-demo
    python bench/decoder_cpu.py --size tiny          # builds a tiny reference in a temp dir first
    python bench/decoder_cpu.py --reference DIR --samples 24 --window 4 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder import (
    DRAFT_KINDS,
    AcceptCounts,
    Draft,
    DraftModel,
    TargetModel,
    TokenizedSample,
    exact_generate,
    load_draft,
    load_target,
    score_batch,
)
from decoder.reference import build_reference
from decoder.reference.corpus import code_documents, dialog_documents, split

KINDS = tuple(DRAFT_KINDS)


def traffic(target: TargetModel, count: int, new_tokens: int) -> list[TokenizedSample]:
    """Held-out English and code prompts with the target's greedy continuations."""
    documents = split(dialog_documents("en"))[1][: count - count // 3] + split(code_documents(200_000))[1][: count // 3]
    prompts = [target.encode_chat([d.chat[0]]) for d in documents]
    continuations = target.greedy_continuations(prompts, max_new_tokens=new_tokens)
    return [TokenizedSample(str(i), p, c) for i, (p, c) in enumerate(zip(prompts, continuations, strict=True))]


def scored_row(
    target: TargetModel, draft: Draft, samples: list[TokenizedSample], window: int, batch: int
) -> dict[str, Any]:
    score_batch(target, draft, samples[:2], window=window, batch_size=batch)  # warm-up
    started = time.perf_counter()
    scores = score_batch(target, draft, samples, window=window, batch_size=batch)
    seconds = time.perf_counter() - started
    completion = sum(s.completion_tokens for s in scores)
    total = completion + sum(s.prompt_tokens for s in scores)
    return {
        "completion_tokens_per_s": completion / seconds,
        "target_tokens_per_s": total / seconds,
        "alpha": AcceptCounts.total(s.counts for s in scores).alpha,
    }


def exact_rows(target: TargetModel, draft: Draft, samples: list[TokenizedSample], window: int) -> tuple[dict, dict]:
    speculative_seconds = target_seconds = 0.0
    tokens = 0
    counts = AcceptCounts()
    for sample in samples:
        result = exact_generate(
            target, draft, sample.prompt_ids, window=window, max_new_tokens=len(sample.completion_ids)
        )
        assert result.target_only is not None
        speculative_seconds += result.speculative.seconds
        target_seconds += result.target_only.seconds
        tokens += len(result.tokens)
        counts = counts + result.counts
    return (
        {"completion_tokens_per_s": tokens / speculative_seconds, "alpha": counts.alpha},
        {"completion_tokens_per_s": tokens / target_seconds, "alpha": None},
    )


@torch.inference_mode()
def hf_generate_row(
    target: TargetModel, assistant: DraftModel | None, samples: list[TokenizedSample], window: int
) -> dict:
    if assistant is not None:
        config = assistant.lm.generation_config
        config.num_assistant_tokens = window
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
    tokens, seconds = 0, 0.0
    for sample in samples:
        ids = torch.tensor([sample.prompt_ids])
        started = time.perf_counter()
        output = target.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(sample.completion_ids),
            do_sample=False,
            assistant_model=assistant.lm if assistant is not None else None,
            pad_token_id=target.tokenizer.pad_token_id,
            eos_token_id=target.eos_token_id,
        )
        seconds += time.perf_counter() - started
        tokens += output.shape[1] - ids.shape[1]
    return {"completion_tokens_per_s": tokens / seconds, "alpha": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="a reference build directory")
    parser.add_argument("--size", choices=("tiny", "demo"), default="tiny", help="build this size when no --reference")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="batch size of batched scored mode")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reference = args.reference
    if reference is None:
        reference = Path(tempfile.mkdtemp(prefix="specwatch-bench-")) / args.size
        print(f"building reference {args.size} in {reference} ...", flush=True)
        build_reference(args.size, reference)

    target = load_target(reference / "target", device="cpu")
    drafts = {kind: load_draft(reference / "drafts" / kind, target) for kind in KINDS}
    samples = traffic(target, args.samples, args.new_tokens)
    completion_tokens = sum(len(s.completion_ids) for s in samples)
    print(
        f"{len(samples)} samples, {completion_tokens} completion tokens, window {args.window}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rows: list[tuple[str, str, int, dict[str, Any]]] = []
    for kind, draft in drafts.items():
        rows.append(("scored", kind, 1, scored_row(target, draft, samples, args.window, 1)))
        rows.append(("scored", kind, args.batch, scored_row(target, draft, samples, args.window, args.batch)))
    for kind, draft in drafts.items():
        speculative, target_only = exact_rows(target, draft, samples, args.window)
        rows.append(("exact", kind, 1, speculative))
    rows.append(("exact", "target only", 1, target_only))
    draft_model = drafts["draft_model"]
    assert isinstance(draft_model, DraftModel)
    rows.append(("hf generate assisted", "draft_model", 1, hf_generate_row(target, draft_model, samples, args.window)))
    rows.append(("hf generate", "target only", 1, hf_generate_row(target, None, samples, args.window)))

    print(f"{'mode':<22}{'draft':<13}{'batch':>6}{'tokens/s':>11}{'target tok/s':>14}{'alpha':>8}")
    for mode, kind, batch, row in rows:
        target_rate = row.get("target_tokens_per_s")
        alpha = row.get("alpha")
        print(
            f"{mode:<22}{kind:<13}{batch:>6}{row['completion_tokens_per_s']:>11.0f}"
            f"{(f'{target_rate:.0f}' if target_rate else '-'):>14}{(f'{alpha:.3f}' if alpha is not None else '-'):>8}"
        )
    print("tokens/s: completion tokens replayed per second; target tok/s: prompt+completion tokens through the target")
    if args.out:
        args.out.write_text(
            json.dumps([{"mode": m, "draft": k, "batch": b, **r} for m, k, b, r in rows], indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
