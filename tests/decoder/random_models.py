"""Small random targets with a draft of every kind, built from config (no hub, no training).

A random transformer with small layer weights next to unit-scale token embeddings behaves like
a noisy bigram model: its greedy output settles into short cycles, which drafts can predict.
Each draft kind is made to predict it more or less well:

- draft_model: a copy of the target with relative noise on every weight;
- medusa: head i's LM head maps the target's one-token state to the token i + 2 steps along
  the target's bigram map, plus noise;
- eagle: input projection reading the token embedding only, so the head proposes the target's
  bigram successor of the token it is given, plus noise everywhere;
- eagle3: fc passes the last aux state (the target's last layer output) through and the layer adds
  only noise, so its output is the target's state at its own position; its LM head maps that state
  two steps along the target's bigram map, like medusa's first head (deeper chain steps read the
  same state again and repeat the token).
- mtp: the same for the MTP layer's eh_proj, with a sharpened shared-head norm.

The EOS id is the token the target's greedy output reaches most often after a few tokens, so
many completions end by EOS and others by a length cap. Models are float64, so the batched,
padded forward of scored mode and the cached one of exact mode agree on every argmax.

    world = random_world(seed=3)
    world.target, world.drafts["eagle"], world.prompts
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config

from decoder import Draft, TargetModel, create_draft, generate
from decoder.drafts import DraftModel, Eagle3Head, EagleHead, MedusaHeads, MtpHead

VOCAB = 48
PAD = 0


@dataclass(frozen=True)
class WorldSpec:
    """The random choices behind one world."""

    seed: int
    family: str
    context: int
    layer_std: float
    noise: float
    medusa_heads: int

    @classmethod
    def drawn(cls, seed: int) -> WorldSpec:
        rng = random.Random(seed)
        return cls(
            seed=seed,
            family=rng.choice(["llama", "qwen2"]),
            context=rng.choice([24, 32, 40]),
            layer_std=rng.choice([0.05, 0.1, 0.15]),
            noise=rng.choice([0.02, 0.05, 0.1]),
            medusa_heads=rng.randint(2, 5),
        )


@dataclass
class RandomWorld:
    spec: WorldSpec
    target: TargetModel
    drafts: dict[str, Draft]
    prompts: list[list[int]]


def word_tokenizer(eos: int) -> PreTrainedTokenizerFast:
    vocabulary = {f"t{index}": index for index in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=f"t{PAD}"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=f"t{eos}", pad_token=f"t{PAD}")


def random_lm(spec: WorldSpec) -> PreTrainedModel:
    """The target's weights, the same for a given spec (draft_model perturbs a second copy)."""
    config_class = LlamaConfig if spec.family == "llama" else Qwen2Config
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=spec.context,
        tie_word_embeddings=False,
        initializer_range=spec.layer_std,
        pad_token_id=PAD,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    model: PreTrainedModel = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float64)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    return model.eval()


