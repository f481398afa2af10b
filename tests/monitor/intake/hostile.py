"""Hostile traffic records for fuzzing intake, as hypothesis strategies (shared by the file and HTTP fuzz tests).

    from tests.monitor.intake.hostile import hostile_records, good_record, seeded_pii_in
    case = data.draw(hostile_records(max_record_bytes=4096))
    line = case.render("tag-1")            # bytes of one JSONL line, no newline
    case.expect                            # "stored", "quarantined" or "either"

Every case renders with a unique tag so that records never collide as duplicates; `good_record(tag)`
is the well-formed record a test puts after each hostile one. PII is drawn only from SEEDED_PII, some
of it split by invisible format characters, so a test can search storage and logs for it afterwards.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

Expect = Literal["stored", "quarantined", "either"]

SEEDED_EMAILS = ("ana.lee@corp.example", "bo.chen@mail.example.cn", "minh.tran@corp.example.vn")
SEEDED_PHONES = ("+65 9123 4567", "13812345678", "+84 912 345 678")
SEEDED_PII = SEEDED_EMAILS + SEEDED_PHONES
FORMAT_CHARACTERS = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e")
READ_FIELDS = ("completion", "prompt", "model", "id", "metadata value", "metadata key", "message content")
INVALID_UTF8 = (b"\xff", b"\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80", b"\xe2\x82")


@dataclass(frozen=True)
class HostileRecord:
    """One hostile line: what makes it hostile, what intake must do with it, and how to write it."""

    kind: str
    expect: Expect
    render: Callable[[str], bytes]


def good_record(tag: str) -> dict[str, Any]:
    return {
        "id": f"good-{tag}",
        "messages": [{"role": "user", "content": f"How do I reset my password? ({tag})"}],
        "completion": "Open settings, choose security, then reset password.",
        "metadata": {"tenant": "acme", "region": "sg", "route": "chat"},
    }


def good_line(tag: str) -> bytes:
    return json.dumps(good_record(tag), ensure_ascii=False).encode()


def seeded_pii_in(text: str) -> list[str]:
    """The seeded PII found in `text`, read without format characters (which cannot hide it)."""
    visible = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return [pii for pii in SEEDED_PII if pii in visible]


def _base(tag: str, **fields: Any) -> dict[str, Any]:
    """A valid record; `trace` (a field intake does not read) keeps the tag when a case replaces the id."""
    record: dict[str, Any] = {
        "trace": tag,
        "id": f"hostile-{tag}",
        "prompt": "Summarise the ticket.",
        "completion": "The customer asked for a refund.",
        "metadata": {"tenant": "acme", "region": "sg"},
    }
    record.update(fields)
    return record


def _dump(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _with_field(tag: str, field: str, value: Any) -> dict[str, Any]:
    """A base record with `value` put into one field that intake reads."""
    if field == "metadata value":
        return _base(tag, metadata={"tenant": "acme", "note": value})
    if field == "metadata key":
        return _base(tag, metadata={"tenant": "acme", value: "x"} if isinstance(value, str) else {"k": value})
    if field == "message content":
        return _base(tag, prompt=None, messages=[{"role": "user", "content": value}])
    return _base(tag, **{field: value})


def _without_none(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}


pii = st.sampled_from(SEEDED_PII)


@st.composite
def hidden_pii(draw: st.DrawFn) -> str:
    """A seeded e-mail or phone, sometimes with an invisible format character inside it."""
    text = draw(pii)
    if draw(st.booleans()):
        at = draw(st.integers(1, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(FORMAT_CHARACTERS)) + text[at:]
    return text


def huge_integers() -> st.SearchStrategy[HostileRecord]:
    where = st.sampled_from(["id", "temperature", "timestamp", "metadata", "unread"])

    def case(field: str, digits: int) -> HostileRecord:
        number = "7" * digits

        def render(tag: str) -> bytes:
            line = _dump(_base(tag, **{field: "NUMBER"})) if field != "metadata" else _dump(_base(tag))
            if field == "metadata":
                return line.replace(b'"sg"', number.encode())
            return line.replace(b'"NUMBER"', number.encode())

        return HostileRecord(f"huge int in {field}", "quarantined", render)

    return st.builds(case, where, st.integers(4301, 8000))


def unstorable_characters() -> st.SearchStrategy[HostileRecord]:
    """Lone surrogates and NUL, written as JSON escapes, in a field intake reads (quarantined) or not."""

    def case(escape: str, field: str, prefix: str) -> HostileRecord:
        def render(tag: str) -> bytes:
            marker = f"MARK{tag}"
            record = _without_none(_with_field(tag, field, marker) if field != "unread" else _base(tag, extra=marker))
            return _dump(record).replace(marker.encode(), (prefix + escape).encode())

        expect: Expect = "stored" if field == "unread" else "quarantined"
        return HostileRecord(f"{escape} in {field}", expect, render)

    escapes = st.sampled_from(["\\ud800", "\\udfff", "\\udc00x", "x\\ud83d", "\\u0000", "a\\u0000b"])
    fields = st.sampled_from([*READ_FIELDS, "unread"])
    return st.builds(case, escapes, fields, st.sampled_from(["", "ok ", "公司 "]))


def deep_nesting() -> st.SearchStrategy[HostileRecord]:
    def case(depth: int, field: str) -> HostileRecord:
        def render(tag: str) -> bytes:
            line = _dump(_base(tag, **{field: "DEEP"}))
            return line.replace(b'"DEEP"', b"[" * depth + b"1" + b"]" * depth)

        expect: Expect = "either" if field == "extra" else "quarantined"
        return HostileRecord(f"nested {depth} deep in {field}", expect, render)

    return st.builds(case, st.integers(50, 200_000), st.sampled_from(["extra", "completion", "metadata"]))


def wrong_types() -> st.SearchStrategy[HostileRecord]:
    wrong = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(), st.just([]), st.just({}))
    fields = st.sampled_from(["completion", "messages", "metadata", "temperature", "timestamp", "id", "role", "model"])

    def case(field: str, value: Any) -> HostileRecord:
        if field == "id" and (value is None or type(value) is int):
            value = []  # an integer id is valid and the tag would be lost: duplicates across records

        def render(tag: str) -> bytes:
            if field == "role":
                return _dump(_base(tag, prompt=None, messages=[{"role": value, "content": "hi"}]))
            return _dump(_base(tag, **{field: value}))

        return HostileRecord(f"{type(value).__name__} for {field}", "either", render)

    return st.builds(case, fields, wrong)


def overlong_fields() -> st.SearchStrategy[HostileRecord]:
    def case(field: str, length: int) -> HostileRecord:
        text = "x" * length

        def render(tag: str) -> bytes:
            if field in ("route", "region"):
                return _dump(_base(tag, metadata={"tenant": "acme", field: text}))
            if field == "language":
                return _dump(_base(tag, metadata={"language": text}))
            return _dump(_base(tag, **{field: text}) if field != "id" else _base(tag, id=tag + text))

        expect: Expect = "stored" if field == "language" else "quarantined"
        return HostileRecord(f"{length} characters in {field}", expect, render)

    return st.one_of(
        st.builds(case, st.sampled_from(["model", "route", "region"]), st.integers(256, 3000)),
        st.builds(case, st.just("id"), st.integers(257, 2000)),
        st.builds(case, st.just("language"), st.integers(17, 2000)),
    )


def pii_outside_text() -> st.SearchStrategy[HostileRecord]:
    """Seeded PII in metadata keys and values, segment values, the language label, the model and the
    message text (some with format characters inside): stored, never in clear."""
    places = st.sampled_from(["metadata key", "route", "region", "note", "language", "model", "text", "completion"])

    def case(place: str, secret: str) -> HostileRecord:
        def render(tag: str) -> bytes:
            if place == "metadata key":
                record = _base(tag, metadata={"tenant": "acme", f"{secret} ": "x"})
            elif place in ("route", "region", "note", "language"):
                record = _base(tag, metadata={"tenant": "acme", place: f"to {secret} now"})
            elif place == "model":
                record = _base(tag, model=f"ft:{secret} x")
            elif place == "text":
                record = _base(tag, prompt=f"write to {secret} please")
            else:
                record = _base(tag, completion=f"call {secret} today")
            return _dump(record)

        return HostileRecord(f"PII in {place}", "stored", render)

    return st.builds(case, places, hidden_pii())


def broken_bytes() -> st.SearchStrategy[HostileRecord]:
    """Invalid UTF-8 at the start, in the middle or at the end of a line that also holds PII."""

    def case(bad: bytes, where: str, secret: str) -> HostileRecord:
        def render(tag: str) -> bytes:
            line = _dump(_base(tag, completion=f"mail {secret} soon"))
            at = {"start": 0, "middle": line.index(b" soon"), "end": len(line)}[where]
            return line[:at] + bad + line[at:]

        return HostileRecord("invalid UTF-8", "quarantined", render)

    return st.builds(case, st.sampled_from(INVALID_UTF8), st.sampled_from(["start", "middle", "end"]), pii)


def giant_lines(max_record_bytes: int) -> st.SearchStrategy[HostileRecord]:
    def case(factor: int, secret: str) -> HostileRecord:
        def render(tag: str) -> bytes:
            return _dump(_base(tag, prompt=f"{secret} " + "a" * (max_record_bytes * factor)))

        return HostileRecord(f"{factor}x the record limit", "quarantined", render)

    return st.builds(case, st.integers(1, 4), pii)


def garbage() -> st.SearchStrategy[HostileRecord]:
    """Arbitrary bytes after a '#': never JSON, so always quarantined; a newline would split it."""
    junk = st.binary(max_size=300).map(lambda data: data.replace(b"\n", b" "))
    # the tag keeps first lines apart: files whose first lines are equal are taken for one (see follow.py)
    return st.builds(lambda data: HostileRecord("garbage", "quarantined", lambda tag: b"#" + tag.encode() + data), junk)


def scalar_json() -> st.SearchStrategy[HostileRecord]:
    values = st.one_of(st.integers(-(10**30), 10**30), st.text(max_size=30), st.lists(st.integers(), max_size=3))
    return st.builds(
        lambda value: HostileRecord("not an object", "quarantined", lambda tag: _dump([tag, value])), values
    )


def hostile_openai() -> st.SearchStrategy[HostileRecord]:
    def case(secret: str, choices: Any) -> HostileRecord:
        def render(tag: str) -> bytes:
            record = {
                "request": {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "user": secret},
                "response": {"id": f"chatcmpl-{tag}", "choices": choices},
            }
            return _dump(record)

        ok = isinstance(choices, list) and choices and choices[0] == {"message": {"content": "hello"}}
        return HostileRecord("openai", "stored" if ok else "quarantined", render)

    choices = st.sampled_from([[{"message": {"content": "hello"}}], [], None, [{"message": "x"}], [{"text": ""}]])
    return st.builds(case, hidden_pii(), choices)


def hostile_records(max_record_bytes: int) -> st.SearchStrategy[HostileRecord]:
    """Any of the hostile kinds above."""
    return st.one_of(
        huge_integers(),
        unstorable_characters(),
        deep_nesting(),
        wrong_types(),
        overlong_fields(),
        pii_outside_text(),
        broken_bytes(),
        giant_lines(max_record_bytes),
        garbage(),
        scalar_json(),
        hostile_openai(),
    )
