"""What every draft kind provides, and the registry that picks a kind by name.

A draft kind is an `nn.Module` subclass registered with `@register_draft`, with a pydantic
config whose `kind: Literal[...]` field names it. It serves both replay modes and training:

- exact mode: `start_session()` returns a `DraftSession` that proposes tokens one step at a time
  and is told which tokens the target verified (with the target states at those positions);
- scored mode: `teacher_forced_proposals()` computes, in one batched pass over known sequences,
  the state from which each proposal depth predicts each token, and `proposal_scores()` maps it
  to logits in the head's own dtype (`proposal_tokens()` and `proposal_log_probability()` read
  those without a float32 copy of the vocabulary; a head with a reduced vocabulary overrides them);
- training: `training_loss()` against the target's outputs on a token batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from decoder.sampling import log_probability_of
from decoder.target import TargetModel, TargetOutput


class DraftConfigBase(BaseModel):
    """Fields every draft config has; subclasses add `kind: Literal[...]` and their own."""

    model_config = ConfigDict(extra="forbid")

    kind: str


@dataclass
class DraftInputs:
    """A token batch with the target's states over it: right-padded rows, or rows of packed
    sequences with each token's position in its own sequence (`decoder.samples.PackedBatch`);
    a draft attends only within a token's sequence."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: TargetOutput
    position_ids: torch.Tensor | None = None


@dataclass
class Proposal:
    """Drafted tokens of one step; `probs` are the distributions they were sampled from
    (None in greedy mode)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None

    @classmethod
    def empty(cls, device: torch.device) -> Proposal:
        return cls(tokens=torch.empty(0, dtype=torch.long, device=device))


class DraftSession(ABC):
    """Per-generation draft state in exact mode.

    `update(tokens, verified)` is called after the prefill and after every verify step with all
    tokens fixed so far (the last one emitted by the target, not yet seen by it) and the target
    states of the positions verified since the previous call; `propose` drafts after them."""

    @abstractmethod
    def update(self, tokens: torch.Tensor, verified: TargetOutput) -> None: ...

    @abstractmethod
    def propose(
        self, tokens: torch.Tensor, count: int, temperature: float, generator: torch.Generator | None
    ) -> Proposal: ...


DraftT = TypeVar("DraftT", bound="Draft")


class Draft(nn.Module, ABC):
    """Base class of the draft kinds."""

    kind: ClassVar[str]
    config_class: ClassVar[type[DraftConfigBase]]
    objective: ClassVar[str]
    """What `training_loss` optimizes, in words (recorded in a trained draft's metadata)."""

    def __init__(self, config: DraftConfigBase) -> None:
        super().__init__()
        self.config = config
        self.target_fingerprint = ""
        self.tokenizer_fingerprint = ""
        self.training_metadata: dict[str, Any] = {}

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Target decoder layers whose outputs the draft reads (besides the final hidden state)."""
        return ()

    @property
    def max_draft_tokens(self) -> int | None:
        """Most tokens one step can propose; None when the draft chains without limit."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def for_target(cls: type[DraftT], config: DraftConfigBase, target: TargetModel) -> DraftT:
        """Fresh weights for `target`, on its device and in its dtype."""
        draft = cls.initialized(config, target)
        draft.target_fingerprint = target.fingerprint
        draft.tokenizer_fingerprint = target.tokenizer_fingerprint
        draft.attach(target)
        return draft.to(device=target.device, dtype=target.dtype)

    @classmethod
    @abstractmethod
    def initialized(cls: type[DraftT], config: DraftConfigBase, target: TargetModel) -> DraftT:
        """A new draft of this kind with weights initialized from what `target` offers."""

    @classmethod
    @abstractmethod
    def default_config(cls, target: TargetModel, **overrides: Any) -> DraftConfigBase:
        """A config sized for `target`; keyword arguments override fields."""

    def attach(self, target: TargetModel) -> None:
        """Binds modules shared with the target (not saved with the draft); default: none."""

    @abstractmethod
    def start_session(self, target: TargetModel) -> DraftSession: ...

    @abstractmethod
    def teacher_forced_proposals(self, inputs: DraftInputs, depth: int) -> list[torch.Tensor]:
        """For each proposal depth i (1-based, list index i-1): states [batch, time, dim] where
        entry t is the state from which depth i proposes token t+1, the token target position t
        predicts, when earlier tokens of the step are the ones in `inputs`."""

    @abstractmethod
    def proposal_scores(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        """Logits over the target's vocabulary of depth `depth_index + 1` from states of
        `teacher_forced_proposals`, in the head's compute dtype."""

    def proposal_logits(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        """`proposal_scores` in float32 (the distributions exact mode samples from)."""
        return self.proposal_scores(states, depth_index).float()

    def proposal_tokens(self, states: torch.Tensor, depth_index: int) -> torch.Tensor:
        """Greedy proposals: the target id of each state's largest logit, the lowest id on a tie
        (the argmax of `proposal_logits`: widening to float32 is exact, so no copy is made)."""
        return self.proposal_scores(states, depth_index).argmax(dim=-1)

    def proposal_log_probability(
        self, states: torch.Tensor, depth_index: int, tokens: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """log q(token) at `temperature` for each state and its token (float32)."""
        return log_probability_of(self.proposal_scores(states, depth_index), tokens, temperature)

    @abstractmethod
    def training_loss(self, inputs: DraftInputs, target_logits: torch.Tensor) -> torch.Tensor:
        """Scalar loss on a batch; `target_logits` are the target's float32 logits over it."""


DRAFT_KINDS: dict[str, type[Draft]] = {}


def register_draft(cls: type[DraftT]) -> type[DraftT]:
    """Class decorator: makes a draft kind loadable by its `kind` name."""
    DRAFT_KINDS[cls.kind] = cls
    return cls


def kind_objective(kind: str) -> str:
    """The training objective of a registered draft kind, in words (KeyError for an unknown kind)."""
    return DRAFT_KINDS[kind].objective


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true (0 when nothing is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum_x p(x) log q(x) per position, q = softmax(logits)."""
    return -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def shift_right(states: torch.Tensor, steps: int) -> torch.Tensor:
    """states[:, t - steps] at index t (zeros where t < steps), along the time axis."""
    if steps == 0:
        return states
    shifted = torch.zeros_like(states)
    shifted[:, steps:] = states[:, :-steps]
    return shifted
