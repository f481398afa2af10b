"""The `mtp` kind against vLLM's DeepSeek-MTP function (tests/decoder/vllm_reference.py) on the reference
target: one step, exact mode's chained proposals (both recycled states, across a verify step) and
scored mode's unrolled chain."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from decoder import TargetModel, create_draft
from decoder.drafts import DraftInputs, MtpHead
from decoder.drafts.mtp import mtp_config_for
from decoder.target import TargetOutput
from tests.decoder import vllm_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-5


@torch.no_grad()
def random_mtp(target: TargetModel, seed: int, **overrides: object) -> MtpHead:
    """An mtp head with every weight drawn at random (norm weights around 1, biases nonzero)."""
    head = create_draft("mtp", target, **overrides)
    assert isinstance(head, MtpHead)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in head.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        parameter.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.1 * noise)
    return head.eval()


def checkpoint_layer(head: MtpHead) -> dict[str, torch.Tensor]:
    """The head's tensors named as inside model.layers.{N}. (vLLM files the block under mtp_block.)."""
    return {name.removeprefix("mtp_block."): tensor for name, tensor in head.state_dict().items()}


def layer_shape(target: TargetModel) -> dict[str, float]:
    config = target.config
    return {
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "eps": config.rms_norm_eps,
        "theta": config.rope_parameters["rope_theta"],
    }


@pytest.fixture(scope="module")
def sequence(target: TargetModel) -> torch.Tensor:
    ids = target.encode_chat([{"role": "user", "content": "Good morning, how are you today?"}])
    return torch.tensor(ids + target.greedy_continuations([ids], max_new_tokens=12)[0])


def target_hidden(target: TargetModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return target.forward(ids[None]).hidden[0]


def reference_logits(target: TargetModel, head: MtpHead, tokens: torch.Tensor, drafted: list[int], **kw: bool):
    hidden = target_hidden(target, tokens[:-1])
    return vllm_reference.mtp_propose(
        checkpoint_layer(head),
        target.input_embeddings().weight.detach(),
        target.output_embeddings().weight.detach(),
        tokens,
        hidden,
        drafted,
        layer_shape(target),
        **kw,
    )


def test_one_step_over_a_sequence_is_vllms_mtp_layer(target: TargetModel, sequence: torch.Tensor) -> None:
    head = random_mtp(target, seed=1)
    ids = sequence[None]
    states = target.forward(ids)
    with torch.no_grad():
        proposals = head.teacher_forced_proposals(DraftInputs(ids, torch.ones_like(ids), states), depth=1)[0]
        ours = head.proposal_logits(proposals[0, 1:], 0)
    time = ids.shape[1]
    output, _ = vllm_reference.mtp_forward(
        checkpoint_layer(head),
        target.input_embeddings().weight.detach(),
        sequence[1:],
        states.hidden[0, : time - 1],
        torch.arange(time - 1),
        layer_shape(target),
    )
    truth = vllm_reference.mtp_logits(
        checkpoint_layer(head), target.output_embeddings().weight.detach(), output, target.config.rms_norm_eps
    )
    assert (ours.double() - truth).abs().max() <= TOLERANCE


@pytest.mark.parametrize("recycled_state", ["normed", "pre_norm"])
def test_exact_mode_chains_as_vllms_proposer_across_a_verify_step(
    target: TargetModel, sequence: torch.Tensor, recycled_state: str
) -> None:
    head = random_mtp(target, seed=2, recycled_state=recycled_state)
    normed = recycled_state == "normed"
    session = head.start_session(target)
    generator = torch.Generator().manual_seed(0)
    first = 10
    tokens = sequence[: first + 1]
    session.update(tokens, TargetOutput(hidden=target_hidden(target, tokens[:-1])))
    proposal = session.propose(tokens, 4, 1.0, generator)
    truth = reference_logits(target, head, tokens, proposal.tokens[:-1].tolist(), recycle_normed=normed)
    assert proposal.probs is not None
    assert (proposal.probs.double() - torch.softmax(torch.stack(truth), -1)).abs().max() <= TOLERANCE

    # the target verifies two positions further: the session drops its drafted tail
    tokens = sequence[: first + 3]
    session.update(tokens, TargetOutput(hidden=target_hidden(target, tokens[:-1])[first:]))
    proposal = session.propose(tokens, 3, 1.0, generator)
    truth = reference_logits(target, head, tokens, proposal.tokens[:-1].tolist(), recycle_normed=normed)
    assert proposal.probs is not None
    assert (proposal.probs.double() - torch.softmax(torch.stack(truth), -1)).abs().max() <= TOLERANCE


def test_scored_mode_depth_i_is_vllms_chain_over_the_known_tokens(target: TargetModel, sequence: torch.Tensor) -> None:
    head = random_mtp(target, seed=3)
    ids = sequence[None]
    with torch.no_grad():
        depths = head.teacher_forced_proposals(DraftInputs(ids, torch.ones_like(ids), target.forward(ids)), depth=3)
    for depth, states in enumerate(depths, start=1):
        for start in (0, 4, len(sequence) - depth - 2):
            # a chain that starts with target states up to `start` proposes token start + 1 + depth
            drafted = sequence[start + 2 : start + 1 + depth].tolist()
            truth = reference_logits(target, head, sequence[: start + 2], drafted)[-1]
            with torch.no_grad():
                ours = head.proposal_logits(states[0, start + depth], depth - 1)
            assert (ours.double() - truth).abs().max() <= TOLERANCE, (depth, start)


def test_the_layer_follows_the_target_family() -> None:
    sizes = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    assert mtp_config_for(Qwen2Config(**sizes)).attention_bias
    assert not mtp_config_for(LlamaConfig(**sizes)).attention_bias
    assert mtp_config_for(LlamaConfig(attention_bias=True, **sizes)).attention_bias
    with pytest.raises(ValueError, match="mlp_bias"):
        mtp_config_for(LlamaConfig(mlp_bias=True, **sizes))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        mtp_config_for(type("Gpt2", (), {"model_type": "gpt2"})())


def test_training_reaches_every_weight_of_the_layer(target: TargetModel, sequence: torch.Tensor) -> None:
    head = random_mtp(target, seed=4).train()
    ids = sequence[None]
    with torch.no_grad():
        states = target.forward(ids)
        target_logits = target.logits(states.hidden)
    head.training_loss(DraftInputs(ids, torch.ones_like(ids), states), target_logits).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
