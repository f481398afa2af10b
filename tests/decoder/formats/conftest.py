"""A small saved random target (a directory, as engines name their verifier) and eagle3 heads with random
weights for the engine-format tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from decoder import TargetModel, create_draft, load_target
from decoder.drafts import Eagle3Head
from tests.decoder.random_models import VOCAB, WorldSpec, random_lm, word_tokenizer

LAYERS = 4  # aux ids 1..3 are the ones vLLM collects


@pytest.fixture(scope="package")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = WorldSpec(seed=7, family="qwen2", context=40, layer_std=0.1, noise=0.05, medusa_heads=2)
    settings = random_lm(spec).config.to_dict() | {"num_hidden_layers": LAYERS, "layer_types": None}
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(7)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    directory = tmp_path_factory.mktemp("formats") / "target"
    lm.save_pretrained(directory)
    word_tokenizer(eos=1).save_pretrained(directory)
    return directory


@pytest.fixture(scope="package")
def random_target(target_dir: Path) -> TargetModel:
    return load_target(target_dir, device="cpu")


@torch.no_grad()
def random_eagle3(random_target: TargetModel, seed: int = 0, **config: object) -> Eagle3Head:
    """Every weight random (norms around 1); a reduced vocabulary gets scattered target ids."""
    head = create_draft("eagle3", random_target, **config)
    assert isinstance(head, Eagle3Head)
    generator = torch.Generator().manual_seed(seed)
    size = head.eagle3_config.draft_vocab_size
    if size < VOCAB:
        head.use_draft_vocabulary(torch.randperm(VOCAB, generator=generator)[:size], random_target)
    for name, parameter in head.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        parameter.copy_((1.0 + 0.2 * noise) if "norm" in name else 0.3 * noise)
    return head.eval()


def fixed_inputs(random_target: TargetModel, time: int = 11, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused aux states [1, time, 3H] and token ids [1, time]."""
    generator = torch.Generator().manual_seed(seed)
    aux = torch.randn(1, time, 3 * random_target.hidden_size, generator=generator)
    return aux, torch.randint(0, VOCAB, (1, time), generator=generator)
