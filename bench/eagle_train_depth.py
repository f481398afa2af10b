"""EAGLE-3's training-time test on the demo reference: eagle heads trained at chain depth 1 and 3
under the same budget, then scored at windows 1..7 (a benchmark, not a test).

    python bench/eagle_train_depth.py                                   # reference in the demo's place
    python bench/eagle_train_depth.py --reference DIR --steps 120 --depths 1 3 --out result.json

The demo reference (target) is built once into --reference when it is missing, as `specwatch demo`
does, and reused. Every depth gets the same budget: the same training sequences, the same packed
batches in the same order, the same steps, learning-rate schedule and seed (so the same initial
weights); only `train_depth` differs. The data is what the reference build trains its drafts on,
the target's greedy answers to English and code training prompts (regenerated here by the saved
target, since the build keeps only the models). A depth-d step runs the head d times, so the wall
time of each training run is reported too.

Evaluation: first user turns of held-out English and code conversations (documents the heads never
trained on) continued by the target's own greedy decoding, scored in scored mode (greedy) at each
window; on such continuations scored mode counts what exact mode would (target agreement 1.000
shows the batched greedy continuations are the target's own). alpha = A / (A + R), tau = tokens
emitted per verify step (decoder/metrics.py).

The runs that set the default (`eagle_train_depth = 3`: higher mean alpha over windows 1-7 in each):

    python bench/eagle_train_depth.py --reference DIR --threads 1                # 120 steps, seed 0
    python bench/eagle_train_depth.py --reference DIR --threads 1 --seed 1
    python bench/eagle_train_depth.py --reference DIR --threads 1 --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder import AcceptCounts, TargetModel, TokenizedSample, load_target, score_batch
from decoder.drafts import create_draft
from decoder.reference import (
    DRAFT_LANGUAGES,
    REFERENCE_SPECS,
    ReferenceCorpus,
    ReferenceSpec,
    build_reference,
    evaluation_samples,
    load_reference_corpus,
)
from decoder.scored import target_agreement
from decoder.training import FitConfig, TokenBatch, fit_draft, pack_token_batches

WINDOWS = tuple(range(1, 8))


def ensure_reference(directory: Path) -> Path:
    """The demo reference in `directory`, built there first (seed 0, as the demo does) when missing."""
    if (directory / "target" / "tokenizer.json").is_file():  # written last of the target's files
        print(f"reusing the demo reference target in {directory}", flush=True)
        return directory
    print(f"building the demo reference in {directory} (once; later runs and demos reuse it) ...", flush=True)
    started = time.perf_counter()
    build_reference("demo", directory, seed=0)
    print(f"built in {time.perf_counter() - started:.0f}s", flush=True)
    return directory


def training_batches(target: TargetModel, corpus: ReferenceCorpus, spec: ReferenceSpec, seed: int) -> list[TokenBatch]:
    """The reference build's draft data: of the `answer_prompts` training prompts it answers (the
    same shuffle), those in English and code, answered greedily by the target, packed."""
    documents = [d for lang in corpus.languages for d in corpus.train[lang]]
    random.Random(seed + 1).shuffle(documents)
    documents = [d for d in documents[: spec.answer_prompts] if d.language in DRAFT_LANGUAGES]
    prompts = [target.encode_chat([d.chat[0]]) for d in documents]
    answers = target.greedy_continuations(prompts, max_new_tokens=spec.answer_tokens, batch_size=64)
    sequences = [prompt + answer for prompt, answer in zip(prompts, answers, strict=True)]
    return pack_token_batches(sequences, sequence_length=spec.sequence_length, batch_size=spec.draft_batch_size)


def train_eagle(
    target: TargetModel, batches: list[TokenBatch], depth: int, steps: int, spec: ReferenceSpec, seed: int
) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(seed)
    draft = create_draft("eagle", target, train_depth=depth)
    settings = FitConfig(
        steps=steps, learning_rate=spec.draft_learning_rate, warmup_steps=10, seed=seed, log_every=max(1, steps // 4)
    )
    result = fit_draft(target, draft, batches, settings)
    draft.eval()
    return draft, {
        "train_seconds": result.seconds,
        "first_loss": result.losses[0],
        "last_loss": sum(result.losses[-10:]) / len(result.losses[-10:]),
    }


def score_windows(target: TargetModel, draft: Any, samples: list[TokenizedSample]) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for window in WINDOWS:
        scores = [s for s in score_batch(target, draft, samples, window=window) if s.skipped is None]
        counts = AcceptCounts.total(s.counts for s in scores)
        agreement = target_agreement(scores)
        rows[window] = {
            "alpha": float(counts.alpha or 0.0),
            "tau": float(counts.tau or 0.0),
            "target_agreement": float(agreement if agreement is not None else float("nan")),
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=Path("specwatch-data/models/reference-demo"))
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--steps", type=int, default=None, help="training steps per depth (default: the demo spec's)")
    parser.add_argument("--seed", type=int, default=0, help="training seed: prompts, batch order, weights")
    parser.add_argument("--prompts", type=int, default=None, help="held-out prompts per language (default: spec's)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per greedy continuation (default: spec's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    spec = REFERENCE_SPECS["demo"]
    updates = {"eval_prompts": args.prompts, "eval_new_tokens": args.new_tokens}
    spec = spec.model_copy(update={key: value for key, value in updates.items() if value is not None})
    steps = args.steps or spec.draft_steps
    target = load_target(ensure_reference(args.reference) / "target", device="cpu")
    corpus = load_reference_corpus(spec)
    batches = training_batches(target, corpus, spec, args.seed)
    samples = [s for lang in DRAFT_LANGUAGES for s in evaluation_samples(target, corpus.heldout[lang], spec)]
    print(
        f"training data: {len(batches)} batches of {spec.draft_batch_size} x {spec.sequence_length} tokens; "
        f"budget per depth: {steps} steps, peak lr {spec.draft_learning_rate}, seed {args.seed}; "
        f"evaluation: {len(samples)} held-out en+code prompts x {spec.eval_new_tokens} greedy tokens; "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    results: dict[int, dict[str, Any]] = {}
    for depth in args.depths:
        draft, training = train_eagle(target, batches, depth, steps, spec, args.seed)
        print(f"depth {depth}: trained in {training['train_seconds']:.0f}s, scoring ...", flush=True)
        results[depth] = {**training, "windows": score_windows(target, draft, samples)}

    header = "window" + "".join(f"{f'alpha d{d}':>10}" for d in args.depths)
    header += "".join(f"{f'tau d{d}':>9}" for d in args.depths)
    print(header)
    for window in WINDOWS:
        line = f"{window:>6}" + "".join(f"{results[d]['windows'][window]['alpha']:>10.3f}" for d in args.depths)
        line += "".join(f"{results[d]['windows'][window]['tau']:>9.3f}" for d in args.depths)
        print(line)
    means = {d: sum(results[d]["windows"][w]["alpha"] for w in WINDOWS) / len(WINDOWS) for d in args.depths}
    tau_means = {d: sum(results[d]["windows"][w]["tau"] for w in WINDOWS) / len(WINDOWS) for d in args.depths}
    print(
        f"{'mean':>6}"
        + "".join(f"{means[d]:>10.3f}" for d in args.depths)
        + "".join(f"{tau_means[d]:>9.3f}" for d in args.depths)
    )
    for depth in args.depths:
        agreement = min(results[depth]["windows"][w]["target_agreement"] for w in WINDOWS)
        print(
            f"depth {depth}: train wall time {results[depth]['train_seconds']:.0f}s for {steps} steps, "
            f"loss {results[depth]['first_loss']:.3f} -> {results[depth]['last_loss']:.3f} "
            f"(includes depth terms), target agreement {agreement:.3f}"
        )
    best = max(args.depths, key=lambda d: means[d])
    print(f"better by mean alpha over windows 1-7: depth {best}; total {time.perf_counter() - started:.0f}s")
    if args.out:
        payload = {
            "steps": steps,
            "seed": args.seed,
            "samples": len(samples),
            "new_tokens": spec.eval_new_tokens,
            "threads": torch.get_num_threads(),
            "depths": {str(d): results[d] for d in args.depths},
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
