"""The `eagle3` draft computes EAGLE-3's layer (checked against tests/decoder/eagle3_reference.py,
written from the definition), reads the aux hidden states vLLM numbers, and trains and replays with
a reduced draft vocabulary."""

from __future__ import annotations

import pytest
import torch

from decoder import TargetModel, create_draft
from decoder.drafts import Eagle3Head
from decoder.drafts.base import DraftInputs
from decoder.drafts.eagle3 import default_aux_layer_ids
from tests.decoder.eagle3_reference import shape_of, step_logits, target_vocabulary_logits
from tests.decoder.random_models import VOCAB, WorldSpec, random_lm, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_target(layers: int = 2) -> TargetModel:
    spec = WorldSpec(seed=5, family="qwen2", context=40, layer_std=0.1, noise=0.05, medusa_heads=2)
    lm = random_lm(spec).float() if layers == 2 else random_lm_with_layers(spec, layers)
    return TargetModel(lm, word_tokenizer(eos=1))


def random_lm_with_layers(spec: WorldSpec, layers: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = random_lm(spec).config.to_dict() | {"num_hidden_layers": layers, "layer_types": None}
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


@torch.no_grad()
def random_head(target: TargetModel, seed: int = 0, **config: object) -> Eagle3Head:
    """An eagle3 head with every weight random (norms around 1), so each term shows in the output."""
    head = create_draft("eagle3", target, **config)
    assert isinstance(head, Eagle3Head)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in head.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        parameter.copy_((1.0 + 0.2 * noise) if "norm" in name else 0.3 * noise)
    return head.eval()


VARIANTS = [
    pytest.param({"norm_before_residual": False}, id="llama"),
    pytest.param({"norm_before_residual": True}, id="llama-norm-before-residual"),
    pytest.param({"layer_style": "qwen3"}, id="qwen3"),
    pytest.param({"layer_style": "qwen3", "norm_before_residual": True, "own_embedding": True}, id="qwen3-own-embed"),
    pytest.param({"draft_vocab_size": 20}, id="llama-reduced-vocab"),
    pytest.param({"layer_style": "qwen3", "draft_vocab_size": 17, "norm_before_residual": True}, id="qwen3-reduced"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_equals_the_reference_layer(variant: dict[str, object]) -> None:
    target = small_target()
    head = random_head(target, **variant)
    if head.eagle3_config.draft_vocab_size < VOCAB:
        size = head.eagle3_config.draft_vocab_size
        head.use_draft_vocabulary(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))[:size], target)
        head = random_head_keeping_vocabulary(head)
    weights = {name: tensor.detach() for name, tensor in head.state_dict().items()}
    embedding = weights.get("embed_tokens.weight", target.input_embeddings().weight.detach())
    generator = torch.Generator().manual_seed(2)
    aux = torch.randn(9, 3 * target.hidden_size, generator=generator)
    tokens = torch.randint(0, VOCAB, (9,), generator=generator)

    expected = step_logits(aux, embedding[tokens], weights, shape_of(head.config.model_dump()))
    ours = head(aux[None], tokens[None])[0]
    assert (ours - expected).abs().max() <= 1e-5

    # the chain reads token t+1 at position t: one more position, whose output is not compared
    features = head.fc(torch.cat([aux, torch.zeros(1, aux.shape[1])])[None])
    outputs = head.chain_outputs(features, torch.cat([tokens[:1], tokens])[None], torch.ones(1, 10), 1)
    full = head.proposal_logits(outputs[0][:, :9], 0)[0]
    expected_full = target_vocabulary_logits(expected, weights["d2t"], VOCAB)
    assert torch.equal(full.isinf(), expected_full.isinf())
    finite = ~expected_full.isinf()
    assert (full[finite] - expected_full[finite]).abs().max() <= 1e-5


@torch.no_grad()
def random_head_keeping_vocabulary(head: Eagle3Head) -> Eagle3Head:
    """Random weights again after use_draft_vocabulary copied the target's LM head rows."""
    generator = torch.Generator().manual_seed(3)
    head.lm_head.weight.copy_(0.3 * torch.randn(head.lm_head.weight.shape, generator=generator))
    return head


def test_reduced_vocabulary_maps_draft_ids_to_target_ids() -> None:
    target = small_target()
    head = random_head(target, draft_vocab_size=5)
    chosen = torch.tensor([40, 3, 11, 7, 29])
    head.use_draft_vocabulary(chosen, target)
    assert head.draft_token_ids.tolist() == sorted(chosen.tolist())
    assert head.t2d.sum() == 5 and head.t2d[chosen].all()
    assert torch.equal(head.lm_head.weight, target.output_embeddings().weight[head.draft_token_ids])
    logits = head.proposal_logits(torch.randn(4, target.hidden_size), 0)
    assert logits.shape == (4, VOCAB) and (logits.isfinite().sum(-1) == 5).all()
    assert set(logits.argmax(-1).tolist()) <= set(chosen.tolist())


@torch.no_grad()
def test_greedy_tokens_and_log_q_read_the_draft_vocabulary_like_the_full_logits() -> None:
    """Scored mode's greedy proposal and log q come from the draft-vocabulary logits; they must be the
    argmax and the log-softmax of the target-vocabulary logits (the reference's expansion through d2t),
    a tie going to the lowest target id, a token outside the draft vocabulary getting -inf."""
    target = small_target()
    head = random_head_keeping_vocabulary(random_head(target, draft_vocab_size=6))
    head.use_draft_vocabulary(torch.tensor([33, 2, 17, 9, 41, 25]), target)
    head = random_head_keeping_vocabulary(head)
    states = torch.randn(64, target.hidden_size, generator=torch.Generator().manual_seed(7))
    weights = {name: tensor.detach() for name, tensor in head.state_dict().items()}
    full = target_vocabulary_logits(head.draft_logits(states), weights["d2t"], VOCAB)
    assert torch.equal(head.proposal_tokens(states, 0), full.argmax(dim=-1))

    tokens = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(8))
    for temperature in (0.7, 1.0):
        expected = torch.log_softmax(full / temperature, dim=-1).gather(-1, tokens[:, None])[:, 0]
        ours = head.proposal_log_probability(states, 0, tokens, temperature)
        assert torch.equal(ours.isinf(), expected.isinf()) and ours.isinf().any()
        finite = ~expected.isinf()
        assert (ours[finite] - expected[finite]).abs().max() <= 1e-5

    head.lm_head.weight.zero_()  # every logit 0: the tie goes to the lowest target id
    assert head.proposal_tokens(states, 0).unique().tolist() == [2]


