"""What a log without token ids costs: replay from the engine's ids against replay from re-tokenized text.

    python bench/token_ids_vs_text.py --models models/reference-demo      # the demo build
    python bench/token_ids_vs_text.py --models /tmp/tiny-ref --prompts 60  # the tiny test build

Each held-out conversation's first turn is answered by the target's greedy decoding under a cap, as
an engine with return_token_ids would log it: the prompt ids, the generated ids and the decoded text.
Both ways go through `decoder.exchange.tokenize_exchange` and scored mode; exact mode regenerating
from the prompt ids is the truth. Prints per draft kind: samples whose text re-tokenizes to other
ids, samples whose scored counts equal exact counts (from ids, from text), and alpha each way.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from decoder import DRAFT_KINDS, AcceptCounts, exact_generate, load_draft, load_target, score_batch
from decoder.exchange import Exchange, tokenize_exchange

log = logging.getLogger("token_ids_vs_text")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    target = load_target(args.models / "target", device="cpu")
    lines = (args.models / "heldout.jsonl").read_text(encoding="utf-8").splitlines()[: args.prompts]
    turns = [[json.loads(line)["messages"][0]] for line in lines]
    prompts = [target.encode_chat(turn) for turn in turns]
    answers = target.greedy_continuations(prompts, max_new_tokens=args.cap)
    from_ids, from_text = [], []
    for turn, prompt, generated in zip(turns, prompts, answers, strict=True):
        stopped = bool(generated) and generated[-1] == target.eos_token_id
        text = str(target.tokenizer.decode(generated, skip_special_tokens=True))
        reason = "stop" if stopped else "length"
        logged = Exchange(turn, text, finish_reason=reason, max_tokens=args.cap)
        with_ids = Exchange(
            turn,
            text,
            finish_reason=reason,
            max_tokens=args.cap,
            prompt_token_ids=prompt,
            completion_token_ids=generated,
        )
        from_ids.append(tokenize_exchange(target, with_ids))
        from_text.append(tokenize_exchange(target, logged))
    differs = sum(tokens.retokenized_equal is False for tokens in from_ids)
    log.info(
        "%d prompts (cap %d, window %d): %d re-tokenize to other ids", len(prompts), args.cap, args.window, differs
    )
    for kind in DRAFT_KINDS:
        draft = load_draft(args.models / "drafts" / kind, target)
        id_scores = score_batch(target, draft, [t.sample(str(i)) for i, t in enumerate(from_ids)], window=args.window)
        text_scores = score_batch(
            target, draft, [t.sample(str(i)) for i, t in enumerate(from_text)], window=args.window
        )
        truth = [
            exact_generate(
                target, draft, prompt, window=args.window, max_new_tokens=args.cap, compare_target_only=False
            ).counts
            for prompt in prompts
        ]
        ids_equal = sum(score.counts == counts for score, counts in zip(id_scores, truth, strict=True))
        text_equal = sum(score.counts == counts for score, counts in zip(text_scores, truth, strict=True))
        alphas = [AcceptCounts.total(s.counts for s in scores).alpha for scores in (id_scores, text_scores)]
        log.info(
            "%-11s scored == exact: from ids %d/%d, from text %d/%d  alpha exact %.4f ids %.4f text %.4f",
            kind,
            ids_equal,
            len(prompts),
            text_equal,
            len(prompts),
            AcceptCounts.total(truth).alpha,
            alphas[0],
            alphas[1],
        )


if __name__ == "__main__":
    main()
