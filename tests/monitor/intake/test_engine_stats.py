"""The serving engines' own per-request acceptance stats (monitor.intake.engine_stats) and streamed
gateway logs (monitor.intake.records): recorded payload shapes with hand-computed counts, a property test
against a reference computed from the definitions alone, and every inconsistency refused with a reason."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.intake.engine_stats import MAX_ENTRIES, EngineAcceptance, EnginePayloadError, engine_acceptance
from monitor.intake.records import RecordError, parse_record

ENGINE_PAYLOADS = Path(__file__).parent / "data" / "engine_payloads"


def engine_payload_record(name: str) -> dict[str, Any]:
    return json.loads((ENGINE_PAYLOADS / f"{name}.json").read_text())


# Hand-computed from each fixture: steps S, drafted D, accepted A, rejected R (and its basis),
# accepted_per_position[i] = steps that accepted at least i + 1 drafts.
EXPECTED_ACCEPTANCE: dict[str, dict[str, Any]] = {
    # hist [30, 4, 2, 5], k = 3: S = 41, A = 4 + 2*2 + 3*5 = 23, D = 41*3; R ~ S - hist[3] = 36
    "vllm_summary": dict(
        engine="vllm",
        num_spec_tokens=3,
        steps=41,
        drafted=123,
        accepted=23,
        rejected=36,
        rejected_basis="histogram",
        accepted_per_position=[11, 7, 5],
        alpha=23 / 59,
    ),
    # a = [3,1,0,2,3,1], d = [3,3,3,3,3,1]: R = steps with a < d = 3 (the last step drafted 1, took it)
    "vllm_detailed": dict(
        engine="vllm",
        num_spec_tokens=3,
        steps=6,
        drafted=16,
        accepted=10,
        rejected=3,
        rejected_basis="per_step",
        accepted_per_position=[5, 3, 2],
        alpha=10 / 13,
    ),
    # hist [2, 1, 0, 1, 3], k = 4: S = 7, A = 1 + 3 + 12 = 16, R ~ 7 - 3 = 4
    "vllm_stream": dict(
        engine="vllm",
        num_spec_tokens=4,
        steps=7,
        drafted=28,
        accepted=16,
        rejected=4,
        rejected_basis="histogram",
        accepted_per_position=[5, 4, 4, 3],
        alpha=16 / 20,
    ),
    # hist [4, 5, 6, 5]: S = 20, A = 5 + 12 + 15 = 32, D = 20 * 3; SGLang does not say k: R unknown
    "sglang_native": dict(
        engine="sglang",
        num_spec_tokens=None,
        steps=20,
        drafted=60,
        accepted=32,
        rejected=None,
        rejected_basis=None,
        accepted_per_position=[16, 11, 5],
        alpha=None,
    ),
    # hist [2, 3, 1, 4]: S = 10, A = 3 + 2 + 12 = 17, D = 30
    "sglang_openai_sglext": dict(
        engine="sglang",
        num_spec_tokens=None,
        steps=10,
        drafted=30,
        accepted=17,
        rejected=None,
        rejected_basis=None,
        accepted_per_position=[8, 5, 4],
        alpha=None,
    ),
    # older names: hist [1, 2, 2, 3]: S = 8, A = 2 + 4 + 9 = 15, D = 24
    "sglang_openai_meta_info": dict(
        engine="sglang",
        num_spec_tokens=None,
        steps=8,
        drafted=24,
        accepted=15,
        rejected=None,
        rejected_basis=None,
        accepted_per_position=[7, 5, 3],
        alpha=None,
    ),
    # hist [7, 1, 5, 7], k = 3: S = 20, A = 1 + 10 + 21 = 32, R ~ 20 - 7 = 13
    "trtllm_choice": dict(
        engine="trtllm",
        num_spec_tokens=3,
        steps=20,
        drafted=60,
        accepted=32,
        rejected=13,
        rejected_basis="histogram",
        accepted_per_position=[13, 12, 7],
        alpha=32 / 45,
    ),
    # num_spec_tokens null (draft_len_schedule): hist [3, 2, 4, 1]: S = 10, A = 2 + 8 + 3 = 13, R unknown
    "trtllm_stream_no_k": dict(
        engine="trtllm",
        num_spec_tokens=None,
        steps=10,
        drafted=25,
        accepted=13,
        rejected=None,
        rejected_basis=None,
        accepted_per_position=[7, 5, 1],
        alpha=None,
    ),
    # a = [2,0,1,1], d = [2,2,2,1]: R = 2 (the histogram would say 4 - 1 = 3)
    "specwatch_envelope_vllm": dict(
        engine="vllm",
        method="eagle3",
        num_spec_tokens=2,
        steps=4,
        drafted=7,
        accepted=4,
        rejected=2,
        rejected_basis="per_step",
        accepted_per_position=[3, 1],
        alpha=4 / 6,
    ),
    # the gateway added k = 3: R ~ 10 - hist[3] = 6
    "specwatch_envelope_sglang": dict(
        engine="sglang",
        method="eagle3",
        num_spec_tokens=3,
        steps=10,
        drafted=30,
        accepted=17,
        rejected=6,
        rejected_basis="histogram",
        accepted_per_position=[8, 5, 4],
        alpha=17 / 23,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ACCEPTANCE))
def test_each_engine_payload_gives_its_counts(name: str) -> None:
    expected = dict(EXPECTED_ACCEPTANCE[name])
    alpha = expected.pop("alpha")
    acceptance = engine_acceptance(engine_payload_record(name))
    assert acceptance is not None
    for key, value in expected.items():
        assert getattr(acceptance, key) == value, key
    assert acceptance.alpha == pytest.approx(alpha) if alpha is not None else acceptance.alpha is None
    assert acceptance.tau == pytest.approx(1 + acceptance.accepted / acceptance.steps)
    assert acceptance.draft_acceptance_rate == pytest.approx(acceptance.accepted / acceptance.drafted)


@pytest.mark.parametrize("name", sorted(set(EXPECTED_ACCEPTANCE) - {"sglang_native"}))
def test_parse_record_carries_the_engine_payload(name: str) -> None:
    record = parse_record(engine_payload_record(name))
    assert record.engine_acceptance == engine_acceptance(engine_payload_record(name))
    assert record.engine_acceptance_problem is None


def test_detailed_payload_keeps_its_per_step_arrays() -> None:
    acceptance = engine_acceptance(engine_payload_record("vllm_detailed"))
    assert acceptance is not None
    assert acceptance.per_step_accepted == [3, 1, 0, 2, 3, 1]
    assert acceptance.per_step_drafted == [3, 3, 3, 3, 3, 1]
    assert acceptance.accept_histogram == [1, 2, 1, 2]


def test_vllm_null_for_n_above_one_is_no_payload() -> None:
    record = parse_record(engine_payload_record("vllm_n2_null"))
    assert record.engine_acceptance is None and record.engine_acceptance_problem is None
    assert record.completion == "Autumn moon rises"


def test_a_gateway_envelope_wins_over_the_response_payload() -> None:
    value = engine_payload_record("vllm_summary")
    value["engine_acceptance"] = engine_payload_record("specwatch_envelope_vllm")["engine_acceptance"]
    acceptance = engine_acceptance(value)
    assert acceptance is not None and acceptance.steps == 4 and acceptance.method == "eagle3"


def test_meta_info_without_spec_fields_is_no_payload() -> None:
    value = engine_payload_record("sglang_native")
    value["response"]["meta_info"] = {"id": "x", "prompt_tokens": 3, "completion_tokens": 5}
    assert engine_acceptance(value, "openai") is None


def test_a_record_without_a_payload_has_none() -> None:
    value = engine_payload_record("vllm_summary")
    del value["response"]["metrics"]
    record = parse_record(value)
    assert record.engine_acceptance is None and record.engine_acceptance_problem is None


# Streamed gateway logs ------------------------------------------------------------------------------


def test_a_vllm_stream_is_read_as_the_response_it_stands_for() -> None:
    record = parse_record(engine_payload_record("vllm_stream"))
    assert record.completion == "Hello"
    assert record.finish_reason == "stop"
    assert record.id == "chatcmpl-vllm-stream"
    assert record.timestamp == datetime.fromtimestamp(1787366200, UTC)
    assert record.model == "qwen2.5-7b"
    assert record.max_tokens == 32
    assert record.prompt_token_ids == [151644, 872, 198]
    assert record.completion_token_ids == [9707, 11, 385]
    assert record.engine_acceptance is not None and record.engine_acceptance.steps == 7


def test_a_completions_stream_takes_its_text_and_last_finish_reason() -> None:
    record = parse_record(engine_payload_record("trtllm_stream_no_k"))
    assert record.completion == " Mercury, Venus"
    assert record.finish_reason == "length"
    assert record.raw_prompt


def test_a_stream_of_two_choices_keeps_choice_zero() -> None:
    value = engine_payload_record("vllm_stream")
    chunks = value["response"]
    chunks.insert(2, {"choices": [{"index": 1, "delta": {"content": " there"}, "finish_reason": "length"}]})
    record = parse_record(value)
    assert record.completion == "Hello" and record.finish_reason == "stop"


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([], "response: an empty list of stream chunks"),
        ([{"choices": [{"delta": {"content": "a"}}]}, "x"], "response[1]: not an object"),
        (
            [{"choices": [{"delta": {"content": 7}}]}],
            "response[0].choices[0].delta.content: expected a string, got int",
        ),
        ([{"choices": [{"delta": "a"}]}], "response[0].choices[0].delta: not an object"),
        ([{"choices": {"delta": {}}}], "response[0].choices: expected a list, got dict"),
        ([{"choices": [{"index": 1, "delta": {"content": "a"}}]}], "response: no stream chunk carries choice 0"),
        ([{"choices": [{"delta": {"role": "assistant"}}]}], "missing field: response[*].choices[0].delta.content"),
        ([{"choices": [{"delta": {"content": " "}}]}], "empty completion (response[*].choices[0].delta.content)"),
        ([{"choices": [{"text": "ok\x00"}]}], "response[0].choices[0].text: contains a NUL character"),
        ([{"choices": [{"text": "ok", "token_ids": [1, -2]}]}], "response[0].choices[0].token_ids[1]: not a token"),
    ],
)
def test_a_bad_stream_says_why(chunks: list[Any], reason: str) -> None:
    value = engine_payload_record("vllm_stream")
    value["response"] = chunks
    with pytest.raises(RecordError) as caught:
        parse_record(value)
    assert reason in str(caught.value)


# Refused payloads -----------------------------------------------------------------------------------


PAYLOAD_PATHS: dict[str, tuple[str | int, ...]] = {
    "vllm_summary": ("response", "metrics", "speculative_decoding"),
    "vllm_detailed": ("response", "metrics", "speculative_decoding"),
    "trtllm_choice": ("response", "choices", 0, "speculative_decoding"),
    "sglang_openai_sglext": ("response", "sglext", "spec_tokens_details"),
    "sglang_openai_meta_info": ("response", "choices", 0, "meta_info"),
    "specwatch_envelope_vllm": ("engine_acceptance",),
}


def payload_in(value: dict[str, Any], name: str) -> Any:
    """The engine payload inside fixture `name`'s record (a reference into `value`)."""
    payload: Any = value
    for step in PAYLOAD_PATHS[name]:
        payload = payload[step]
    return payload