@torch.no_grad()
def test_unsorted_draft_ids_still_break_ties_by_target_id() -> None:
    target = small_target()
    head = random_head_keeping_vocabulary(random_head(target, draft_vocab_size=3))
    head.d2t.copy_(torch.tensor([30, 4, -1]))  # draft ids 0, 1, 2 -> target ids 30, 5, 1 (descending)
    head.t2d.zero_()
    head.t2d[torch.tensor([30, 5, 1])] = True
    head.lm_head.weight.zero_()  # all three tie
    states = torch.randn(4, target.hidden_size)
    assert head.proposal_tokens(states, 0).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("draft_vocab_size", [VOCAB, 12])
def test_training_loss_is_finite_and_falls(draft_vocab_size: int) -> None:
    target = small_target()
    head = create_draft("eagle3", target, draft_vocab_size=draft_vocab_size, train_depth=2)
    input_ids = torch.randint(1, VOCAB, (3, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(input_ids)
    states = target.forward(input_ids, attention_mask=mask, feature_layers=head.feature_layers)
    target_logits = target.logits(states.hidden)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = head.training_loss(DraftInputs(input_ids, mask, states), target_logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert head.with_train_depth(3).eagle3_config.train_depth == 3


def test_aux_ids_read_hugging_face_hidden_states() -> None:
    """Aux id i is hidden_states[i], the raw residual stream: 0 the embedding output; for id N the last
    layer's output before the final norm (Hugging Face's hidden_states[N] has the norm applied)."""
    target = small_target()
    head = create_draft("eagle3", target, aux_layer_ids=(0, 1, 2))
    tokens = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))
    output = target.forward(tokens, feature_layers=head.feature_layers)
    hidden_states = target.model(tokens, output_hidden_states=True).hidden_states
    embedding_output, first_layer_output, last_layer_output = output.features
    assert torch.allclose(embedding_output, hidden_states[0], atol=1e-6)
    assert torch.allclose(first_layer_output, hidden_states[1], atol=1e-6)
    assert torch.allclose(target.model.get_decoder().norm(last_layer_output), hidden_states[2], atol=1e-6)
    assert not torch.allclose(last_layer_output, hidden_states[2], atol=1e-3)


@pytest.mark.parametrize(
    ("layers", "ids"),
    [(1, (0, 1, 1)), (2, (0, 1, 2)), (3, (1, 2, 3)), (4, (1, 2, 3)), (6, (1, 3, 5)), (8, (2, 4, 5)), (32, (2, 16, 29))],
)
def test_default_aux_ids(layers: int, ids: tuple[int, int, int]) -> None:
    """vLLM's default where it is valid and vLLM captures it; else spread over [1, N-1]; tiny targets
    get the highest ids speculators accepts."""
    assert default_aux_layer_ids(layers) == ids
    assert create_draft("eagle3", small_target(layers)).eagle3_config.aux_layer_ids == default_aux_layer_ids(layers)
