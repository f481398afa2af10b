"""PII redaction: validators, each format, CJK adjacency, hard negatives, overlaps, the labelled set."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from monitor.intake.redact import (
    CARD,
    CN_ID,
    EMAIL,
    IP,
    PHONE,
    PiiMatch,
    Redactor,
    cn_resident_id_check_char,
    cn_resident_id_valid,
    luhn_valid,
    resolve_overlaps,
)

log = logging.getLogger(__name__)

DATA = Path(__file__).parent / "data"
LABELLED = DATA / "pii_labelled.jsonl"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def found(redactor: Redactor, text: str) -> list[tuple[str, str]]:
    return [(match.kind, text[match.start : match.end]) for match in redactor.find(text)]


# ---- validators -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "79927398713",
        "4111 1111-1111 1111",
    ],
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "79927398710", "1234567812345678", "", "7", "41111111a1111111"])
def test_luhn_rejects_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


def test_cn_resident_id_accepts_valid_ids() -> None:
    assert cn_resident_id_valid("11010519491231002X")
    assert cn_resident_id_valid("11010519491231002x")
    assert cn_resident_id_valid("110105 19491231 002X")
    body = "44030619900101123"
    assert cn_resident_id_valid(body + cn_resident_id_check_char(body))


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ("110105194912310021", "wrong check character"),
        ("37020219830229123" + cn_resident_id_check_char("37020219830229123"), "1983-02-29 does not exist"),
        ("11010519901301123" + cn_resident_id_check_char("11010519901301123"), "month 13"),
        ("11010521990101123" + cn_resident_id_check_char("11010521990101123"), "born in the future"),
        ("99010519900101123" + cn_resident_id_check_char("99010519900101123"), "no province 99"),
        ("11010519491231002", "17 characters"),
        ("1101051949123100X2", "X not last"),
    ],
)
def test_cn_resident_id_rejects_invalid_ids(candidate: str, why: str) -> None:
    assert not cn_resident_id_valid(candidate), why


# ---- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "span"),
    [
        ("write to jane.doe+tag@mail.example.co.uk today", EMAIL, "jane.doe+tag@mail.example.co.uk"),
        ("Phone +1 (415) 555-0132 please", PHONE, "+1 (415) 555-0132"),
        ("office (+44) 20 7946 0958", PHONE, "(+44) 20 7946 0958"),
        ("UK +44 (0)20 7946 0958", PHONE, "+44 (0)20 7946 0958"),
        ("Tokyo +81 3-1234-5678", PHONE, "+81 3-1234-5678"),
        ("Moscow +7 495 123-45-67", PHONE, "+7 495 123-45-67"),
        ("mobile 13812345678", PHONE, "13812345678"),
        ("mobile 138-1234-5678", PHONE, "138-1234-5678"),
        ("mobile 138 1234 5678", PHONE, "138 1234 5678"),
        ("mobile +86 138 1234 5678", PHONE, "+86 138 1234 5678"),
        ("mobile 8613812345678", PHONE, "8613812345678"),
        ("mobile (+86) 139 1111 2222", PHONE, "(+86) 139 1111 2222"),
        ("gọi 0912 345 678 nhé", PHONE, "0912 345 678"),
        ("gọi 091 234 5678 nhé", PHONE, "091 234 5678"),
        ("gọi 0903.123.456 nhé", PHONE, "0903.123.456"),
        ("gọi 0387654321 nhé", PHONE, "0387654321"),
        ("gọi +84 91 234 56 78 nhé", PHONE, "+84 91 234 56 78"),
        ("gọi +84 912 345 678 nhé", PHONE, "+84 912 345 678"),
        ("SG +65 9123 4567", PHONE, "+65 9123 4567"),
        ("SG +6591234567", PHONE, "+6591234567"),
        ("my HP 9123 4567", PHONE, "9123 4567"),
        ("whatsapp me 81234567", PHONE, "81234567"),
        ("Beijing 010-8888-6666", PHONE, "010-8888-6666"),
        ("NY (212) 555-0187", PHONE, "(212) 555-0187"),
        ("NY 646-555-0199", PHONE, "646-555-0199"),
        ("visa 4111 1111 1111 1111 exp", CARD, "4111 1111 1111 1111"),
        ("visa 4111-1111-1111-1111 exp", CARD, "4111-1111-1111-1111"),
        ("visa 4111111111111111 exp", CARD, "4111111111111111"),
        ("amex 3782 822463 10005 exp", CARD, "3782 822463 10005"),
        ("unionpay 6212 3456 7890 1234 569", CARD, "6212 3456 7890 1234 569"),
        ("id 11010519491231002X ok", CN_ID, "11010519491231002X"),
        ("host 192.168.1.254:8080", IP, "192.168.1.254"),
        ("net 10.0.0.0/8", IP, "10.0.0.0"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 full", IP, "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("v6 2001:db8:85a3::8a2e:370:7334 short", IP, "2001:db8:85a3::8a2e:370:7334"),
        ("v6 [fe80::1ff:fe23:4567:890a]:443", IP, "fe80::1ff:fe23:4567:890a"),
        ("mapped ::ffff:192.0.2.128 here", IP, "::ffff:192.0.2.128"),
    ],
)
def test_finds_each_format(redactor: Redactor, text: str, kind: str, span: str) -> None:
    assert found(redactor, text) == [(kind, span)]


def test_card_inside_a_run_of_numbers(redactor: Redactor) -> None:
    text = "qty 2 4111 1111 1111 1111 123 12/26"
    assert found(redactor, text) == [(CARD, "4111 1111 1111 1111")]


@pytest.mark.parametrize(
    ("text", "kind", "span"),
    [
        ("我的手机号是13812345678谢谢", PHONE, "13812345678"),
        ("邮箱是zhang.san@example.com谢谢", EMAIL, "zhang.san@example.com"),
        ("身份证11010519491231002X号", CN_ID, "11010519491231002X"),
        ("卡号4111111111111111已经绑定", CARD, "4111111111111111"),
        ("服务器192.168.1.10挂了", IP, "192.168.1.10"),
        ("地址fe80::1ff:fe23:4567:890a不通", IP, "fe80::1ff:fe23:4567:890a"),
        ("电话：+86 138 0013 8000，谢谢", PHONE, "+86 138 0013 8000"),
        ("全角１３８１２３４５６７８号码", PHONE, "１３８１２３４５６７８"),
    ],
)
def test_finds_pii_glued_to_cjk_text(redactor: Redactor, text: str, kind: str, span: str) -> None:
    assert found(redactor, text) == [(kind, span)]


@pytest.mark.parametrize(
    "text",
    [
        "Python 3.11.7 was released in 2023.",
        "It costs $1,299.99 or ¥8888.00, order 3 units.",
        "Meeting on 2024-01-15 at 12:30:45, room 1203.",
        "Order 91234567 shipped; invoice number is 5100000000012342.",
        "订单号 202401150001234 已发货",
        "订单号：4567890123456783，已付款",
        "non-Luhn id 4111111111111112 and 16-digit ref 1234567812345678",
        "bad checksum 110105194912310021",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "listen on port 8080, or 0x7FFFFFFF, MAX = 2147483647, SEED = 20240115",
        "x = a[1::2]; std::vector<int> v; abc::def; MAC 00:1a:2b:3c:4d:5e",
        "pip install foo==1.2.3.4; upgrade from version 4.2.0.1",
        "ts 1705305600 ms 1705305600123 pi 3.14159265358979",
        "IMEI 356938035643809, ISBN 9780306406157",
        "Giá 25.000.000 VND, mã đơn hàng 20240115123",
        "the iPhone 15 sold 81234567 units",
    ],
)
def test_leaves_ordinary_numbers_alone(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


# ---- overlaps, extras, values ---------------------------------------------------------------------


def test_validated_kinds_win_overlaps() -> None:
    phone, cn_id, card = PiiMatch(0, 11, PHONE), PiiMatch(0, 18, CN_ID), PiiMatch(5, 21, CARD)
    assert resolve_overlaps([phone, cn_id]) == [cn_id]
    assert resolve_overlaps([PiiMatch(0, 25, PHONE), card]) == [card]


def test_longest_match_wins_among_the_rest() -> None:
    short, long = PiiMatch(4, 12, PHONE), PiiMatch(0, 15, PHONE)
    assert resolve_overlaps([short, long, PiiMatch(20, 30, IP)]) == [long, PiiMatch(20, 30, IP)]
    assert resolve_overlaps([PiiMatch(0, 5, "B"), PiiMatch(0, 5, "A")]) == [PiiMatch(0, 5, "A")]


def test_extra_patterns_are_redacted_under_their_name() -> None:
    redactor = Redactor(extra_patterns={"EMPLOYEE_ID": r"EMP-[0-9]{6}", "ticket": r"TCK[0-9]{4}"})
    redaction = redactor.redact("EMP-004211 opened TCK1234 from 10.1.2.3")
    assert redaction.text == "<EMPLOYEE_ID> opened <TICKET> from <IP>"
    assert redaction.counts == {"EMPLOYEE_ID": 1, "ticket": 1, IP: 1}


def test_bad_extra_regex_names_the_pattern() -> None:
    with pytest.raises(ValueError, match="BADGE"):
        Redactor(extra_patterns={"BADGE": r"BG-[0-9"})
    with pytest.raises(ValueError, match="name"):
        Redactor(extra_patterns={"has space": r"x"})


def test_redact_replaces_with_typed_placeholders(redactor: Redactor) -> None:
    redaction = redactor.redact("mail a@b.io or call 13812345678, card 4111 1111 1111 1111, 13912345678")
    assert redaction.text == "mail <EMAIL> or call <PHONE>, card <CARD>, <PHONE>"
    assert redaction.counts == {EMAIL: 1, PHONE: 2, CARD: 1}


def test_redact_value_walks_nested_values_and_redacts_keys(redactor: Redactor) -> None:
    value = {
        "user": {"email": "bob@example.com", "phones": ["13812345678", "+65 9123 4567"]},
        "alice@example.com": ("a key is redacted too", 42, None),
        "carol@example.com": "a second key that redacts alike",
        "meta": {"ip": "10.0.0.1", "retries": 3, "ok": True},
    }
    redacted, counts = redactor.redact_value(value)
    assert redacted == {
        "user": {"email": "<EMAIL>", "phones": ["<PHONE>", "<PHONE>"]},
        "<EMAIL>": ("a key is redacted too", 42, None),
        "<EMAIL>#2": "a second key that redacts alike",
        "meta": {"ip": "<IP>", "retries": 3, "ok": True},
    }
    assert counts == {EMAIL: 3, PHONE: 2, IP: 1}
    assert value["user"] == {"email": "bob@example.com", "phones": ["13812345678", "+65 9123 4567"]}


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e"])
def test_format_characters_cannot_split_pii(redactor: Redactor, invisible: str) -> None:
    text = f"mail ana{invisible}.lee@corp.example, call 138{invisible}1234{invisible}5678 \U0001f469\u200d\U0001f4bb"
    redaction = redactor.redact(text)
    assert redaction.text == "mail <EMAIL>, call <PHONE> \U0001f469\u200d\U0001f4bb"
    assert redaction.counts == {EMAIL: 1, PHONE: 1}


@pytest.mark.parametrize(
    "text",
    ["1 " * 20_000, "a" * 50_000 + "@", "1:" * 20_000, "1." * 20_000, "+1 " * 20_000, "1-" * 20_000, "a@" * 20_000],
)
def test_adversarial_input_stays_linear(redactor: Redactor, text: str) -> None:
    started = time.perf_counter()
    redactor.find(text)
    assert time.perf_counter() - started < 2.0


# ---- the labelled set -----------------------------------------------------------------------------


def load_labelled() -> list[dict]:
    with LABELLED.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_pii_labelled", DATA / "build_pii_labelled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labelled_set_is_the_builders_output() -> None:
    assert load_builder().build() == load_labelled(), "rerun tests/monitor/intake/data/build_pii_labelled.py"


def score_table(tp: Counter[str], fp: Counter[str], fn: Counter[str]) -> str:
    rows = [f"{'kind':<8} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}"]
    for kind in [*sorted(set(tp) | set(fp) | set(fn)), "overall"]:
        hits = sum(tp.values()) if kind == "overall" else tp[kind]
        false_hits = sum(fp.values()) if kind == "overall" else fp[kind]
        misses = sum(fn.values()) if kind == "overall" else fn[kind]
        precision = hits / (hits + false_hits) if hits + false_hits else 1.0
        recall = hits / (hits + misses) if hits + misses else 1.0
        rows.append(f"{kind:<8} {hits:>4} {false_hits:>4} {misses:>4} {precision:>9.3f} {recall:>7.3f}")
    return "\n".join(rows)


def test_precision_and_recall_on_the_labelled_set(redactor: Redactor) -> None:
    records = load_labelled()
    assert len(records) >= 150
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for record in records:
        gold = {(span["start"], span["end"], span["kind"]) for span in record["pii"]}
        predicted = {(match.start, match.end, match.kind) for match in redactor.find(record["text"])}
        tp.update(kind for _, _, kind in gold & predicted)
        fp.update(kind for _, _, kind in predicted - gold)
        fn.update(kind for _, _, kind in gold - predicted)
    table = score_table(tp, fp, fn)
    log.info("PII detection on %d labelled records, exact span match:\n%s", len(records), table)
    hits, false_hits, misses = sum(tp.values()), sum(fp.values()), sum(fn.values())
    assert hits / (hits + false_hits) >= 0.97, table
    assert hits / (hits + misses) >= 0.95, table


def test_redacted_labelled_text_keeps_no_pii(redactor: Redactor) -> None:
    for record in load_labelled():
        text = record["text"]
        redacted = redactor.redact(text).text
        for span in record["pii"]:
            assert text[span["start"] : span["end"]] not in redacted, (text, redacted)
