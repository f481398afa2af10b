"""`draft_model`: an independent small causal LM with the target's tokenizer.

Its i-th proposal in a step is its next-token prediction after the tokens verified so far and
its own earlier proposals, so with teacher forcing every depth reads the same state: the
draft's hidden state at the position before the proposed token. Trained by distillation:
KL(target || draft) per position.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from decoder.drafts.base import (
    Draft,
    DraftConfigBase,
    DraftInputs,
    DraftSession,
    Proposal,
    masked_mean,
    register_draft,
)
from decoder.sampling import choose_tokens
from decoder.target import TargetModel, TargetOutput, crop_cache, new_cache, run_base_model


class DraftModelConfig(DraftConfigBase):
    kind: Literal["draft_model"] = "draft_model"
    lm_config: dict[str, Any] = Field(
        description="transformers config of the draft LM (PretrainedConfig.to_dict(), model_type included)"
    )


def build_causal_lm(lm_config: dict[str, Any]) -> PreTrainedModel:
    settings = dict(lm_config)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    model: PreTrainedModel = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model


@register_draft
class DraftModel(Draft):
    kind = "draft_model"
    config_class = DraftModelConfig
    objective = "KL(target || draft) per position"

    def __init__(self, config: DraftModelConfig, lm: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.lm = lm if lm is not None else build_causal_lm(config.lm_config)

    @classmethod
    def default_config(
        cls,
        target: TargetModel,
        *,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int | None = None,
        **overrides: Any,
    ) -> DraftModelConfig:
        """A smaller model of the target's architecture family and vocabulary."""
        config = type(target.config)(
            vocab_size=target.vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 3 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=target.context_length,
            tie_word_embeddings=False,
            bos_token_id=getattr(target.config, "bos_token_id", None),
            eos_token_id=getattr(target.config, "eos_token_id", None),
            pad_token_id=getattr(target.config, "pad_token_id", None),
            **overrides,
        )
        return DraftModelConfig(lm_config=config.to_dict())

    @classmethod
    def initialized(cls, config: DraftConfigBase, target: TargetModel) -> DraftModel:
        if not isinstance(config, DraftModelConfig):
            raise TypeError(f"draft_model needs a DraftModelConfig, got {type(config).__name__}")
        return cls(config)

    @classmethod
    def wrapping(cls, lm: PreTrainedModel) -> DraftModel:
        """A draft around an existing causal LM (e.g. a small model of the target's family)."""
        return cls(DraftModelConfig(lm_config=lm.config.to_dict()), lm)

    def start_session(self, target: TargetModel) -> DraftSession:
        return DraftModelSession(self)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return run_base_model(self.lm, input_ids.to(self.device), attention_mask.to(self.device), None, position_ids)

    def teacher_forced_proposals(self, inputs: DraftInputs, depth: int) -> list[torch.Tensor]:
        hidden = self.hidden_states(inputs.input_ids, inputs.attention_mask, inputs.position_ids)
        return [hidden] * depth

    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        scores: torch.Tensor = self.lm.get_output_embeddings()(states.to(self.dtype))
        return scores

    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_states(inputs.input_ids, inputs.attention_mask)
        draft_log_probs = torch.log_softmax(self.proposal_logits(hidden, 0), dim=-1)
        target_log_probs = torch.log_softmax(target_logits, dim=-1)
        kl = (target_log_probs.exp() * (target_log_probs - draft_log_probs)).sum(dim=-1)
        return masked_mean(kl, inputs.attention_mask.bool())


class DraftModelSession(DraftSession):
    """The draft LM with its own KV cache, cut back to the verified tokens after each step."""

    def __init__(self, draft: DraftModel) -> None:
        self.draft = draft
        self.cache = new_cache(draft.lm)
        self.fed: list[int] = []

    def update(self, tokens: torch.Tensor, verified: TargetOutput) -> None:
        verified_tokens = tokens.tolist()
        common = 0
        for fed_token, verified_token in zip(self.fed, verified_tokens, strict=False):
            if fed_token != verified_token:
                break
            common += 1
        crop_cache(self.cache, len(self.fed) - common)
        self.fed = self.fed[:common]

    def propose(
        self, tokens: torch.Tensor, count: int, temperature: float, generator: torch.Generator | None
    ) -> Proposal:
        if count == 0:
            return Proposal.empty(tokens.device)
        pending = tokens[len(self.fed) :]
        drafted, distributions = [], []
        for _ in range(count):
            hidden = run_base_model(self.draft.lm, pending[None].to(self.draft.device), cache=self.cache)
            self.fed.extend(pending.tolist())
            token, probs = choose_tokens(self.draft.proposal_logits(hidden[0, -1:], 0), temperature, generator)
            drafted.append(token)
            if probs is not None:
                distributions.append(probs)
            pending = token
        return Proposal(
            tokens=torch.cat(drafted).to(tokens.device),
            probs=torch.cat(distributions) if distributions else None,
        )
