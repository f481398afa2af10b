"""Measurement fidelity on random models.

- Scored greedy counts equal exact-mode counts bit for bit (A, R, D, S, E, per-position rates,
  histogram) on the target's own greedy output, with exact mode under its natural stopping rule:
  completions that end by EOS, by a length cap (mid-sentence), at the context, and served longer
  than the context allows; prompts longer than the context; every draft kind; windows 1-8.
- Exact mode equals an independent plain greedy speculative loop written here from the definition
  with transformers models only (no specwatch decoder code, no cache): the medusa, eagle and mtp
  heads are recomputed from their state dicts (mtp by vLLM's proposer, tests/decoder/vllm_reference.py).
- Every exact run keeps A + S - E = n - 1 and R <= S.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from decoder import Draft, Generation, TargetModel, TokenizedSample, exact_generate, generate, score_batch
from tests.decoder.conftest import KINDS
from tests.decoder.eagle3_reference import draft_logits, eagle3_layer, rope, shape_of, target_vocabulary_logits
from tests.decoder.eagle3_reference import rms as rms_norm
from tests.decoder.random_models import VOCAB, RandomWorld, random_world
from tests.decoder.vllm_reference import mtp_propose

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROPERTY_SEEDS = range(8)  # with the window rule below, every kind meets windows 1-8


def assert_invariants(generation: Generation) -> None:
    counts = generation.counts
    n = len(generation.tokens)
    assert counts.accepted + counts.steps - counts.eos_ended == n - 1
    assert counts.rejected <= counts.steps
    assert counts.eos_ended <= 1
    if counts.steps:
        assert counts.tau == pytest.approx((n - 1) / counts.steps)


# ---- (a) scored == exact on random models ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    prompt: list[int]
    max_new_tokens: int | None
    served_beyond: tuple[int, ...] = ()
    """tokens an engine with a longer context served after what fits here"""


def greedy(target: TargetModel, prompt: list[int], max_new_tokens: int | None) -> list[int]:
    return generate(target, None, prompt, window=0, max_new_tokens=max_new_tokens).tokens


def cases_of(world: RandomWorld) -> list[Case]:
    rng = random.Random(world.spec.seed + 2)
    short, middling, longer, *rest = world.prompts
    cases = [
        Case("natural", short, None),
        Case("capped", middling, rng.randint(2, 12)),
        Case("long-prompt", longer, None),
        Case("served-beyond", rest[0], None, tuple(rng.randrange(VOCAB) for _ in range(4))),
    ]
    eos = world.target.eos_token_id
    for prompt in world.prompts:
        tokens = greedy(world.target, prompt, None)
        if len(tokens) >= 2 and tokens[-1] == eos:  # the cap lands near the EOS, or on it
            cases.append(Case("eos-near-cap", prompt, len(tokens) + rng.randint(0, 2)))
            break
    return cases


@dataclass
class Coverage:
    eos_ended_samples: int = 0
    length_ended_samples: int = 0
    eos_accepted_steps: float = 0.0
    rejections: float = 0.0
    accepted: float = 0.0
    truncated_samples: int = 0
    windows: set[tuple[str, int]] | None = None


def test_scored_counts_equal_exact_counts_on_random_models() -> None:
    coverage = Coverage(windows=set())
    for seed in PROPERTY_SEEDS:
        world = random_world(seed)
        rng = random.Random(seed)
        cases = cases_of(world)
        completions = [greedy(world.target, case.prompt, case.max_new_tokens) for case in cases]
        samples = [
            TokenizedSample(case.name, case.prompt, completion + list(case.served_beyond), case.max_new_tokens)
            for case, completion in zip(cases, completions, strict=True)
        ]
        for index, kind in enumerate(KINDS):
            draft = world.drafts[kind]
            window = 1 + (3 * seed + index) % 8
            assert coverage.windows is not None
            coverage.windows.add((kind, window))
            scores = score_batch(world.target, draft, samples, window=window, batch_size=rng.choice([1, 2, 8]))
            for case, completion, score in zip(cases, completions, scores, strict=True):
                where = (seed, world.spec, kind, window, case)
                exact = exact_generate(
                    world.target,
                    draft,
                    case.prompt,
                    window=window,
                    max_new_tokens=case.max_new_tokens,
                    compare_target_only=False,
                )
                assert exact.tokens == completion, where
                assert_invariants(exact.speculative)
                assert score.counts == exact.counts, where
                assert score.ends_with_eos == (completion[-1] == world.target.eos_token_id), where
                coverage.eos_ended_samples += score.ends_with_eos
                coverage.length_ended_samples += not score.ends_with_eos
                coverage.truncated_samples += score.truncated_tokens > 0
                coverage.eos_accepted_steps += exact.counts.eos_ended
                coverage.rejections += exact.counts.rejected
                coverage.accepted += exact.counts.accepted
    assert coverage.windows == {(kind, window) for kind in KINDS for window in range(1, 9)}
    assert coverage.eos_ended_samples >= 20 and coverage.length_ended_samples >= 20
    assert coverage.eos_accepted_steps >= 10 and coverage.truncated_samples >= 10
    assert 0.2 < coverage.accepted / (coverage.accepted + coverage.rejections) < 0.95


# ---- (b) an independent reference loop ------------------------------------------------------------

Propose = Callable[[list[int], int], list[int]]


@dataclass
class ReferenceRun:
    tokens: list[int]
    steps: list[tuple[int, int, bool]]
    """(drafted, accepted, ended by an accepted EOS) per verify step"""


def fitted(prompt: list[int], context: int, cap: int | None) -> tuple[list[int], int]:
    """Keep a prompt that leaves room for two tokens, else its last half-context; cap at the room."""
    if len(prompt) + 2 > context:
        prompt = prompt[-(context // 2) :]
    room = context - len(prompt)
    return prompt, room if cap is None else min(cap, room)


@torch.no_grad()
def reference_loop(
    target: PreTrainedModel,
    propose: Propose,
    prompt: list[int],
    *,
    window: int,
    max_draft: int | None,
    cap: int | None,
    eos: int,
) -> ReferenceRun:
    """Greedy speculative decoding from the definition: draft d tokens, accept the longest prefix
    equal to the target's argmax, emit the target's token after it; an accepted EOS ends the
    step and the generation; the draft never proposes past the cap."""
    prompt, cap = fitted(prompt, target.config.max_position_embeddings, cap)

    def predictions(tokens: list[int]) -> list[int]:
        return target(torch.tensor([tokens])).logits[0].argmax(dim=-1).tolist()

    tokens = [*prompt, predictions(prompt)[-1]]
    run = ReferenceRun(tokens=[tokens[-1]], steps=[])
    while len(run.tokens) < cap and run.tokens[-1] != eos:
        budget = max(0, min(window, max_draft or window, cap - len(run.tokens) - 1))
        drafted = propose(tokens, budget)
        predicted = predictions(tokens + drafted)[len(tokens) - 1 :]
        accepted = 0
        while accepted < budget and drafted[accepted] == predicted[accepted]:
            accepted += 1
        emitted = [*drafted[:accepted], predicted[accepted]]
        eos_ended = eos in drafted[:accepted]
        if eos_ended:
            emitted = drafted[: drafted.index(eos) + 1]
            accepted = budget = len(emitted)
        run.steps.append((budget, accepted, eos_ended))
        run.tokens += emitted
        tokens += emitted
    return run


def propose_draft_model(lm: PreTrainedModel) -> Propose:
    def propose(tokens: list[int], count: int) -> list[int]:
        drafted: list[int] = []
        for _ in range(count):
            drafted.append(int(lm(torch.tensor([tokens + drafted])).logits[0, -1].argmax()))
        return drafted

    return propose


def propose_medusa(target: PreTrainedModel, weights: dict[str, torch.Tensor], blocks: int) -> Propose:
    """Head i: x + SiLU(W x + b) per residual block, then its LM head, on the target's final hidden
    state at the position that produced the last token; head i proposes the (i+1)-th token."""

    def propose(tokens: list[int], count: int) -> list[int]:
        hidden = target.get_decoder()(torch.tensor([tokens[:-1]])).last_hidden_state[0, -1]
        drafted = []
        for head in range(count):
            state = hidden
            for block in range(blocks):
                prefix = f"blocks.{head}.{block}.linear"
                state = state + F.silu(F.linear(state, weights[f"{prefix}.weight"], weights[f"{prefix}.bias"]))
            drafted.append(int(F.linear(state, weights[f"lm_heads.{head}.weight"]).argmax()))
        return drafted

    return propose


def eagle_layer(x: torch.Tensor, w: dict[str, torch.Tensor], config: dict[str, float]) -> torch.Tensor:
    """One pre-norm decoder layer (causal GQA attention with RoPE, SwiGLU MLP) on [time, hidden]."""
    heads, kv_heads, dim = (int(config[key]) for key in ("num_attention_heads", "num_key_value_heads", "head_dim"))
    eps, time = config["rms_norm_eps"], x.shape[0]
    normed = rms_norm(x, w["layer.attention_norm.weight"], eps)

    def per_head(name: str, count: int) -> torch.Tensor:
        return F.linear(normed, w[f"layer.{name}.weight"]).view(time, count, dim).transpose(0, 1)

    query = rope(per_head("q_proj", heads), config["rope_theta"])
    key = rope(per_head("k_proj", kv_heads), config["rope_theta"])
    value = per_head("v_proj", kv_heads)
    key, value = (t.repeat_interleave(heads // kv_heads, dim=0) for t in (key, value))
    scores = query @ key.transpose(1, 2) / math.sqrt(dim)
    scores = scores.masked_fill(torch.ones(time, time, dtype=torch.bool).triu(1), float("-inf"))
    attended = (scores.softmax(-1) @ value).transpose(0, 1).reshape(time, heads * dim)
    x = x + F.linear(attended, w["layer.o_proj.weight"])
    normed = rms_norm(x, w["layer.mlp_norm.weight"], eps)
    gated = F.silu(F.linear(normed, w["layer.gate_proj.weight"])) * F.linear(normed, w["layer.up_proj.weight"])
    return x + F.linear(gated, w["layer.down_proj.weight"])


def propose_eagle(target: PreTrainedModel, weights: dict[str, torch.Tensor], config: dict[str, float]) -> Propose:
    """EAGLE-3 drafting: at position t the head reads the fused target features of t (its own
    output at t-1 for drafted positions) and the embedding of token t+1, and proposes token t+2
    through the target's LM head."""
    layers = target.get_decoder().layers
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    eps = config["rms_norm_eps"]

    def target_features(tokens: list[int]) -> torch.Tensor:
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            layers[index].register_forward_hook(
                lambda _m, _a, out, index=index: captured.__setitem__(index, out[0] if isinstance(out, tuple) else out)
            )
            for index in config["feature_layers"]
        ]
        try:
            target.get_decoder()(torch.tensor([tokens]))
        finally:
            for hook in hooks:
                hook.remove()
        fused = torch.cat([captured[index][0] for index in config["feature_layers"]], dim=-1)
        return F.linear(fused, weights["fuse.weight"])

    def propose(tokens: list[int], count: int) -> list[int]:
        features = target_features(tokens[:-1])  # positions with target states
        next_tokens = list(tokens[1:])
        drafted: list[int] = []
        for _ in range(count):
            inputs = torch.cat(
                [
                    rms_norm(embed(torch.tensor(next_tokens)), weights["embedding_norm.weight"], eps),
                    rms_norm(features, weights["feature_norm.weight"], eps),
                ],
                dim=-1,
            )
            output = eagle_layer(F.linear(inputs, weights["input_proj.weight"]), weights, config)[-1]
            drafted.append(int(lm_head(rms_norm(output, weights["final_norm.weight"], eps)).argmax()))
            features = torch.cat([features, output[None]])
            next_tokens.append(drafted[-1])
        return drafted

    return propose