def set_field(name: str, field: str, new: Any) -> dict[str, Any]:
    value = engine_payload_record(name)
    payload_in(value, name)[field] = new
    return value


def drop_fields(name: str, *fields: str) -> dict[str, Any]:
    value = engine_payload_record(name)
    for field in fields:
        del payload_in(value, name)[field]
    return value


def edited_steps(accepted: list[int] | None = None, drafted: list[int] | None = None) -> dict[str, Any]:
    value = engine_payload_record("vllm_detailed")
    payload = payload_in(value, "vllm_detailed")
    payload["per_step_accepted"] = accepted if accepted is not None else payload["per_step_accepted"]
    payload["per_step_drafted"] = drafted if drafted is not None else payload["per_step_drafted"]
    return value


VLLM = "response.metrics.speculative_decoding"
BAD_PAYLOADS = [
    (set_field("vllm_detailed", "num_spec_steps", True), f"{VLLM}.num_spec_steps: expected an integer, got bool"),
    (set_field("vllm_detailed", "num_draft_tokens", 16.0), f"{VLLM}.num_draft_tokens: expected an integer, got float"),
    (set_field("vllm_detailed", "num_accepted_draft_tokens", -1), f"{VLLM}.num_accepted_draft_tokens: outside [0,"),
    (set_field("vllm_detailed", "draft_acceptance_rate", "0.6"), f"{VLLM}.draft_acceptance_rate: expected a number"),
    (set_field("vllm_detailed", "draft_acceptance_rate", float("nan")), "draft_acceptance_rate: not a finite number"),
    (set_field("vllm_detailed", "acceptance_histogram", [1, "2", 1, 2]), f"{VLLM}.acceptance_histogram[1]: expected"),
    (set_field("vllm_detailed", "acceptance_histogram", 6), f"{VLLM}.acceptance_histogram: expected a list"),
    (set_field("vllm_summary", "num_spec_steps", 42), f"{VLLM}.num_spec_steps: differs from the sum of the histogram"),
    (
        set_field("vllm_summary", "num_accepted_draft_tokens", 22),
        f"{VLLM}.num_accepted_draft_tokens: differs from the hist",
    ),
    (set_field("vllm_detailed", "acceptance_histogram", [1, 2, 1, 2, 0]), "acceptance_histogram: longer than num_spec"),
    (set_field("vllm_detailed", "acceptance_histogram", [2, 1, 1, 2]), "acceptance_histogram: disagrees with per_step"),
    (edited_steps(drafted=[3, 3, 3, 3, 3]), f"{VLLM}.per_step_drafted: not as long as per_step_accepted"),
    (edited_steps(accepted=[3, 1, 0, 2, 3, 2]), f"{VLLM}.per_step_accepted[5]: exceeds per_step_drafted[5]"),
    (edited_steps(drafted=[4, 3, 3, 3, 3, 0]), f"{VLLM}.per_step_drafted[0]: exceeds num_spec_tokens"),
    (edited_steps(drafted=[3, 3, 2, 3, 3, 1]), f"{VLLM}.num_draft_tokens: differs from the sum of per_step_drafted"),
    (drop_fields("vllm_detailed", "per_step_drafted"), f"missing field: {VLLM}.per_step_drafted"),
    (set_field("vllm_detailed", "draft_acceptance_rate", 0.7), f"{VLLM}.draft_acceptance_rate: contradicts"),
    (set_field("vllm_detailed", "mean_acceptance_length", 2.0), f"{VLLM}.mean_acceptance_length: contradicts"),
    (set_field("vllm_summary", "num_draft_tokens", 22), f"{VLLM}.num_accepted_draft_tokens: exceeds num_draft_tokens"),
    (drop_fields("vllm_summary", "num_draft_tokens"), f"missing field: {VLLM}.num_draft_tokens (drafted tokens cannot"),
    (
        set_field("vllm_summary", "acceptance_histogram", [0] * (MAX_ENTRIES + 1)),
        f"{VLLM}.acceptance_histogram: {MAX_ENTRIES + 1} entries, over the limit",
    ),
    (
        set_field("trtllm_choice", "acceptance_rate", 0.6),
        "choices[0].speculative_decoding.acceptance_rate: contradicts",
    ),
    (set_field("trtllm_choice", "num_spec_steps", 21), "speculative_decoding.num_spec_steps: differs from the sum"),
    (
        set_field("sglang_openai_meta_info", "spec_num_correct_drafts", 14),
        "response.choices[0].meta_info.spec_accept_token_num: disagrees with spec_num_correct_drafts",
    ),
    (set_field("sglang_openai_sglext", "spec_accept_rate", 0.2), "spec_tokens_details.spec_accept_rate: contradicts"),
    (set_field("specwatch_envelope_vllm", "engine", "llama.cpp"), "engine_acceptance.engine: not one of"),
    (drop_fields("specwatch_envelope_vllm", "engine"), "missing field: engine_acceptance.engine"),
    (set_field("specwatch_envelope_vllm", "method", "eagle 3!"), "engine_acceptance.method: not a method name"),
    (set_field("specwatch_envelope_vllm", "method", 3), "engine_acceptance.method: expected a string, got int"),
]


