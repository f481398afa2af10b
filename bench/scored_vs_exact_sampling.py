"""Scored vs exact mode at temperature > 0: the posterior estimator against the old overlap one.

Exact mode generates continuations by speculative sampling (several seeds per held-out prompt,
natural stopping rule: EOS or the cap); scored mode scores those very continuations at the same
temperature and window, with

- new: `score_batch`, acceptance min(1, q(y) / p(y)) of the observed token y, i.e. E[counts | y];
- old: the estimator before it, acceptance sum_x min(p(x), q(x)) per proposal (written here).

Prints per draft kind and temperature: alpha of exact mode with its 95% interval (ratio
estimator, delta method over runs), alpha of both estimators, and the paired per-run mean of
exact - scored for A, R, S, E and accepted per position in standard errors (z; |z| < 4 expected
of an unbiased estimator).

    PYTHONPATH=/work/main python bench/scored_vs_exact_sampling.py --models /tmp/tiny-ref
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from decoder import (
    DRAFT_KINDS,
    AcceptCounts,
    Draft,
    TargetModel,
    TokenizedSample,
    exact_generate,
    load_draft,
    load_target,
    score_batch,
    simulate_verify_loop,
)
from decoder.drafts import DraftInputs

log = logging.getLogger("scored_vs_exact_sampling")


@torch.inference_mode()
def overlap_counts(
    target: TargetModel, draft: Draft, samples: Sequence[TokenizedSample], window: int, temperature: float
) -> list[AcceptCounts]:
    """The old estimator: acceptance sum_x min(p(x), q(x)) at each proposal's teacher-forced
    state, replayed by the same verify-loop simulation (samples must fit the context)."""
    depth = window if draft.max_draft_tokens is None else min(window, draft.max_draft_tokens)
    eos = target.eos_token_id
    counts = []
    for sample in samples:
        ids = torch.tensor([sample.prompt_ids + sample.completion_ids], device=target.device)
        states = target.forward(ids, feature_layers=draft.feature_layers)
        levels = draft.teacher_forced_proposals(DraftInputs(ids, torch.ones_like(ids), states), depth)
        start, length = len(sample.prompt_ids) - 1, len(sample.completion_ids)
        rows = slice(start, start + length)
        p = torch.softmax(target.logits(states.hidden[0, rows]).float() / temperature, dim=-1)
        matrix = torch.zeros(1, length, depth, dtype=torch.float64)
        for level, level_states in enumerate(levels):
            q = torch.softmax(draft.proposal_logits(level_states[0, rows], level).float() / temperature, dim=-1)
            matrix[0, level + 1 :, level] = torch.minimum(p, q).sum(dim=-1)[level + 1 :].double().cpu()
        ends_with_eos = sample.completion_ids[-1] == eos
        cap = sample.max_new_tokens if ends_with_eos and sample.max_new_tokens else length
        [result] = simulate_verify_loop(
            matrix,
            torch.tensor([length]),
            window,
            draft.max_draft_tokens,
            ends_with_eos=torch.tensor([ends_with_eos]),
            max_new_tokens=torch.tensor([cap]),
        )
        counts.append(result)
    return counts


def count_vector(counts: AcceptCounts, window: int) -> list[float]:
    """A, R, S, E and accepted per position 1..window."""
    positions = [*counts.accepted_per_position, *[0.0] * window][:window]
    return [counts.accepted, counts.rejected, counts.steps, counts.eos_ended, *positions]


def alpha_interval(exact: torch.Tensor) -> tuple[float, float]:
    """Ratio estimator sum A / sum (A + R) and its delta-method standard error over runs."""
    accepted, drafted = exact[:, 0], exact[:, 0] + exact[:, 1]
    alpha = float(accepted.sum() / drafted.sum())
    residual = accepted - alpha * drafted
    n = exact.shape[0]
    return alpha, math.sqrt(float((residual**2).sum()) / (n * (n - 1))) / float(drafted.mean())


def paired_z(exact: torch.Tensor, scored: torch.Tensor) -> list[float]:
    """Sum over runs of exact - scored in standard errors, per count. The variance is the larger
    of the runs' own and the least an integer count with mean s can have, frac(s) (1 - frac(s))
    summed over runs: rare counts (E is 0 or 1 per run and mostly 0) may show too few events for
    their own spread to say much."""
    difference = exact - scored
    spread = ((difference - difference.mean(dim=0)) ** 2).sum(dim=0)
    fraction = scored - scored.floor()
    variance = torch.maximum(spread, (fraction * (1 - fraction)).sum(dim=0))
    total = difference.sum(dim=0)
    return [float(t / v.sqrt()) if v > 0 else 0.0 for t, v in zip(total, variance, strict=True)]


@dataclass
class Comparison:
    runs: int
    natural_stops: int
    exact_alpha: float
    exact_error: float
    new_alpha: float
    old_alpha: float
    new_z: list[float]
    old_z: list[float]
    seconds: float

    def line(self, window: int) -> str:
        names = ["A", "R", "S", "E", *[f"p{i + 1}" for i in range(window)]]

        def zs(values: list[float]) -> str:
            return " ".join(f"{name}{value:+.1f}" for name, value in zip(names, values, strict=True))

        low, high = self.exact_alpha - 1.96 * self.exact_error, self.exact_alpha + 1.96 * self.exact_error
        return (
            f"runs {self.runs} (EOS {self.natural_stops})  alpha exact {self.exact_alpha:.4f} [{low:.4f}, {high:.4f}]"
            f"  new {self.new_alpha:.4f}  old {self.old_alpha:.4f}  ({self.seconds:.0f}s)\n"
            f"    z new: {zs(self.new_z)}   max |z| {max(map(abs, self.new_z)):.1f}\n"
            f"    z old: {zs(self.old_z)}   max |z| {max(map(abs, self.old_z)):.1f}"
        )


def compare(
    target: TargetModel,
    draft: Draft,
    prompts: Sequence[list[int]],
    *,
    runs: int,
    temperature: float,
    window: int,
    cap: int,
) -> Comparison:
    """`runs` exact generations over the prompts in turn (seed = run index), both estimators on them."""
    started = time.perf_counter()
    samples, exact = [], []
    for seed in range(runs):
        prompt = prompts[seed % len(prompts)]
        result = exact_generate(
            target,
            draft,
            prompt,
            window=window,
            max_new_tokens=cap,
            temperature=temperature,
            seed=seed,
            compare_target_only=False,
        )
        natural_stop = result.tokens[-1] == target.eos_token_id
        samples.append(TokenizedSample(str(seed), prompt, result.tokens, cap if natural_stop else len(result.tokens)))
        exact.append(count_vector(result.counts, window))
    new = [
        count_vector(s.counts, window)
        for s in score_batch(target, draft, samples, window=window, temperature=temperature)
    ]
    old = [count_vector(c, window) for c in overlap_counts(target, draft, samples, window, temperature)]
    exact_t, new_t, old_t = (torch.tensor(x, dtype=torch.float64) for x in (exact, new, old))
    alpha, error = alpha_interval(exact_t)
    return Comparison(
        runs=runs,
        natural_stops=sum(s.completion_ids[-1] == target.eos_token_id for s in samples),
        exact_alpha=alpha,
        exact_error=error,
        new_alpha=alpha_interval(new_t)[0],
        old_alpha=alpha_interval(old_t)[0],
        new_z=paired_z(exact_t, new_t),
        old_z=paired_z(exact_t, old_t),
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--runs", type=int, default=400, help="exact generations per kind and temperature")
    parser.add_argument("--cap", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    parser.add_argument("--kinds", nargs="+", default=list(DRAFT_KINDS), choices=list(DRAFT_KINDS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    target = load_target(args.models / "target", device="cpu")
    lines = (args.models / "heldout.jsonl").read_text().splitlines()[: args.prompts]
    prompts = [target.encode_chat([json.loads(line)["messages"][0]]) for line in lines]
    prompts = [p for p in prompts if len(p) <= target.context_length - args.cap]  # no fitting needed
    log.info(
        "%d prompts, cap %d, window %d, %d runs per kind and temperature",
        len(prompts),
        args.cap,
        args.window,
        args.runs,
    )
    for kind in args.kinds:
        draft = load_draft(args.models / "drafts" / kind, target)
        for temperature in args.temperatures:
            comparison = compare(
                target, draft, prompts, runs=args.runs, temperature=temperature, window=args.window, cap=args.cap
            )
            log.info("%-11s T=%.1f %s", kind, temperature, comparison.line(args.window))


if __name__ == "__main__":
    main()