@torch.no_grad()
def perturb(module: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Adds Gaussian noise of `scale` times each weight's own spread."""
    for parameter in module.parameters():
        spread = float(parameter.std()) if parameter.numel() > 1 else 1.0
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(parameter.dtype)
        parameter.add_(noise * scale * spread)


def noisy_copy_draft(spec: WorldSpec, generator: torch.Generator) -> DraftModel:
    lm = random_lm(spec)
    perturb(lm, spec.noise, generator)
    return DraftModel.wrapping(lm).eval()


@torch.no_grad()
def bigram_lm_head(target: TargetModel, steps: int) -> torch.Tensor:
    """LM-head weights mapping the target's state after token x to the token `steps` steps along the
    target's bigram map from x (steps = 1: the target's own prediction)."""
    single_token_states = target.forward(torch.arange(VOCAB)[:, None]).hidden[:, 0]
    successor = target.logits(single_token_states).argmax(dim=-1)
    ahead = torch.arange(VOCAB)
    for _ in range(steps):
        ahead = successor[ahead]
    weight = torch.zeros(VOCAB, target.hidden_size, dtype=single_token_states.dtype)
    return weight.index_add_(0, ahead, single_token_states)


@torch.no_grad()
def bigram_medusa(target: TargetModel, spec: WorldSpec, generator: torch.Generator) -> Draft:
    draft = create_draft("medusa", target, num_heads=spec.medusa_heads)
    assert isinstance(draft, MedusaHeads)
    for index, head in enumerate(draft.lm_heads):
        head.weight.copy_(bigram_lm_head(target, index + 2))
    perturb(draft, spec.noise, generator)
    return draft.eval()


def read_embedding_only(projection: torch.Tensor) -> None:
    """An input projection over cat(embedding, feature) that passes the embedding through."""
    hidden = projection.shape[0]
    projection.zero_()
    projection[:, :hidden] = torch.eye(hidden, dtype=projection.dtype)


@torch.no_grad()
def embedding_eagle(target: TargetModel, spec: WorldSpec, generator: torch.Generator) -> Draft:
    draft = create_draft("eagle", target)
    assert isinstance(draft, EagleHead)
    read_embedding_only(draft.input_proj.weight)
    draft.fuse.weight.mul_(0.1)
    perturb(draft, spec.noise, generator)
    return draft.eval()


@torch.no_grad()
def bigram_eagle3(target: TargetModel, spec: WorldSpec, generator: torch.Generator) -> Draft:
    draft = create_draft("eagle3", target)
    assert isinstance(draft, Eagle3Head)
    hidden = target.hidden_size
    perturb(draft, spec.noise, generator)
    draft.fc.weight.zero_()
    draft.fc.weight[:, 2 * hidden :] = torch.eye(hidden, dtype=draft.fc.weight.dtype)
    draft.chain_layer.self_attn.o_proj.weight.mul_(0.1)
    draft.chain_layer.mlp.down_proj.weight.mul_(0.1)
    draft.norm.weight.copy_(target.model.get_decoder().norm.weight)
    draft.lm_head.weight.copy_(bigram_lm_head(target, 2))
    return draft.eval()


@torch.no_grad()
def embedding_mtp(target: TargetModel, spec: WorldSpec, generator: torch.Generator) -> Draft:
    draft = create_draft("mtp", target)
    assert isinstance(draft, MtpHead)
    read_embedding_only(draft.eh_proj.weight)
    draft.shared_head.norm.weight.mul_(4.0)  # sharper: top logits rarely tie within a low temperature
    perturb(draft, spec.noise, generator)
    return draft.eval()


def frequent_eos(target: TargetModel, prompts: list[list[int]]) -> int:
    """The token that most greedy outputs reach first at index 2 or later (not the pad)."""
    reached: Counter[int] = Counter()
    for prompt in prompts:
        tokens = generate(target, None, prompt, window=0, max_new_tokens=None, stop_at_eos=False).tokens
        firsts = {token: tokens.index(token) for token in set(tokens)}
        reached.update(token for token, index in firsts.items() if index >= 2 and token != PAD)
    return min(reached, key=lambda token: (-reached[token], token)) if reached else 1


def random_prompts(spec: WorldSpec, count: int) -> list[list[int]]:
    """Short, middling and longer-than-context prompts."""
    rng = random.Random(spec.seed + 1)
    lengths = [rng.randint(1, 6), rng.randint(6, spec.context // 2), spec.context + rng.randint(1, spec.context)]
    lengths += [rng.randint(1, spec.context + 8) for _ in range(count - len(lengths))]
    return [[rng.randrange(1, VOCAB) for _ in range(length)] for length in lengths]


def random_world(seed: int, prompts: int = 5) -> RandomWorld:
    spec = WorldSpec.drawn(seed)
    lm = random_lm(spec)
    chosen_prompts = random_prompts(spec, prompts)
    eos = frequent_eos(TargetModel(lm, word_tokenizer(eos=1)), chosen_prompts)
    target = TargetModel(lm, word_tokenizer(eos=eos))
    generator = torch.Generator().manual_seed(seed)
    drafts = {
        "draft_model": noisy_copy_draft(spec, generator),
        "medusa": bigram_medusa(target, spec, generator),
        "eagle": embedding_eagle(target, spec, generator),
        "eagle3": bigram_eagle3(target, spec, generator),
        "mtp": embedding_mtp(target, spec, generator),
    }
    return RandomWorld(spec, target, drafts, chosen_prompts)