def bad_payload_cases() -> list[Any]:
    return [pytest.param(value, reason, id=reason[:60]) for value, reason in BAD_PAYLOADS]


@pytest.mark.parametrize(("value", "reason"), bad_payload_cases())
def test_a_bad_payload_is_refused_with_a_reason_naming_the_field(value: dict[str, Any], reason: str) -> None:
    with pytest.raises(EnginePayloadError) as caught:
        engine_acceptance(value)
    assert reason in str(caught.value)


@pytest.mark.parametrize(("value", "reason"), bad_payload_cases())
def test_a_record_with_a_bad_payload_is_kept_with_the_problem(value: dict[str, Any], reason: str) -> None:
    record = parse_record(value)
    assert record.engine_acceptance is None
    assert record.engine_acceptance_problem is not None and reason in record.engine_acceptance_problem


def test_derived_totals_and_refusals_without_a_histogram() -> None:
    value = drop_fields(
        "specwatch_envelope_vllm", "acceptance_histogram", "num_spec_steps", "num_accepted_draft_tokens"
    )
    acceptance = engine_acceptance(value)
    assert acceptance is not None and (acceptance.steps, acceptance.accepted) == (4, 4)
    assert acceptance.accept_histogram == [1, 2, 1]
    value = drop_fields("specwatch_envelope_vllm", "acceptance_histogram")
    payload_in(value, "specwatch_envelope_vllm")["num_accepted_draft_tokens"] = 5
    with pytest.raises(
        EnginePayloadError, match="num_accepted_draft_tokens: differs from the sum of per_step_accepted"
    ):
        engine_acceptance(value)
    value = drop_fields("specwatch_envelope_vllm", "acceptance_histogram")
    payload_in(value, "specwatch_envelope_vllm")["per_step_accepted"].append(0)
    payload_in(value, "specwatch_envelope_vllm")["per_step_drafted"].append(0)
    with pytest.raises(EnginePayloadError, match="num_spec_steps: differs from the length of the per-step arrays"):
        engine_acceptance(value)