def aux_hidden_states(target: PreTrainedModel, tokens: list[int], ids: list[int]) -> torch.Tensor:
    """Concatenated hidden_states[i] for the aux ids (the last layer's output taken before the final norm)."""
    layers = target.get_decoder().layers
    raw_last: list[torch.Tensor] = []
    hook = layers[-1].register_forward_hook(
        lambda _m, _a, out: raw_last.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        hidden_states = list(target(torch.tensor([tokens]), output_hidden_states=True).hidden_states)
    finally:
        hook.remove()
    hidden_states[len(layers)] = raw_last[0]
    return torch.cat([hidden_states[i][0] for i in ids], dim=-1)


def propose_eagle3(target: PreTrainedModel, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> Propose:
    """EAGLE-3 drafting with the layer of tests/decoder/eagle3_reference.py: features fc(aux) for
    positions with target states, the layer's own pre-norm output for drafted ones."""
    embed, shape = target.get_input_embeddings(), shape_of(config)

    def propose(tokens: list[int], count: int) -> list[int]:
        features = F.linear(aux_hidden_states(target, tokens[:-1], list(config["aux_layer_ids"])), weights["fc.weight"])
        next_tokens = list(tokens[1:])
        drafted: list[int] = []
        for _ in range(count):
            output = eagle3_layer(embed(torch.tensor(next_tokens)), features, weights, shape)[-1]
            logits = draft_logits(output, weights, shape.eps)
            drafted.append(int(target_vocabulary_logits(logits, weights["d2t"], config["vocab_size"]).argmax()))
            features = torch.cat([features, output[None]])
            next_tokens.append(drafted[-1])
        return drafted

    return propose


def propose_mtp(target: PreTrainedModel, weights: dict[str, torch.Tensor], config: dict[str, float]) -> Propose:
    """vLLM's DeepSeek-MTP proposer (tests/decoder/vllm_reference.py), greedy, on the final hidden states."""
    layer = {name.removeprefix("mtp_block."): tensor for name, tensor in weights.items()}
    shape = {"heads": config["num_attention_heads"], "kv_heads": config["num_key_value_heads"]}
    shape |= {"head_dim": config["head_dim"], "eps": config["rms_norm_eps"], "theta": config["rope_theta"]}
    embedding, lm_head = target.get_input_embeddings().weight, target.get_output_embeddings().weight

    def propose(tokens: list[int], count: int) -> list[int]:
        hidden = target.get_decoder()(torch.tensor([tokens[:-1]])).last_hidden_state[0]
        drafted: list[int] = []
        for _ in range(count):
            logits = mtp_propose(layer, embedding, lm_head, torch.tensor(tokens), hidden, drafted, shape)
            drafted.append(int(logits[-1].argmax()))
        return drafted

    return propose


def reference_proposer(target: TargetModel, draft: Draft) -> Propose:
    """Reads only the draft's weights (state dict), its config values and the HF models."""
    weights = {name: tensor.detach() for name, tensor in draft.state_dict().items()}
    config = draft.config.model_dump()
    if config["kind"] == "draft_model":
        return propose_draft_model(draft.lm)  # type: ignore[attr-defined]
    if config["kind"] == "medusa":
        return propose_medusa(target.model, weights, config["num_residual_blocks"])
    if config["kind"] == "eagle3":
        return propose_eagle3(target.model, weights, config)
    if config["kind"] == "mtp":
        return propose_mtp(target.model, weights, config)
    return propose_eagle(target.model, weights, config)


@pytest.mark.parametrize("seed", [11, 12])
def test_exact_mode_equals_an_independent_reference_loop(seed: int) -> None:
    world = random_world(seed, prompts=4)
    rng = random.Random(seed)
    eos = world.target.eos_token_id
    assert eos is not None
    seen: Counter[str] = Counter()
    for kind in KINDS:
        draft = world.drafts[kind]
        propose = reference_proposer(world.target, draft)
        for prompt, cap in [(world.prompts[0], None), (world.prompts[2], None), (world.prompts[3], rng.randint(3, 9))]:
            window = rng.randint(1, 8)
            reference = reference_loop(
                world.target.model, propose, prompt, window=window, max_draft=draft.max_draft_tokens, cap=cap, eos=eos
            )
            exact = exact_generate(
                world.target, draft, prompt, window=window, max_new_tokens=cap, compare_target_only=False
            ).speculative
            where = (seed, kind, window, cap, prompt)
            assert exact.tokens == reference.tokens, where
            assert list(zip(exact.step_drafted, exact.step_accepted, exact.step_eos_ended, strict=True)) == (
                reference.steps
            ), where
            assert_invariants(exact)
            seen["accepted"] += sum(a for _, a, _ in reference.steps) > 0
            seen["eos"] += any(e for _, _, e in reference.steps)
    assert seen["accepted"] >= 6 and seen["eos"] >= 1, seen
