"""Packed rows vs one sample per row in scored mode, side by side (a benchmark, not a test).

Random-weight Qwen2-shaped target and draft_model (and an eagle3 head) sized for a CPU; traffic
of heavy-tailed lengths (log-normal prompt and completion, bench/decoder_gpu.py's
`varied_samples`) scored in claims of `replay.samples_per_round` samples with the replay
defaults (16 rows, 16,384 positions per pass). For each draft and layout: the share of computed
positions that hold no token, target tokens/s (median of alternating repeats), and whether both
layouts give the same counts.

    python bench/packing.py
    python bench/packing.py --samples 512 --repeats 5 --out packing.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from decoder_gpu import Shape, build_draft_model, build_target, emit, empty_share, varied_samples

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder import Draft, TargetModel, TokenizedSample, create_draft, score_batch

log = logging.getLogger("packing")

CPU_SHAPE = Shape(256, 4, 4, 2, 688, 8192, 128, 2, 2, 1, 344, 16, 256, 256, 1, 1, 8, 256, 2048)
BUDGET = 16_384


def score_claims(target: TargetModel, draft: Draft, claims: list[list[TokenizedSample]], pack: bool) -> list[Any]:
    return [
        score
        for claim in claims
        for score in score_batch(
            target, draft, claim, window=4, batch_size=CPU_SHAPE.batch, max_batch_tokens=BUDGET, pack=pack
        )
    ]


def compare(
    target: TargetModel, draft: Draft, claims: list[list[TokenizedSample]], repeats: int
) -> dict[str, dict[str, Any]]:
    tokens = sum(sample.num_tokens for claim in claims for sample in claim)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    counts: dict[bool, list[Any]] = {}
    score_claims(target, draft, claims[:1], pack=True)  # warm-up
    for _ in range(repeats):
        for pack in (False, True):
            started = time.perf_counter()
            scores = score_claims(target, draft, claims, pack)
            seconds[pack].append(time.perf_counter() - started)
            counts[pack] = [score.counts for score in scores]
    rows = {}
    for pack in (False, True):
        median = statistics.median(seconds[pack])
        rows["packed" if pack else "one_per_row"] = {
            "empty_share": empty_share(claims, CPU_SHAPE.batch, BUDGET, pack),
            "target_tokens_per_s": tokens / median,
            "seconds": seconds[pack],
        }
    rows["packed"]["speedup"] = rows["packed"]["target_tokens_per_s"] / rows["one_per_row"]["target_tokens_per_s"]
    rows["packed"]["same_counts"] = counts[True] == counts[False]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--claim", type=int, default=64, help="samples per claim (replay.samples_per_round)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    device = torch.device("cpu")
    target = build_target(CPU_SHAPE, device, torch.float32)
    samples = varied_samples(CPU_SHAPE, args.samples, seed=2)
    claims = [samples[i : i + args.claim] for i in range(0, len(samples), args.claim)]
    drafts: dict[str, Draft] = {"draft_model": build_draft_model(CPU_SHAPE, target, device)}
    drafts["eagle3"] = create_draft("eagle3", target, draft_vocab_size=CPU_SHAPE.draft_vocab)
    results: dict[str, Any] = {
        "samples": args.samples,
        "claim": args.claim,
        "tokens": sum(sample.num_tokens for sample in samples),
        "torch_threads": torch.get_num_threads(),
    }
    for name, draft in drafts.items():
        results[name] = compare(target, draft, claims, args.repeats)
        packed, alone = results[name]["packed"], results[name]["one_per_row"]
        log.info(
            "%s: one per row %.1f%% empty %.0f tokens/s; packed %.1f%% empty %.0f tokens/s (x%.2f, same counts: %s)",
            name,
            100 * alone["empty_share"],
            alone["target_tokens_per_s"],
            100 * packed["empty_share"],
            packed["target_tokens_per_s"],
            packed["speedup"],
            packed["same_counts"],
        )
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