def test_drafts_without_a_verify_step_are_refused() -> None:
    value = set_field("vllm_summary", "num_spec_steps", 0)
    payload = payload_in(value, "vllm_summary")
    payload.update(acceptance_histogram=[0, 0, 0, 0], num_accepted_draft_tokens=0, num_draft_tokens=5)
    payload.update(mean_acceptance_length=1.0, draft_acceptance_rate=0.0)
    with pytest.raises(EnginePayloadError, match="num_draft_tokens: drafted tokens without a verify step"):
        engine_acceptance(value)


def test_a_request_without_verify_steps_is_read_as_vllm_reports_it() -> None:
    value = engine_payload_record("vllm_summary")
    payload_in(value, "vllm_summary").update(
        acceptance_histogram=[0, 0, 0, 0],
        num_spec_steps=0,
        num_accepted_draft_tokens=0,
        num_draft_tokens=0,
        mean_acceptance_length=1.0,
        draft_acceptance_rate=0.0,
    )
    acceptance = engine_acceptance(value)
    assert acceptance is not None and acceptance.steps == 0
    assert acceptance.alpha is None and acceptance.tau is None and acceptance.draft_acceptance_rate is None


def test_a_rounded_headline_rate_is_no_contradiction() -> None:
    value = set_field("vllm_summary", "draft_acceptance_rate", 0.187)
    assert engine_acceptance(value) is not None


