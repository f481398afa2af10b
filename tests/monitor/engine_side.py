"""A serving engine, as far as specwatch sees one: it generates with speculative decoding (specwatch's own
exact verify loop on the reference models, for the head it serves) and reports each request's
acceptance in its response the way vLLM does (`metrics.speculative_decoding`, summary or detailed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from decoder import Draft, TargetModel
from decoder.exact import generate


def vllm_spec_metrics(
    step_drafted: Sequence[int], step_accepted: Sequence[int], num_spec_tokens: int, *, detailed: bool
) -> dict[str, Any]:
    """vLLM's per-request `speculative_decoding` object for these verify steps, from its documented fields."""
    steps = len(step_drafted)
    accepted, drafted = sum(step_accepted), sum(step_drafted)
    histogram = [0] * (num_spec_tokens + 1)
    for count in step_accepted:
        histogram[count] += 1
    payload: dict[str, Any] = {
        "mean_acceptance_length": 1 + accepted / steps if steps else 1.0,
        "draft_acceptance_rate": accepted / drafted if drafted else 0.0,
        "acceptance_histogram": histogram,
        "num_spec_steps": steps,
        "num_accepted_draft_tokens": accepted,
        "num_draft_tokens": drafted,
        "num_spec_tokens": num_spec_tokens,
    }
    if detailed:
        payload["per_step_accepted"] = list(step_accepted)
        payload["per_step_drafted"] = list(step_drafted)
    return payload


def served_by_engine(
    records: Iterable[dict[str, Any]],
    target: TargetModel,
    head: Draft,
    *,
    window: int,
    max_new_tokens: int,
    detailed: bool = True,
) -> list[dict[str, Any]]:
    """Each specwatch-format record answered by the engine serving `head` (greedy, lossless: the answer is the
    target's own), logged as a gateway logs an OpenAI chat completion with vLLM's per-request metrics."""
    served = []
    for record in records:
        prompt_ids = target.encode_chat(record["messages"])
        generation = generate(target, head, prompt_ids, window=window, max_new_tokens=max_new_tokens)
        tokens = generation.tokens
        ended = bool(tokens) and tokens[-1] == target.eos_token_id
        text = str(target.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True))
        served.append(
            {
                "request": {
                    "model": record["model"],
                    "messages": record["messages"],
                    "temperature": 0.0,
                    "max_tokens": max_new_tokens,
                },
                "response": {  # with vLLM's return_token_ids
                    "id": record["id"],
                    "created": record["timestamp"],
                    "prompt_token_ids": prompt_ids,
                    "choices": [
                        {
                            "message": {"content": text.rstrip("\ufffd")},
                            "finish_reason": "stop" if ended else "length",
                            "token_ids": tokens,
                        }
                    ],
                    "metrics": {
                        "speculative_decoding": vllm_spec_metrics(
                            generation.step_drafted, generation.step_accepted, window, detailed=detailed
                        )
                    },
                },
                "metadata": record["metadata"],
            }
        )
    return served
