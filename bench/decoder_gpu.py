"""GPU benchmark at production shape: scored-mode vs exact-mode replay throughput (not a test).

Random-weight Qwen2.5-7B-shaped target in bfloat16, a 0.5B-shaped draft_model and an EAGLE
head; random token traffic. Measures

- the bf16 matmul ceiling (TFLOP/s of a large torch.matmul);
- scored mode, per draft kind: target tokens/s (prompt + completion, tokenized samples to counts)
  and the share of the ceiling the pair's FLOPs reach: 2 * matmul parameters per token for the
  target's and the draft's bodies over every token, their vocabulary projections over completion
  tokens only (scored mode projects nowhere else), a chained head's layer and projection once per
  depth (every depth counted, though greedy scoring skips depths the verify loop cannot read);
  plus a target-forward-only figure. Greedy first; the eagle3 head also at temperature 1 (every
  depth computed: a random head accepts almost nothing, so greedy barely reaches depth 2);
- packing: samples of heavy-tailed lengths (log-normal prompt and completion) scored in claims of
  `replay.samples_per_round` (64) and of 1,024 samples, one sample per row (right padding) and
  packed several to a row: the share of computed positions that hold no token, and the useful
  target tokens/s (empty positions are computed, not counted);
- torch.compile: scored draft_model throughput with the target's and the draft's bodies compiled
  (dynamic shapes: packed batches vary), the warm-up's seconds, and the ratio to eager (skipped with
  `--skip-compile`);
- exact mode (draft-then-verify, batch 1) and the target alone: generated tokens/s;
- the ratio scored / exact. Goals: scored >= 40,000 target tokens/s with the draft_model and with
  the eagle3 head (32k draft vocabulary), each >= 80% of the pair's FLOP ceiling, and >= 50x exact;
- an `eagle3` head exported by specwatch in the speculators format and imported back: its logits
  against the head it came from, its scored and exact throughput, and, where `vllm` is importable,
  whether `vllm.LLM` serves the target with the export as its EAGLE-3 draft (the target is saved to
  a temporary directory first; skipped with `--skip-vllm`).

Runs in under 8 minutes on one H200 (python 3.12, torch 2.11, transformers 5.17; nothing else
to install). `--smoke` uses tiny shapes and runs anywhere, the CPU included.

    python bench/decoder_gpu.py --out decoder_gpu.json
    python bench/decoder_gpu.py --smoke --out /tmp/decoder_gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder import (
    DraftModel,
    TargetModel,
    TokenizedSample,
    create_draft,
    exact_generate,
    load_draft,
    score_batch,
)
from decoder.batching import plan_batches
from decoder.drafts import DraftModelConfig, Eagle3Head
from decoder.formats.speculators import export_speculators_head

log = logging.getLogger("decoder_gpu")


@dataclass(frozen=True)
class Shape:
    target_hidden: int
    target_layers: int
    target_heads: int
    target_kv_heads: int
    target_intermediate: int
    vocab: int
    draft_hidden: int
    draft_layers: int
    draft_heads: int
    draft_kv_heads: int
    draft_intermediate: int
    batch: int
    prompt_tokens: int
    completion_tokens: int
    scored_batches: int
    exact_samples: int
    exact_new_tokens: int
    matmul_size: int
    draft_vocab: int


PRODUCTION = Shape(3584, 28, 28, 4, 18944, 152064, 896, 24, 14, 2, 4864, 64, 256, 768, 3, 2, 32, 8192, 32000)
SMOKE = Shape(64, 2, 4, 2, 128, 512, 32, 1, 2, 1, 64, 4, 24, 40, 1, 1, 8, 256, 128)
WINDOW = 4


def timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def matmul_ceiling(size: int, device: torch.device, dtype: torch.dtype) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    iterations = 20
    _, seconds = timed(lambda: [a @ b for _ in range(iterations)], device)
    return 2 * size**3 * iterations / seconds / 1e12


def placeholder_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with `vocab` entries: random-token traffic needs ids, not text."""
    words = {f"t{i}": i for i in range(vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t1", pad_token="t0", unk_token="t0")


def build_target(shape: Shape, device: torch.device, dtype: torch.dtype) -> TargetModel:
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.target_hidden,
        intermediate_size=shape.target_intermediate,
        num_hidden_layers=shape.target_layers,
        num_attention_heads=shape.target_heads,
        num_key_value_heads=shape.target_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=1,
        pad_token_id=0,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return TargetModel(model, placeholder_tokenizer(shape.vocab))


def build_draft_model(shape: Shape, target: TargetModel, device: torch.device) -> DraftModel:
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.draft_hidden,
        intermediate_size=shape.draft_intermediate,
        num_hidden_layers=shape.draft_layers,
        num_attention_heads=shape.draft_heads,
        num_key_value_heads=shape.draft_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=1,
        pad_token_id=0,
    )
    with torch.device(device):
        return DraftModel.for_target(DraftModelConfig(lm_config=config.to_dict()), target)


def random_samples(shape: Shape, count: int, seed: int) -> list[TokenizedSample]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        ids = torch.randint(2, shape.vocab, (shape.prompt_tokens + shape.completion_tokens,), generator=generator)
        samples.append(
            TokenizedSample(str(index), ids[: shape.prompt_tokens].tolist(), ids[shape.prompt_tokens :].tolist())
        )
    return samples


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pair_flops_per_token(target: TargetModel, draft: Any, completion_share: float) -> float:
    """Matmul FLOPs per target token of scoring with this pair (module docstring): bodies over every
    token, vocabulary projections over the completion share, a chained head once per depth."""

    def lm_flops(model: Any) -> float:
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        tied = embedding.data_ptr() == head.data_ptr()
        body = parameters(model) - head.numel() - (0 if tied else embedding.numel())
        return 2.0 * (body + head.numel() * completion_share)

    flops = lm_flops(target.model)
    if isinstance(draft, DraftModel):
        return flops + lm_flops(draft.lm)
    head_rows = (
        draft.lm_head.weight.numel() if isinstance(draft, Eagle3Head) else target.output_embeddings().weight.numel()
    )
    own_embedding = getattr(draft, "embed_tokens", None)
    body = parameters(draft) - (head_rows if isinstance(draft, Eagle3Head) else 0)
    body -= own_embedding.weight.numel() if own_embedding is not None else 0
    return flops + 2.0 * WINDOW * (body + head_rows * completion_share)


@torch.inference_mode()
def target_forward_only(target: TargetModel, samples: list[TokenizedSample], batch: int) -> float:
    """Seconds for target forwards + greedy argmax over the completion positions only."""
    device = target.device
    total = 0.0
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        ids = torch.tensor([s.prompt_ids + s.completion_ids for s in chunk], device=device)
        prompt = len(chunk[0].prompt_ids)

        def run(ids: torch.Tensor = ids, prompt: int = prompt) -> None:
            hidden = target.forward(ids, attention_mask=torch.ones_like(ids)).hidden[:, prompt - 1 : -1]
            flat = hidden.reshape(-1, hidden.shape[-1])
            for rows in flat.split(2048):
                target.logits(rows).argmax(dim=-1)

        _, seconds = timed(run, device)
        total += seconds
    return total


def scored_throughput(
    target: TargetModel,
    draft: Any,
    samples: list[TokenizedSample],
    shape: Shape,
    ceiling: float,
    *,
    temperature: float = 0.0,
    claim: int | None = None,
    pack: bool = True,
) -> dict[str, Any]:
    """Scored replay from tokenized samples to counts, in claims of `claim` samples (all at once by
    default), each claim packed and cut into batches as the replayer does."""
    device = target.device
    budget = shape.batch * (shape.prompt_tokens + shape.completion_tokens)
    warm = samples[: max(1, shape.batch // 8)]
    score_batch(target, draft, warm, window=WINDOW, temperature=temperature, batch_size=shape.batch)
    claims = [samples[i : i + (claim or len(samples))] for i in range(0, len(samples), claim or len(samples))]

    def run() -> list[Any]:
        return [
            score
            for part in claims
            for score in score_batch(
                target,
                draft,
                part,
                window=WINDOW,
                temperature=temperature,
                batch_size=shape.batch,
                max_batch_tokens=budget,
                pack=pack,
            )
        ]

    scores, seconds = timed(run, device)
    tokens = sum(s.prompt_tokens + s.completion_tokens for s in scores)
    completion = sum(s.completion_tokens for s in scores)
    rate = tokens / seconds
    pair = pair_flops_per_token(target, draft, completion / tokens)
    return {
        "seconds": seconds,
        "temperature": temperature,
        "target_tokens_per_s": rate,
        "completion_tokens_per_s": completion / seconds,
        "pair_gflops_per_token": pair / 1e9,
        "share_of_pair_ceiling": pair * rate / (ceiling * 1e12),
        "pack": pack,
        "empty_share": empty_share(claims, shape.batch, budget, pack),
    }


def compiled_throughput(
    target: TargetModel, draft: DraftModel, samples: list[TokenizedSample], shape: Shape, ceiling: float, eager: Any
) -> dict[str, Any]:
    """Scored draft_model throughput with both bodies under torch.compile (dynamic shapes), against
    the eager row measured before; the bodies are put back afterwards. An error is reported, not raised."""
    bodies = [(target.model, target.model.model), (draft.lm, draft.lm.model)]
    started = time.perf_counter()
    try:
        for owner, body in bodies:
            owner.model = torch.compile(body, dynamic=True)
        score_batch(target, draft, samples[: shape.batch], window=WINDOW, batch_size=shape.batch)
        warm_up = time.perf_counter() - started
        row = scored_throughput(target, draft, samples, shape, ceiling)
    except Exception as error:  # a benchmark reports what failed and goes on
        log.warning("torch.compile failed: %s", error)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}
    finally:
        for owner, body in bodies:
            owner.model = body
    row["warm_up_seconds"] = warm_up
    row["over_eager"] = row["target_tokens_per_s"] / eager["target_tokens_per_s"]
    log.info(
        "scored draft_model compiled: %.0f target tokens/s (x%.2f eager)", row["target_tokens_per_s"], row["over_eager"]
    )
    return row


def empty_share(claims: list[list[TokenizedSample]], batch: int, budget: int, pack: bool) -> float:
    """Computed positions that hold no token / computed positions, in score_batch's own batches."""
    computed = real = 0
    for part in claims:
        lengths = [s.num_tokens for s in part]
        plan = plan_batches(lengths, batch_size=batch, max_batch_tokens=budget, pack=pack)
        computed += sum(planned.layout.computed_positions for planned in plan)
        real += sum(lengths)
    return (computed - real) / computed if computed else 0.0


def varied_samples(shape: Shape, count: int, seed: int) -> list[TokenizedSample]:
    """Log-normal prompt and completion lengths (medians about 1/4 of the fixed shape's, sigma 1
    and 0.8, capped at twice it): chat traffic's heavy tail."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        prompt = int(
            min(
                2 * shape.prompt_tokens,
                1 + (shape.prompt_tokens / 4) * torch.randn(1, generator=generator).exp().item(),
            )
        )
        completion = int(
            min(
                2 * shape.completion_tokens,
                1 + (shape.completion_tokens / 4) * (0.8 * torch.randn(1, generator=generator)).exp().item(),
            )
        )
        ids = torch.randint(2, shape.vocab, (prompt + completion,), generator=generator)
        samples.append(TokenizedSample(str(index), ids[:prompt].tolist(), ids[prompt:].tolist()))
    return samples


def exact_throughput(target: TargetModel, draft: Any, samples: list[TokenizedSample], shape: Shape) -> dict[str, Any]:
    exact_generate(target, draft, samples[0].prompt_ids, window=WINDOW, max_new_tokens=4)  # warm-up
    spec_tokens = spec_seconds = base_tokens = base_seconds = 0.0
    for sample in samples[: shape.exact_samples]:
        result = exact_generate(
            target, draft, sample.prompt_ids, window=WINDOW, max_new_tokens=shape.exact_new_tokens, stop_at_eos=False
        )
        assert result.target_only is not None
        spec_tokens += len(result.speculative.tokens)
        spec_seconds += result.speculative.seconds
        base_tokens += len(result.target_only.tokens)
        base_seconds += result.target_only.seconds
    return {
        "speculative_tokens_per_s": spec_tokens / spec_seconds,
        "target_only_tokens_per_s": base_tokens / base_seconds,
    }


def exported_eagle3(
    target: TargetModel, directory: Path, device: torch.device, draft_vocab: int
) -> tuple[Eagle3Head, float]:
    """A fresh eagle3 head (a reduced draft vocabulary, as production heads have) exported in the
    speculators format and imported back; the largest logit difference on one random sequence."""
    with torch.device(device):
        head = create_draft("eagle3", target, draft_vocab_size=draft_vocab)
    assert isinstance(head, Eagle3Head)
    export_speculators_head(head, target, directory, verifier=str(directory.parent / "target"))
    imported = load_draft(directory, target)
    assert isinstance(imported, Eagle3Head)
    ids = torch.randint(2, target.vocab_size, (1, 64), device=device)
    with torch.no_grad():
        aux = torch.cat(list(target.forward(ids, feature_layers=head.feature_layers).features), dim=-1)
        difference = (head(aux, ids).float() - imported(aux, ids).float()).abs().max().item()
    return imported, difference


def vllm_serves(target: TargetModel, export_dir: Path) -> dict[str, Any]:
    """Whether vLLM (when importable) generates with the target and the exported eagle3 draft."""
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError as error:
        return {"importable": False, "reason": str(error)}
    target_dir = export_dir.parent / "target"
    target.model.save_pretrained(target_dir)
    target.tokenizer.save_pretrained(target_dir)
    speculative = {"method": "eagle3", "model": str(export_dir), "num_speculative_tokens": 4}
    try:
        llm = vllm.LLM(model=str(target_dir), speculative_config=speculative, max_model_len=2048)
        outputs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}], vllm.SamplingParams(max_tokens=16))
        return {
            "importable": True,
            "version": vllm.__version__,
            "served": True,
            "tokens": len(outputs[0].outputs[0].token_ids),
        }
    except Exception as error:  # the figure to report is whether it loads, and if not, why
        return {"importable": True, "version": vllm.__version__, "served": False, "error": repr(error)[:500]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (runs on the CPU)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--skip-eagle", action="store_true", help="measure the draft_model only")
    parser.add_argument("--skip-vllm", action="store_true", help="do not try to serve the eagle3 export with vLLM")
    parser.add_argument("--skip-compile", action="store_true", help="do not measure torch.compile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    shape = SMOKE if args.smoke else PRODUCTION
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        parser.error("no CUDA device: run with --smoke on the CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "shape": "smoke" if args.smoke else "production",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }

    ceiling = matmul_ceiling(shape.matmul_size, device, dtype)
    results["matmul_tflops"] = ceiling
    log.info("matmul ceiling %.1f TFLOP/s", ceiling)

    target = build_target(shape, device, dtype)
    draft_model = build_draft_model(shape, target, device)
    target_parameters = parameters(target.model)
    results["parameters"] = {"target": target_parameters, "draft_model": parameters(draft_model)}
    samples = random_samples(shape, shape.batch * shape.scored_batches, seed=1)
    tokens_per_sample = shape.prompt_tokens + shape.completion_tokens
    log.info(
        "target %.2fB parameters, %d samples x %d tokens", target_parameters / 1e9, len(samples), tokens_per_sample
    )

    target_forward_only(target, samples[: shape.batch], shape.batch)  # warm-up
    forward_seconds = target_forward_only(target, samples, shape.batch)
    forward_rate = len(samples) * tokens_per_sample / forward_seconds
    results["target_forward_only"] = {
        "target_tokens_per_s": forward_rate,
        "share_of_ceiling": 2 * target_parameters * forward_rate / (ceiling * 1e12),
    }
    log.info("target forward only: %.0f tokens/s", forward_rate)

    scored = {"draft_model": scored_throughput(target, draft_model, samples, shape, ceiling)}
    log.info("scored draft_model: %.0f target tokens/s", scored["draft_model"]["target_tokens_per_s"])
    eagle = None
    if not args.skip_eagle:
        with torch.device(device):
            eagle = create_draft("eagle", target)
        results["parameters"]["eagle"] = parameters(eagle)
        scored["eagle"] = scored_throughput(target, eagle, samples, shape, ceiling)
        log.info("scored eagle: %.0f target tokens/s", scored["eagle"]["target_tokens_per_s"])
    scratch = Path(tempfile.mkdtemp(prefix="specwatch-eagle3-"))
    eagle3, difference = exported_eagle3(target, scratch / "eagle3-speculators", device, shape.draft_vocab)
    results["eagle3_export"] = {"max_abs_logit_difference_after_round_trip": difference}
    results["parameters"]["eagle3"] = parameters(eagle3)
    scored["eagle3"] = scored_throughput(target, eagle3, samples, shape, ceiling)
    log.info("scored eagle3 (exported, re-imported): %.0f target tokens/s", scored["eagle3"]["target_tokens_per_s"])
    scored["eagle3_temperature_1"] = scored_throughput(target, eagle3, samples, shape, ceiling, temperature=1.0)
    log.info("scored eagle3 at T=1: %.0f target tokens/s", scored["eagle3_temperature_1"]["target_tokens_per_s"])
    for row in scored.values():
        row["target_share_of_ceiling"] = 2 * target_parameters * row["target_tokens_per_s"] / (ceiling * 1e12)
    results["scored"] = scored

    varied = varied_samples(shape, len(samples), seed=2)
    results["packing"] = {
        f"claims_of_{claim}_{'packed' if pack else 'one_per_row'}": scored_throughput(
            target, draft_model, varied, shape, ceiling, claim=claim, pack=pack
        )
        for claim in (64, 1024)
        for pack in (False, True)
    }
    for name, row in results["packing"].items():
        log.info("%s: %.1f%% empty, %.0f target tokens/s", name, 100 * row["empty_share"], row["target_tokens_per_s"])

    if not args.skip_compile:
        results["compiled"] = compiled_throughput(target, draft_model, samples, shape, ceiling, scored["draft_model"])

    exact = {"draft_model": exact_throughput(target, draft_model, samples, shape)}
    if eagle is not None:
        exact["eagle"] = exact_throughput(target, eagle, samples, shape)
    exact["eagle3"] = exact_throughput(target, eagle3, samples, shape)
    if not args.skip_vllm:
        results["vllm"] = vllm_serves(target, scratch / "eagle3-speculators")
    results["exact"] = exact
    best_scored = scored["draft_model"]
    ratio = best_scored["completion_tokens_per_s"] / exact["draft_model"]["speculative_tokens_per_s"]
    results["scored_over_exact"] = {
        "completion_tokens": ratio,
        "target_tokens": best_scored["target_tokens_per_s"] / exact["draft_model"]["speculative_tokens_per_s"],
    }
    results["goals"] = {
        "scored_target_tokens_per_s_at_least_40000": {
            kind: scored[kind]["target_tokens_per_s"] >= 40_000 for kind in ("draft_model", "eagle3")
        },
        "at_least_80_percent_of_pair_ceiling": {
            kind: scored[kind]["share_of_pair_ceiling"] >= 0.8 for kind in ("draft_model", "eagle3")
        },
        "scored_at_least_50x_exact": ratio >= 50,
    }
    results["seconds"] = time.perf_counter() - started
    emit(results, args.out)
    return 0


def emit(results: dict[str, Any], out: Path | None) -> None:
    """The results as JSON on stdout and, when given, in `out`."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