def test_reasons_never_echo_payload_values() -> None:
    for field in ("num_spec_steps", "num_draft_tokens", "mean_acceptance_length"):
        with pytest.raises(EnginePayloadError) as caught:
            engine_acceptance(set_field("vllm_detailed", field, 987654))
        assert "987654" not in str(caught.value)
    with pytest.raises(EnginePayloadError) as caught:
        engine_acceptance(set_field("specwatch_envelope_vllm", "engine", "ana@corp.example"))
    assert "ana@corp" not in str(caught.value)


def test_an_sglang_list_for_n_above_one_is_no_payload() -> None:
    value = engine_payload_record("sglang_openai_sglext")
    details = value["response"]["sglext"]["spec_tokens_details"]
    value["response"]["sglext"]["spec_tokens_details"] = [details, details]
    assert engine_acceptance(value) is None


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    value = engine_payload_record("vllm_summary")
    value["response"]["metrics"]["speculative_decoding"] = [1, 2]
    with pytest.raises(EnginePayloadError, match=f"{VLLM}: expected an object, got list"):
        engine_acceptance(value)


# Properties against a reference written from the definitions alone --------------------------------


@dataclass(frozen=True)
class ReferenceCounts:
    """What a request's verify steps (a_i accepted of d_i drafted, window k) add up to, by definition."""

    k: int
    accepted_per_step: list[int]
    drafted_per_step: list[int]

    @property
    def steps(self) -> int:
        return len(self.accepted_per_step)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_per_step)

    @property
    def drafted(self) -> int:
        return sum(self.drafted_per_step)

    @property
    def rejected(self) -> int:
        return sum(1 for a, d in zip(self.accepted_per_step, self.drafted_per_step, strict=True) if a < d)

    @property
    def rejected_from_histogram(self) -> int:
        return self.steps - sum(1 for a in self.accepted_per_step if a == self.k)

    def histogram(self, size: int) -> list[int]:
        return [sum(1 for a in self.accepted_per_step if a == j) for j in range(size)]

    def at_least(self, position: int) -> int:
        return sum(1 for a in self.accepted_per_step if a >= position + 1)


