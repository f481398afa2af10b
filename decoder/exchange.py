"""One logged exchange as the token ids the engine read and emitted: the single rule replay, the
retrain gate and training follow.

Token ids the log carries win over text: they are what the engine's tokenizer produced, while
text re-tokenized here can split differently (a word the engine emitted as two pieces can come
back as one) and shifts every count after it. Without ids, a conversation goes through the chat
template, a raw prompt (completions API) is read as is, and the completion is re-tokenized.

How the generation ended decides its last token: a natural stop ends with the target's EOS (one
is appended when the ids or text lack it: a stop string or another stop token ends the
generation the same way), a completion cut short (`finish_reason` length or content_filter) has
none and its own length as the cap it was generated under.

    tokens = tokenize_exchange(target, Exchange(messages, completion, finish_reason="stop",
                                                 prompt_token_ids=..., completion_token_ids=...))
    tokens.sample("42"), tokens.source, tokens.retokenized_equal
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from decoder.samples import TokenizedSample
from decoder.target import TargetModel

CUT_SHORT = frozenset({"length", "content_filter"})
"""finish reasons of a generation cut before the model stopped: its completion has no EOS"""

TokenSource = Literal["ids", "completion_ids", "text"]
"""Where the completion's tokens came from (what acceptance is counted over). ids: prompt and
completion as logged; completion_ids: the completion as logged, the prompt rendered here; text: the
completion re-tokenized (the prompt still from its logged ids where a log has only those)."""


class Logged(Protocol):
    """What a stored sample holds of its exchange (replay's claimed samples, the retrain corpus)."""

    @property
    def messages(self) -> Sequence[Mapping[str, str]]: ...
    @property
    def completion(self) -> str: ...
    @property
    def raw_prompt(self) -> bool: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def prompt_token_ids(self) -> Sequence[int] | None: ...
    @property
    def completion_token_ids(self) -> Sequence[int] | None: ...


@dataclass(frozen=True)
class Exchange:
    """A request and its response as a log holds them."""

    messages: Sequence[Mapping[str, str]]
    completion: str
    raw_prompt: bool = False
    """the prompt is one raw text (completions API): messages[0] holds it, no chat template"""
    finish_reason: str | None = None
    """None (unknown) reads as a natural stop"""
    max_tokens: int | None = None
    prompt_token_ids: Sequence[int] | None = None
    completion_token_ids: Sequence[int] | None = None

    @property
    def natural_stop(self) -> bool:
        """The generation ended by the model's own choice (EOS): any finish but a cut."""
        return self.finish_reason not in CUT_SHORT

    @classmethod
    def of(cls, logged: Logged) -> Exchange:
        return cls(
            logged.messages,
            logged.completion,
            raw_prompt=logged.raw_prompt,
            finish_reason=logged.finish_reason,
            max_tokens=logged.max_tokens,
            prompt_token_ids=logged.prompt_token_ids,
            completion_token_ids=logged.completion_token_ids,
        )


@dataclass(frozen=True)
class ExchangeTokens:
    """The exchange as token ids, where they came from, and whether re-tokenizing its text gives
    the same ids (None when the log carried no ids to compare with)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    max_new_tokens: int | None
    source: TokenSource
    retokenized_equal: bool | None

    def sample(self, sample_id: str) -> TokenizedSample:
        return TokenizedSample(sample_id, self.prompt_ids, self.completion_ids, max_new_tokens=self.max_new_tokens)

    @property
    def sequence(self) -> list[int]:
        """Prompt then completion: one training sequence."""
        return self.prompt_ids + self.completion_ids


def tokenize_exchange(target: TargetModel, exchange: Exchange) -> ExchangeTokens:
    """The exchange as token ids (see the module docstring for the rule)."""
    logged_prompt = _usable_ids(target, exchange.prompt_token_ids)
    logged_completion = _usable_ids(target, exchange.completion_token_ids)
    retokenized = target.encode_completion(exchange.completion, end_with_eos=False)
    prompt = logged_prompt if logged_prompt is not None else _rendered_prompt(target, exchange)
    source: TokenSource
    if logged_completion is None:
        completion, source, retokenized_equal = retokenized, "text", None
    else:
        completion = logged_completion
        source = "ids" if logged_prompt is not None else "completion_ids"
        retokenized_equal = _without_eos(target, completion) == retokenized and (
            logged_prompt is None or _rendered_prompt(target, exchange) == logged_prompt
        )
    completion = _ended(target, completion, exchange.natural_stop)
    return ExchangeTokens(prompt, completion, _cap(completion, exchange), source, retokenized_equal)


def _rendered_prompt(target: TargetModel, exchange: Exchange) -> list[int]:
    """The prompt re-tokenized: a raw prompt as is, a conversation through the chat template."""
    if exchange.raw_prompt:
        return target.encode_prompt(exchange.messages[0]["content"])
    return target.encode_chat([dict(message) for message in exchange.messages])


def _usable_ids(target: TargetModel, ids: Sequence[int] | None) -> list[int] | None:
    """The logged ids when there are some and all lie in the target's vocabulary; None otherwise
    (ids of another tokenizer are not this target's tokens)."""
    if not ids or not all(0 <= token < target.vocab_size for token in ids):
        return None
    return list(ids)


def _without_eos(target: TargetModel, ids: list[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] == target.eos_token_id else ids


def _ended(target: TargetModel, completion: list[int], natural_stop: bool) -> list[int]:
    """A natural stop ends with EOS; a cut completion has none (an engine's ids may end with one
    only when the stop was natural, so a cut keeps what it has)."""
    eos = target.eos_token_id
    if natural_stop and eos is not None and (not completion or completion[-1] != eos):
        return [*completion, eos]
    return completion


def _cap(completion: list[int], exchange: Exchange) -> int | None:
    """The cap the engine generated under: a cut completion's own length; a natural stop's
    max_tokens where known (at least its length: re-tokenized text may run longer than the
    engine's ids); None (the room left in the context) otherwise."""
    if not exchange.natural_stop:
        return len(completion) or None
    if exchange.max_tokens is not None:
        return max(exchange.max_tokens, len(completion))
    return None
