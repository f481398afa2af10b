"""The serving engine's own per-request speculative-decoding stats, read from a traffic record.

    from monitor.intake.engine_stats import engine_acceptance
    acceptance = engine_acceptance(json.loads(line), "auto")   # None when the record carries none
    acceptance.alpha, acceptance.rejected_basis, acceptance.to_dict()

Quantities (decoder.metrics, ARCHITECTURE.md "Acceptance metrics"): per verify step the draft proposes
d <= k tokens and the target accepts a <= d; over a request A = sum a (accepted drafts, never the bonus
token), D = sum d, S = verify steps, R = steps with a < d. alpha = A / (A + R) is specwatch's number; the
engines' headline "acceptance rate" is A / D, lower than alpha when k > 1; their mean acceptance length
is tau = 1 + A / S (no step here ends at an EOS: engines do not report which did).

What a payload fixes. A histogram (index j: steps that accepted exactly j drafts) gives S and A exactly,
and the per-position counts (position i: steps that accepted at least i + 1 drafts). D is the engine's
count, derivable only from per-step arrays: a payload with neither is refused. R is exact only from
per-step arrays (vLLM `detailed`): R = steps with accepted < drafted, `rejected_basis` "per_step".
Otherwise, with k known, R is estimated as S - hist[k], which counts a step whose draft was cut short
(d < k) and then fully accepted as a rejection, so it is an upper bound: `rejected_basis` "histogram".
With k unknown or no histogram, R is None and so is alpha: never guessed.

Where each engine puts it (verified against the sources named; TensorRT-LLM's is not merged):

- vLLM, `--per-request-spec-decode-metrics summary|detailed` (experimental): response root
  `metrics.speculative_decoding` {mean_acceptance_length, draft_acceptance_rate, acceptance_histogram
  (dense, length num_spec_tokens + 1, bonus token excluded), num_spec_steps, num_accepted_draft_tokens,
  num_draft_tokens, num_spec_tokens; `detailed` adds per_step_accepted / per_step_drafted, one entry per
  verify step}; null for n > 1. Source: vllm-project/vllm vllm/entrypoints/generate/base/protocol.py
  (`SpeculativeDecodingMetrics`, `PerRequestMetrics`, commit 022e555d), PR #48915 (OpenAI responses);
  PR #43310: in a stream it comes once, on the final `include_usage` chunk (choices []). With no verify
  step the engine reports mean_acceptance_length 1.0 and draft_acceptance_rate 0.0 (vLLM-Omni's copy of
  the accumulator, `RequestSpecDecodeMetrics.to_dict`; vLLM's own stats.py in the index predates it).
  num_draft_tokens is after drafts invalidated by structured output were removed, so a step may draft < k.
- SGLang `meta_info` (native /generate response root; on the OpenAI server `choices[i].meta_info` with
  `return_meta_info`, and `sglext.spec_tokens_details` with `return_spec_tokens_details`, a list for
  n > 1, on a chunk with choices [] when streaming): spec_verify_ct = S, spec_num_correct_drafts = A,
  spec_num_proposed_drafts = D = S * (speculative_num_draft_tokens - 1), spec_correct_drafts_histogram,
  spec_accept_rate = A / D, spec_accept_length = completion_tokens / S (it counts the prefill's token, so
  it is not 1 + A / S and is not checked). Older names, still sent as aliases: spec_accepted_drafts,
  spec_proposed_drafts, spec_accept_histogram; older still: spec_accept_token_num, spec_draft_token_num.
  Sent only when S > 0. The histogram grows to the largest accepted count + 1, so it does not tell k, and
  SGLang does not report k: R is unknown unless a gateway adds num_spec_tokens (specwatch envelope).
  Source: sgl-project/sglang python/sglang/srt/managers/tokenizer_manager.py
  `_calculate_spec_decoding_metrics` (commit 001067ff); PRs #18332 (histogram) and #33518 (sglext_spec):
  the OpenAI side was read in an indexed copy of serving_chat.py and openai/utils.py whose repository the
  index does not name (SpecTokensDetails fills absent fields with 0 and an absent histogram with []).
- TensorRT-LLM, PyTorch backend, `per_request_spec_decode_stats: true`: per choice
  `speculative_decoding` {acceptance_rate = A / D, total_accepted_draft_tokens, total_draft_tokens,
  num_spec_steps, acceptance_histogram (sized num_spec_tokens + 1), num_spec_tokens (null under
  draft_len_schedule)}; in a stream on the terminal chunk's choice; absent when the request never drafted;
  for tree drafting total_draft_tokens counts paths. Source: NVIDIA/TensorRT-LLM PR #19311 (open, not in a
  release) and ai-dynamo/aiperf's TRTLLMSpecDecodeAdapter and its per-request acceptance docs; no
  TensorRT-LLM source to check against.

Where it is looked for, first found wins: a top-level `engine_acceptance` (specwatch records; a gateway
may add it to an openai record too), then in the response (each chunk of a stream, the last one first):
`metrics.speculative_decoding` (vLLM), choice 0's `speculative_decoding` (TensorRT-LLM), choice 0's
`meta_info`, `sglext.spec_tokens_details`, then the root `meta_info` (SGLang; a meta_info without spec_*
fields is no payload). The envelope:

    "engine_acceptance": {"engine": "vllm" | "sglang" | "trtllm", "method"?: "eagle3",
                          "num_spec_tokens"?: 4, ...that engine's own fields, as it sent them}

Refused (EnginePayloadError, a RecordError whose reason names fields and types, never values): wrong
types (a bool is no count, a count is an integer), negatives, absurd sizes, A > D, drafts without
steps, a histogram longer than k + 1 or disagreeing with S or A or the per-step arrays, per-step arrays
of different lengths or with a_i > d_i or d_i > k or sums that disagree with S, A or D, a headline rate
that contradicts the counts by more than RATE_TOLERANCE, and D absent without per-step arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from decoder.counts import AcceptCounts
from monitor.intake.record_format import MAX_TOKEN_IDS, MAX_TOKENS_LIMIT, RecordError, RecordFormat, detect_format

ENGINES = ("vllm", "sglang", "trtllm")
_ENGINE_ALIASES = {"tensorrt_llm": "trtllm", "tensorrt-llm": "trtllm", "trt-llm": "trtllm"}
REJECTED_BASES = ("per_step", "histogram")
"""how `rejected` was known: counted from per-step arrays (exact), or S - hist[k] (an upper bound)"""
RATE_TOLERANCE = 1e-3
"""how far a reported rate or length may sit from the one its counts give (a rounded value passes)"""
MAX_COUNT = MAX_TOKENS_LIMIT
MAX_ENTRIES = MAX_TOKEN_IDS
"""entries a histogram or per-step array may hold (no request has more verify steps than tokens)"""
_Value = TypeVar("_Value")
_METHOD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

# Each engine's field names for specwatch's quantities; several names are aliases, the first the current.
_VLLM_FIELDS: dict[str, tuple[str, ...]] = {
    "steps": ("num_spec_steps",),
    "accepted": ("num_accepted_draft_tokens",),
    "drafted": ("num_draft_tokens",),
    "histogram": ("acceptance_histogram",),
    "num_spec_tokens": ("num_spec_tokens",),
    "per_step_accepted": ("per_step_accepted",),
    "per_step_drafted": ("per_step_drafted",),
    "draft_rate": ("draft_acceptance_rate",),
    "mean_length": ("mean_acceptance_length",),
}
_SGLANG_FIELDS: dict[str, tuple[str, ...]] = {
    "steps": ("spec_verify_ct",),
    "accepted": ("spec_num_correct_drafts", "spec_accepted_drafts", "spec_accept_token_num"),
    "drafted": ("spec_num_proposed_drafts", "spec_proposed_drafts", "spec_draft_token_num"),
    "histogram": ("spec_correct_drafts_histogram", "spec_accept_histogram"),
    "num_spec_tokens": ("num_spec_tokens",),  # not SGLang's: only a gateway's envelope carries it
    "draft_rate": ("spec_accept_rate",),
}
_TRTLLM_FIELDS: dict[str, tuple[str, ...]] = {
    "steps": ("num_spec_steps",),
    "accepted": ("total_accepted_draft_tokens",),
    "drafted": ("total_draft_tokens",),
    "histogram": ("acceptance_histogram",),
    "num_spec_tokens": ("num_spec_tokens",),
    "draft_rate": ("acceptance_rate",),
}
ENGINE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": _VLLM_FIELDS,
    "sglang": _SGLANG_FIELDS,
    "trtllm": _TRTLLM_FIELDS,
}
_SGLANG_SPEC_KEYS = frozenset(
    key for quantity, keys in _SGLANG_FIELDS.items() if quantity != "num_spec_tokens" for key in keys
)


class EnginePayloadError(RecordError):
    """An engine payload that is present but wrong; the record itself stays usable."""


@dataclass(frozen=True, kw_only=True)
class EngineAcceptance:
    """One request's acceptance as the serving engine counted it, in specwatch's quantities.

    `counts()` is only valid when `rejected` is known: alpha needs R, and a sample whose R is unknown
    must not enter a sum of AcceptCounts as R = 0. `alpha` is None then; A, D, S, tau, the histogram and
    the per-position counts stay exact."""

    engine: str
    """one of ENGINES"""
    method: str | None = None
    """the draft method (lower case, e.g. "eagle3") when the record says"""
    num_spec_tokens: int | None = None
    """k, the most drafts a step proposes; None when the engine does not say"""
    steps: int
    drafted: int
    accepted: int
    rejected: int | None
    """steps with accepted < drafted; None when unknown"""
    rejected_basis: str | None
    """one of REJECTED_BASES, None when `rejected` is unknown"""
    accept_histogram: list[int] = field(default_factory=list)
    """index j: steps that accepted exactly j drafts ([] when the engine sent none)"""
    accepted_per_position: list[int] = field(default_factory=list)
    """index i: steps that accepted at least i + 1 drafts ([] without a histogram)"""
    per_step_accepted: list[int] | None = None
    per_step_drafted: list[int] | None = None

    @property
    def alpha(self) -> float | None:
        """A / (A + R); None when R is unknown or nothing was drafted."""
        if self.rejected is None or self.accepted + self.rejected == 0:
            return None
        return self.accepted / (self.accepted + self.rejected)

    @property
    def draft_acceptance_rate(self) -> float | None:
        """A / D, the engines' headline acceptance rate; None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted > 0 else None

    @property
    def tau(self) -> float | None:
        """1 + A / S, the engines' mean acceptance length; None without verify steps."""
        return 1 + self.accepted / self.steps if self.steps > 0 else None

    def counts(self) -> AcceptCounts:
        """These counts as decoder.counts.AcceptCounts (eos_ended 0: engines do not report it). Raises
        ValueError when `rejected` is unknown; with basis "histogram" R is the upper-bound estimate."""
        if self.rejected is None:
            raise ValueError(f"{self.engine} acceptance without a rejected count: alpha is unknown")
        return AcceptCounts(
            accepted=float(self.accepted),
            rejected=float(self.rejected),
            drafted=float(self.drafted),
            steps=float(self.steps),
            eos_ended=0.0,
            accept_histogram=[float(count) for count in self.accept_histogram],
            accepted_per_position=[float(count) for count in self.accepted_per_position],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "method": self.method,
            "num_spec_tokens": self.num_spec_tokens,
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_basis": self.rejected_basis,
            "accept_histogram": list(self.accept_histogram),
            "accepted_per_position": list(self.accepted_per_position),
            "per_step_accepted": _copy(self.per_step_accepted),
            "per_step_drafted": _copy(self.per_step_drafted),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineAcceptance:
        """The inverse of to_dict; ValueError for an unknown engine or basis."""
        if data["engine"] not in ENGINES or data.get("rejected_basis") not in (*REJECTED_BASES, None):
            raise ValueError("engine acceptance: unknown engine or rejected basis")
        return cls(
            engine=data["engine"],
            method=data.get("method"),
            num_spec_tokens=_optional_int(data.get("num_spec_tokens")),
            steps=int(data["steps"]),
            drafted=int(data["drafted"]),
            accepted=int(data["accepted"]),
            rejected=_optional_int(data.get("rejected")),
            rejected_basis=data.get("rejected_basis"),
            accept_histogram=[int(count) for count in data.get("accept_histogram", [])],
            accepted_per_position=[int(count) for count in data.get("accepted_per_position", [])],
            per_step_accepted=_optional_ints(data.get("per_step_accepted")),
            per_step_drafted=_optional_ints(data.get("per_step_drafted")),
        )


def _copy(values: list[int] | None) -> list[int] | None:
    return None if values is None else list(values)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_ints(values: Any) -> list[int] | None:
    return None if values is None else [int(value) for value in values]


def engine_acceptance(value: dict[str, Any], fmt: RecordFormat = "auto") -> EngineAcceptance | None:
    """The engine's acceptance stats in one decoded record; None when it carries none (or null, as vLLM
    sends for n > 1). EnginePayloadError when a payload is present but wrong."""
    chosen = detect_format(value) if fmt == "auto" else fmt
    found = _envelope(value)
    if found is None and chosen == "openai":
        found = _in_response(value.get("response"))
    return None if found is None else _settle(_reported(found))


@dataclass(frozen=True)
class _Found:
    engine: str
    payload: dict[str, Any]
    where: str
    method: str | None = None


def _envelope(value: dict[str, Any]) -> _Found | None:
    """specwatch's top-level `engine_acceptance`: the engine's own fields, plus engine and method."""
    envelope = value.get("engine_acceptance")
    if envelope is None:
        return None
    if not isinstance(envelope, dict):
        raise EnginePayloadError(f"engine_acceptance: expected an object, got {type(envelope).__name__}")
    engine = _engine_name(envelope.get("engine"), "engine_acceptance.engine")
    method = _method(envelope.get("method"), "engine_acceptance.method")
    return _Found(engine, envelope, "engine_acceptance", method)


def _engine_name(value: Any, where: str) -> str:
    if value is None:
        raise EnginePayloadError(f"missing field: {where}")
    if not isinstance(value, str):
        raise EnginePayloadError(f"{where}: expected a string, got {type(value).__name__}")
    name = _ENGINE_ALIASES.get(value.strip().lower(), value.strip().lower())
    if name not in ENGINES:
        raise EnginePayloadError(f"{where}: not one of {sorted(ENGINES)}")
    return name


def _method(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EnginePayloadError(f"{where}: expected a string, got {type(value).__name__}")
    if not _METHOD.fullmatch(value):
        raise EnginePayloadError(f"{where}: not a method name (1 to 64 letters, digits, '_', '-', '.')")
    return value.lower()


def _in_response(response: Any) -> _Found | None:
    """The payload in a response, or in the chunks of a streamed one (the last chunk that has one)."""
    if isinstance(response, dict):
        return _in_body(response, "response")
    if isinstance(response, list):
        for index in reversed(range(len(response))):
            chunk = response[index]
            found = _in_body(chunk, f"response[{index}]") if isinstance(chunk, dict) else None
            if found is not None:
                return found
    return None


def _in_body(body: dict[str, Any], where: str) -> _Found | None:
    metrics = body.get("metrics")
    if isinstance(metrics, dict) and metrics.get("speculative_decoding") is not None:
        return _found("vllm", metrics["speculative_decoding"], f"{where}.metrics.speculative_decoding")
    choice = _choice_zero(body.get("choices"), where)
    if choice is not None:
        first, choice_where = choice
        if first.get("speculative_decoding") is not None:
            return _found("trtllm", first["speculative_decoding"], f"{choice_where}.speculative_decoding")
        found = _sglang_meta_info(first.get("meta_info"), f"{choice_where}.meta_info")
        if found is not None:
            return found
    found = _sglang_extension(body.get("sglext"), f"{where}.sglext")
    return found if found is not None else _sglang_meta_info(body.get("meta_info"), f"{where}.meta_info")


def _choice_zero(choices: Any, where: str) -> tuple[dict[str, Any], str] | None:
    """The choice whose index is 0 (or that has none), first such: a stream interleaves choices."""
    if not isinstance(choices, list):
        return None
    for index, choice in enumerate(choices):
        if isinstance(choice, dict) and choice.get("index") in (0, None):
            return choice, f"{where}.choices[{index}]"
    return None


def _sglang_meta_info(meta_info: Any, where: str) -> _Found | None:
    """SGLang's meta_info when it carries spec_* fields (it does only after a verify step)."""
    if not isinstance(meta_info, dict) or not any(meta_info.get(key) is not None for key in _SGLANG_SPEC_KEYS):
        return None
    return _Found("sglang", meta_info, where)


def _sglang_extension(sglext: Any, where: str) -> _Found | None:
    """`sglext.spec_tokens_details`: an object, or a list for n > 1 from which SGLang drops the choices
    without details, so its entries cannot be matched to choices: a list is read as no payload."""
    if not isinstance(sglext, dict):
        return None
    details = sglext.get("spec_tokens_details")
    if details is None or isinstance(details, list):
        return None
    return _found("sglang", details, f"{where}.spec_tokens_details")


def _found(engine: str, payload: Any, where: str) -> _Found:
    if not isinstance(payload, dict):
        raise EnginePayloadError(f"{where}: expected an object, got {type(payload).__name__}")
    return _Found(engine, payload, where)


@dataclass(frozen=True)
class _Reported:
    """One payload in specwatch's quantities, each value checked on its own; None where absent."""

    found: _Found
    names: dict[str, str]
    """quantity -> the engine's field (full path) it came from, for reasons"""
    steps: int | None
    accepted: int | None
    drafted: int | None
    histogram: list[int] | None
    num_spec_tokens: int | None
    per_step_accepted: list[int] | None
    per_step_drafted: list[int] | None
    draft_rate: float | None
    mean_length: float | None

    def name(self, quantity: str) -> str:
        return self.names[quantity]

    def key(self, quantity: str) -> str:
        """The field's own name, without where the payload sits."""
        return self.names[quantity].removeprefix(self.found.where + ".")


def _reported(found: _Found) -> _Reported:
    fields = _Fields(found)
    return _Reported(
        found=found,
        names=fields.names,
        steps=fields.count("steps"),
        accepted=fields.count("accepted"),
        drafted=fields.count("drafted"),
        histogram=fields.counts("histogram") or None,  # SGLang sends [] for "no histogram"
        num_spec_tokens=fields.count("num_spec_tokens"),
        per_step_accepted=fields.counts("per_step_accepted"),
        per_step_drafted=fields.counts("per_step_drafted"),
        draft_rate=fields.rate("draft_rate"),
        mean_length=fields.rate("mean_length"),
    )


class _Fields:
    """Reads one quantity at a time from a payload under the engine's names, checking its type."""

    def __init__(self, found: _Found) -> None:
        self.found = found
        self.keys = ENGINE_FIELDS[found.engine]
        self.names = {quantity: f"{found.where}.{keys[0]}" for quantity, keys in self.keys.items()}

    def count(self, quantity: str) -> int | None:
        return self._aliased(quantity, _count)

    def counts(self, quantity: str) -> list[int] | None:
        return self._aliased(quantity, _counts)

    def rate(self, quantity: str) -> float | None:
        return self._aliased(quantity, _rate)

    def _aliased(self, quantity: str, read: Callable[[Any, str], _Value]) -> _Value | None:
        """The quantity under its first name present (not null); another name present must agree."""
        present = [
            (f"{self.found.where}.{key}", self.found.payload[key])
            for key in self.keys.get(quantity, ())
            if self.found.payload.get(key) is not None
        ]
        values = [(name, read(value, name)) for name, value in present]
        if not values:
            return None
        name, value = values[0]
        for other, other_value in values[1:]:
            if other_value != value:
                raise EnginePayloadError(f"{other}: disagrees with {name.rsplit('.', 1)[-1]}")
        self.names[quantity] = name
        return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnginePayloadError(f"{where}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_COUNT:
        raise EnginePayloadError(f"{where}: outside [0, {MAX_COUNT}]")
    return value


def _counts(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise EnginePayloadError(f"{where}: expected a list of integers, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise EnginePayloadError(f"{where}: {len(value)} entries, over the limit of {MAX_ENTRIES}")
    return [_count(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnginePayloadError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise EnginePayloadError(f"{where}: not a finite number >= 0")
    return number


def _settle(reported: _Reported) -> EngineAcceptance:
    """Check the quantities against each other, derive what the payload fixes, refuse what contradicts."""
    per_step = _per_step(reported)
    histogram = _histogram(reported, per_step)
    steps = _total(reported, "steps", *_derived_steps(histogram, per_step))
    accepted = _total(reported, "accepted", *_derived_accepted(histogram, per_step))
    drafted = _total(reported, "drafted", *_derived_drafted(per_step))
    _check_order(reported, steps, accepted, drafted)
    _check_rates(reported, steps, accepted, drafted)
    rejected, basis = _rejections(per_step, histogram, reported.num_spec_tokens, steps)
    return EngineAcceptance(
        engine=reported.found.engine,
        method=reported.found.method,
        num_spec_tokens=reported.num_spec_tokens,
        steps=steps,
        drafted=drafted,
        accepted=accepted,
        rejected=rejected,
        rejected_basis=basis,
        accept_histogram=histogram,
        accepted_per_position=_accepted_per_position(histogram),
        per_step_accepted=None if per_step is None else per_step[0],
        per_step_drafted=None if per_step is None else per_step[1],
    )


def _per_step(reported: _Reported) -> tuple[list[int], list[int]] | None:
    """(accepted, drafted) per verify step, each a_i <= d_i <= k, or None when not sent."""
    accepted, drafted = reported.per_step_accepted, reported.per_step_drafted
    if accepted is None and drafted is None:
        return None
    if accepted is None or drafted is None:
        missing, sent = ("per_step_accepted", "per_step_drafted")
        if drafted is None:
            missing, sent = sent, missing
        raise EnginePayloadError(f"missing field: {reported.name(missing)} (sent with {reported.key(sent)})")
    if len(accepted) != len(drafted):
        raise EnginePayloadError(
            f"{reported.name('per_step_drafted')}: not as long as {reported.key('per_step_accepted')}"
        )
    k = reported.num_spec_tokens
    for step, (a, d) in enumerate(zip(accepted, drafted, strict=True)):
        if a > d:
            raise EnginePayloadError(
                f"{reported.name('per_step_accepted')}[{step}]: exceeds {reported.key('per_step_drafted')}[{step}]"
            )
        if k is not None and d > k:
            raise EnginePayloadError(
                f"{reported.name('per_step_drafted')}[{step}]: exceeds {reported.key('num_spec_tokens')}"
            )
    return accepted, drafted


def _histogram(reported: _Reported, per_step: tuple[list[int], list[int]] | None) -> list[int]:
    """The histogram sent (at most k + 1 long, equal to the per-step arrays' when both came), else the
    per-step arrays', else []."""
    sent, k = reported.histogram, reported.num_spec_tokens
    if sent is not None and k is not None and len(sent) > k + 1:
        raise EnginePayloadError(f"{reported.name('histogram')}: longer than {reported.key('num_spec_tokens')} + 1")
    if per_step is None:
        return sent or []
    counted = _histogram_of(per_step[0])
    if sent is not None and _without_trailing_zeros(sent) != counted:
        raise EnginePayloadError(f"{reported.name('histogram')}: disagrees with {reported.key('per_step_accepted')}")
    return sent or counted


def _histogram_of(accepted_per_step: list[int]) -> list[int]:
    """index j: steps that accepted exactly j drafts, up to the largest j seen."""
    histogram = [0] * (max(accepted_per_step, default=-1) + 1)
    for accepted in accepted_per_step:
        histogram[accepted] += 1
    return histogram


def _without_trailing_zeros(histogram: list[int]) -> list[int]:
    end = len(histogram)
    while end and histogram[end - 1] == 0:
        end -= 1
    return histogram[:end]


def _derived_steps(histogram: list[int], per_step: tuple[list[int], list[int]] | None) -> tuple[int | None, str]:
    if per_step is not None:
        return len(per_step[0]), "the length of the per-step arrays"
    if histogram:
        return sum(histogram), "the sum of the histogram"
    return None, ""


def _derived_accepted(histogram: list[int], per_step: tuple[list[int], list[int]] | None) -> tuple[int | None, str]:
    if per_step is not None:
        return sum(per_step[0]), "the sum of per_step_accepted"
    if histogram:
        return sum(j * count for j, count in enumerate(histogram)), "the histogram's sum of j * count"
    return None, ""


def _derived_drafted(per_step: tuple[list[int], list[int]] | None) -> tuple[int | None, str]:
    if per_step is not None:
        return sum(per_step[1]), "the sum of per_step_drafted"
    return None, "drafted tokens cannot be derived from a histogram"


def _total(reported: _Reported, quantity: str, derived: int | None, derivation: str) -> int:
    """The reported total, which must equal what the histogram or per-step arrays give; or that."""
    sent: int | None = getattr(reported, quantity)
    if sent is None:
        if derived is None:
            reason = f" ({derivation})" if derivation else ""
            raise EnginePayloadError(f"missing field: {reported.name(quantity)}{reason}")
        return derived
    if derived is not None and sent != derived:
        raise EnginePayloadError(f"{reported.name(quantity)}: differs from {derivation}")
    return sent


def _check_order(reported: _Reported, steps: int, accepted: int, drafted: int) -> None:
    if accepted > drafted:
        raise EnginePayloadError(f"{reported.name('accepted')}: exceeds {reported.key('drafted')}")
    if drafted > 0 and steps == 0:
        raise EnginePayloadError(f"{reported.name('drafted')}: drafted tokens without a verify step")


def _check_rates(reported: _Reported, steps: int, accepted: int, drafted: int) -> None:
    """Headline rates must be what the counts give; engines report 0.0 and 1.0 when nothing was drafted."""
    if reported.draft_rate is not None and not _close(reported.draft_rate, accepted / drafted if drafted else 0.0):
        raise EnginePayloadError(
            f"{reported.name('draft_rate')}: contradicts {reported.key('accepted')} / {reported.key('drafted')}"
        )
    if reported.mean_length is not None and not _close(reported.mean_length, 1 + accepted / steps if steps else 1.0):
        raise EnginePayloadError(
            f"{reported.name('mean_length')}: contradicts 1 + {reported.key('accepted')} / {reported.key('steps')}"
        )


def _close(reported: float, expected: float) -> bool:
    return math.isclose(reported, expected, rel_tol=1e-6, abs_tol=RATE_TOLERANCE)


def _rejections(
    per_step: tuple[list[int], list[int]] | None, histogram: list[int], k: int | None, steps: int
) -> tuple[int | None, str | None]:
    """R and how it is known: exact from per-step arrays; S - hist[k] from a histogram when k is known
    (an upper bound: a shortened draft that was fully accepted counts as a rejection); else unknown."""
    if per_step is not None:
        return sum(a < d for a, d in zip(*per_step, strict=True)), "per_step"
    if histogram and k is not None:
        return steps - (histogram[k] if k < len(histogram) else 0), "histogram"
    return None, None


def _accepted_per_position(histogram: list[int]) -> list[int]:
    """index i: steps that accepted at least i + 1 drafts (a suffix sum of the histogram)."""
    counts, at_least = [], 0
    for count in reversed(histogram[1:]):
        at_least += count
        counts.append(at_least)
    return counts[::-1]
