"""Language detection: the labelled set, the script rules one by one, code detection, text features."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from monitor.intake.language import LANGUAGES, LineKind, detect_language, line_kind, text_features

log = logging.getLogger(__name__)

LABELLED = Path(__file__).parent / "data" / "languages.jsonl"


def load_labelled() -> list[dict]:
    with LABELLED.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def test_labelled_set_covers_every_label() -> None:
    records = load_labelled()
    assert len(records) >= 60
    assert set(Counter(record["label"] for record in records)) == set(LANGUAGES)


def test_accuracy_on_the_labelled_set() -> None:
    records = load_labelled()
    misses = [
        (record["label"], detected, record["text"][:60])
        for record in records
        if (detected := detect_language(record["text"])) != record["label"]
    ]
    accuracy = 1 - len(misses) / len(records)
    log.info("language accuracy %.3f on %d records; misses: %s", accuracy, len(records), misses)
    assert accuracy >= 0.9, misses


def test_clear_cases_are_all_right() -> None:
    wrong = [
        (record["label"], detect_language(record["text"]), record["text"][:60])
        for record in load_labelled()
        if record["clear"] and detect_language(record["text"]) != record["label"]
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("帮我用Python写一个function来parse JSON file", "zh-en"),
        ("我想用Python做数据分析", "zh"),
        ("東京大学の学生です", "ja"),
        ("Pythonでリストをソートする", "ja"),
        ("서울 날씨 알려줘", "ko"),
        ("Как дела?", "ru"),
        ("Where is the nearest train station?", "en"),
        ("Tôi muốn đặt một bàn cho hai người.", "other"),
        ("Je voudrais réserver une table pour deux personnes.", "other"),
        ("12345 !!!", "other"),
        ("Thanks!!!", "en"),
        ("========", "other"),
        ("", "empty"),
        (" \n\t ", "empty"),
    ],
)
def test_script_rules(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_fenced_block_counts_as_code() -> None:
    text = "Fix this:\n```\nresult = compute(a, b)\nreturn result\n```"
    assert detect_language(text) == "code"


def test_a_little_inline_code_leaves_prose_prose() -> None:
    text = (
        "I tried everything I could think of to get the build working again, reinstalled the toolchain, "
        "cleared every cache and rebooted twice, and it still fails with the same message at the end:\n"
        "make: *** [all] Error 1"
    )
    assert detect_language(text) == "en"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("def parse(path):", LineKind.CODE),
        ("import json", LineKind.CODE),
        ("const x = 5;", LineKind.CODE),
        ("}", LineKind.CODE),
        ("print(x)", LineKind.CODE),
        ("# just a heading", LineKind.COMMENT),
        ("for example, in this case:", LineKind.PROSE),
        ("请帮我解释一下这个函数(function)的作用", LineKind.PROSE),
        ("Use the print() function to show output.", LineKind.PROSE),
        ("   ", LineKind.BLANK),
    ],
)
def test_line_kinds(line: str, kind: LineKind) -> None:
    assert line_kind(line, follows_code=False) is kind


def test_indented_lines_after_code_are_code() -> None:
    assert line_kind("    total = total * 2", follows_code=True) is LineKind.CODE
    assert line_kind("    and then it stopped", follows_code=True) is LineKind.CODE
    assert line_kind("    and then it stopped", follows_code=False) is LineKind.PROSE


def test_text_features_of_code() -> None:
    features = text_features("def f(x):\n    return x\n")
    assert features == {"cjk_share": 0.0, "ascii_share": 1.0, "code_line_share": 1.0, "char_length": 23.0}


def test_text_features_of_chinese_and_mixed_text() -> None:
    chinese = text_features("你好世界")
    assert chinese["cjk_share"] == 1.0
    assert chinese["ascii_share"] == 0.0
    assert chinese["code_line_share"] == 0.0
    mixed = text_features("用 Python 写")
    assert mixed["cjk_share"] == pytest.approx(2 / 8)
    assert mixed["ascii_share"] == pytest.approx(6 / 8)
    assert mixed["char_length"] == 10.0


def test_text_features_of_empty_text() -> None:
    assert text_features("") == {"cjk_share": 0.0, "ascii_share": 0.0, "code_line_share": 0.0, "char_length": 0.0}


@pytest.mark.parametrize(
    "text",
    ["public " + "a " * 490, "x[" + "](" * 490, "if " + "a]" * 490 + "\n" * 2, "a" * 200_000, "if (x) " * 20_000],
)
def test_adversarial_lines_stay_fast(text: str) -> None:
    started = time.perf_counter()
    for _ in range(20):
        detect_language(text)
    assert time.perf_counter() - started < 2.0