@st.composite
def reference_counts(draw: st.DrawFn) -> ReferenceCounts:
    k = draw(st.integers(1, 8))
    drafted = draw(st.lists(st.integers(0, k), max_size=60))
    accepted = [draw(st.integers(0, d)) for d in drafted]
    return ReferenceCounts(k, accepted, drafted)


def vllm_payload(truth: ReferenceCounts, detailed: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "mean_acceptance_length": 1 + truth.accepted / truth.steps if truth.steps else 1.0,
        "draft_acceptance_rate": truth.accepted / truth.drafted if truth.drafted else 0.0,
        "acceptance_histogram": truth.histogram(truth.k + 1),
        "num_spec_steps": truth.steps,
        "num_accepted_draft_tokens": truth.accepted,
        "num_draft_tokens": truth.drafted,
        "num_spec_tokens": truth.k,
    }
    if detailed:
        payload.update(per_step_accepted=truth.accepted_per_step, per_step_drafted=truth.drafted_per_step)
    return {"response": {"choices": [{"text": "x"}], "metrics": {"speculative_decoding": payload}}}


def trtllm_payload(truth: ReferenceCounts, k_known: bool) -> dict[str, Any]:
    payload = {
        "acceptance_rate": truth.accepted / truth.drafted if truth.drafted else 0.0,
        "total_accepted_draft_tokens": truth.accepted,
        "total_draft_tokens": truth.drafted,
        "num_spec_steps": truth.steps,
        "acceptance_histogram": truth.histogram(truth.k + 1),
        "num_spec_tokens": truth.k if k_known else None,
    }
    return {"response": {"choices": [{"text": "x", "speculative_decoding": payload}]}}


def sglang_meta_info(truth: ReferenceCounts) -> dict[str, Any]:
    """SGLang drafts a fixed k per step (D = S * k) and grows its histogram to the largest count seen."""
    drafted = truth.steps * truth.k
    return {
        "spec_verify_ct": truth.steps,
        "spec_num_correct_drafts": truth.accepted,
        "spec_num_proposed_drafts": drafted,
        "spec_accept_rate": truth.accepted / drafted if drafted else 0.0,
        "spec_correct_drafts_histogram": truth.histogram(max(truth.accepted_per_step, default=-1) + 1),
    }


