"""Real multilingual traffic for the demo, tests and benchmarks: chatterbot-corpus dialogs
(English, Chinese, Japanese), Python standard-library code and short written exchanges in eight more
languages (monitor.service.demo_dialogs), as specwatch JSONL records, with a mix that can shift toward
Chinese and a little PII for the redactor to find.

    python -c "from monitor.service.demo_traffic import *; print(next(iter(traffic(3, {'en': 1.0}))))"
    python -c "from monitor.service.demo_traffic import *; print(len(list(each_language(WRITTEN_LANGUAGES, 2))))"

A record's completion is the corpus's own answer, text no model wrote. Production logs hold what
the serving engine generated, the target's answer, which is what drafts are trained to predict:
`served(records, target)` puts the target's greedy answers in place of the corpus answers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decoder.reference.corpus import Document, code_documents, dialog_documents
from monitor.service.demo_dialogs import DIALOGS

if TYPE_CHECKING:
    from decoder.target import TargetModel

LANGUAGES = ("en", "zh", "ja", "code")
WRITTEN_LANGUAGES = tuple(DIALOGS)  # vi, id, th, es, fr, de, pt, ar
TENANTS = ("acme", "globex", "initech")
REGIONS = {
    "en": ("us", "eu"),
    "zh": ("cn", "sg"),
    "ja": ("jp",),
    "code": ("us", "eu", "sg"),
    "vi": ("vn",),
    "id": ("id",),
    "th": ("th",),
    "es": ("es", "mx"),
    "fr": ("fr",),
    "de": ("de",),
    "pt": ("br", "pt"),
    "ar": ("ae", "eg"),
}
PII_SNIPPETS = {
    "en": ["You can reach me at dana.lee@example.com.", "My number is +1 415 555 0134.", ""],
    "zh": ["我的手机号是13812345678。", "请发邮件到 wang.fang@example.cn。", ""],
    "ja": ["連絡先は taro@example.jp です。", ""],
    "code": ["# server 10.20.30.40", ""],
} | {language: [""] for language in WRITTEN_LANGUAGES}
START = datetime(2026, 11, 1, tzinfo=UTC)


@cache
def documents(language: str) -> tuple[Document, ...]:
    if language == "code":
        return tuple(code_documents(max_bytes=400_000))
    if language in DIALOGS:
        return tuple(Document(language, (("user", ask), ("assistant", answer))) for ask, answer in DIALOGS[language])
    return tuple(dialog_documents(language))


def exchange(document: Document) -> tuple[list[dict[str, str]], str]:
    """The document as a request (all turns before the last assistant turn) and its completion."""
    messages = document.chat
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def record(index: int, language: str, moment: datetime, rng: random.Random) -> dict[str, Any]:
    document = rng.choice(documents(language))
    messages, completion = exchange(document)
    pii = rng.choice(PII_SNIPPETS[language])
    if pii:
        messages = [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']} {pii}"}]
    return {
        "id": f"demo-{index}",
        "timestamp": moment.isoformat().replace("+00:00", "Z"),
        "messages": messages,
        "completion": completion,
        "model": "reference-target",
        "temperature": 0.0,
        "metadata": {
            "tenant": rng.choice(TENANTS),
            "region": rng.choice(REGIONS[language]),
            "route": "code-assist" if language == "code" else "chat",
        },
    }


def traffic(
    count: int,
    mix: Mapping[str, float],
    seed: int = 0,
    start: datetime = START,
    spacing_s: float = 30.0,
    first_index: int = 0,
) -> Iterator[dict[str, Any]]:
    """`count` records whose languages follow the weights in `mix`, `spacing_s` apart."""
    rng = random.Random(seed)
    languages, weights = zip(*mix.items(), strict=True)
    for offset in range(count):
        language = rng.choices(languages, weights)[0]
        moment = start + timedelta(seconds=spacing_s * offset)
        yield record(first_index + offset, language, moment, rng)


def each_language(
    languages: Iterable[str],
    per_language: int,
    seed: int = 0,
    start: datetime = START,
    spacing_s: float = 30.0,
    first_index: int = 0,
) -> Iterator[dict[str, Any]]:
    """`per_language` records of each language, the languages taking turns, `spacing_s` apart."""
    rng = random.Random(seed)
    order = [language for _ in range(per_language) for language in languages]
    for offset, language in enumerate(order):
        yield record(first_index + offset, language, start + timedelta(seconds=spacing_s * offset), rng)


def served(
    records: Iterable[dict[str, Any]], target: TargetModel, max_new_tokens: int = 64, batch_size: int = 32
) -> list[dict[str, Any]]:
    """The records as if `target` had served them: each completion replaced by the target's greedy
    answer to the record's messages (as the engine saw them, PII included), decoded without the eos
    token as an engine logs it; a partial character at a cut is dropped, an empty answer stays empty
    (intake quarantines it, as it would a real one); see TargetModel.greedy_answers. A few hundred
    records take seconds with the tiny reference target."""
    records = list(records)
    texts = target.greedy_answers([item["messages"] for item in records], max_new_tokens, batch_size=batch_size)
    return [{**item, "completion": text} for item, text in zip(records, texts, strict=True)]


def write_jsonl(path: Path, records: Iterator[dict[str, Any]]) -> int:
    written = 0
    with path.open("a", encoding="utf-8") as handle:
        for item in records:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
            written += 1
    return written