def assert_common_properties(acceptance: EngineAcceptance, truth: ReferenceCounts) -> None:
    assert acceptance.accepted == truth.accepted <= acceptance.drafted
    assert sum(acceptance.accept_histogram) == acceptance.steps == truth.steps
    positions = acceptance.accepted_per_position
    assert all(later <= earlier for earlier, later in itertools.pairwise(positions))
    assert positions == [truth.at_least(i) for i in range(len(positions))]
    assert all(truth.at_least(i) == 0 for i in range(len(positions), truth.k))
    assert EngineAcceptance.from_dict(json.loads(json.dumps(acceptance.to_dict()))) == acceptance


@settings(max_examples=200, deadline=None, database=None)
@given(reference_counts())
def test_every_engine_payload_agrees_with_the_definitions(truth: ReferenceCounts) -> None:
    detailed = engine_acceptance(vllm_payload(truth, detailed=True), "openai")
    assert detailed is not None and detailed.drafted == truth.drafted
    assert_common_properties(detailed, truth)
    assert (detailed.rejected, detailed.rejected_basis) == (truth.rejected, "per_step")

    for estimated in (
        engine_acceptance(vllm_payload(truth, detailed=False), "openai"),
        engine_acceptance(trtllm_payload(truth, k_known=True), "openai"),
    ):
        assert estimated is not None and estimated.drafted == truth.drafted
        assert_common_properties(estimated, truth)
        assert (estimated.rejected, estimated.rejected_basis) == (truth.rejected_from_histogram, "histogram")
        assert estimated.rejected >= truth.rejected

    unknown_k = engine_acceptance(trtllm_payload(truth, k_known=False), "openai")
    assert unknown_k is not None and unknown_k.rejected is None and unknown_k.alpha is None
    assert_common_properties(unknown_k, truth)


@settings(max_examples=200, deadline=None, database=None)
@given(reference_counts())
def test_sglang_payloads_agree_with_the_definitions(truth: ReferenceCounts) -> None:
    meta_info = sglang_meta_info(truth)
    native = engine_acceptance({"response": {"text": "x", "meta_info": meta_info}}, "openai")
    assert native is not None and native.drafted == truth.steps * truth.k
    assert_common_properties(native, truth)
    assert native.rejected is None and native.alpha is None
    envelope = {"completion": "x", "engine_acceptance": {"engine": "sglang", "num_spec_tokens": truth.k, **meta_info}}
    with_k = engine_acceptance(envelope, "specwatch")
    assert with_k is not None
    # SGLang sends no histogram for a request without verify steps: then R stays unknown
    assert with_k.rejected == (truth.rejected_from_histogram if truth.steps else None)


@settings(max_examples=50, deadline=None, database=None)
@given(reference_counts())
def test_counts_carry_the_same_rates(truth: ReferenceCounts) -> None:
    acceptance = engine_acceptance(vllm_payload(truth, detailed=True), "openai")
    assert acceptance is not None
    counts = acceptance.counts()
    assert counts.alpha == acceptance.alpha
    assert counts.tau == pytest.approx(acceptance.tau)
    assert counts.draft_acceptance_rate == acceptance.draft_acceptance_rate
    assert counts.accepted_per_position == [float(count) for count in acceptance.accepted_per_position]


def test_counts_refuse_an_unknown_rejected_count() -> None:
    acceptance = engine_acceptance(engine_payload_record("sglang_native"), "openai")
    assert acceptance is not None
    with pytest.raises(ValueError, match="rejected count"):
        acceptance.counts()


def test_from_dict_refuses_an_unknown_engine() -> None:
    data = copy.deepcopy(
        EngineAcceptance(engine="vllm", steps=0, drafted=0, accepted=0, rejected=None, rejected_basis=None).to_dict()
    )
    data["engine"] = "llama.cpp"
    with pytest.raises(ValueError, match="unknown engine"):
        EngineAcceptance.from_dict(data)
